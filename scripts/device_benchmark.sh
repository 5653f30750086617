#!/usr/bin/env bash
# The whole GPU call: probe the machine, install the carried wheels and this project offline, run the
# full-size benchmark on synthetic weights (the 12 B model built directly on the GPU, no weight files)
# within ~9 minutes, and leave JSON lines, a table, a plot and the log under $OUT.
#
#   bash scripts/fetch_device_wheels.sh                  # once, here: wheels into .whl/ (git-ignored)
#   device run: bash scripts/device_benchmark.sh         # with carry [".whl"]
#   TINY=1 bash scripts/device_benchmark.sh              # tiny config on the CPU: every line, in CI
#
# Environment: OUT (output folder; default: a new temp folder), TINY=1, WHEELS (default .whl),
# PYTHON (default python3), BUDGET (seconds for the benchmark's engines), LIMIT (hard time limit, s),
# RESOLUTIONS (default "1024x768 864x576 1216x352"), ENGINES (the benchmark's --engines), FP8_GEMM (the
# benchmark's --fp8-gemm; TINY=1: the row-wise engines run the GPU's torch._scaled_mm calls on the CPU where this
# torch does, fp8-tensor dequantised, since the CPU runs per-tensor _scaled_mm at ~0.035 GFLOP/s, measured;
# tests/test_fp8_gemm.py runs that call).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/carried_wheels.sh
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
LOG="$OUT/device_benchmark.log"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1

echo "== probe ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
uname -srm
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null \
  || echo "nvidia-smi: no NVIDIA GPU visible"
df -h . /tmp 2>/dev/null | awk 'NR == 1 || !seen[$0]++'
for tool in gcc g++ nvcc; do
  if command -v "$tool" >/dev/null; then echo "$tool: $("$tool" --version | grep -m1 -iE 'gcc|release|g\+\+')"; else echo "$tool: not found"; fi
done
echo "CUDA_HOME=${CUDA_HOME:-unset}"
"$PY" - <<'PY'
import os, sys, sysconfig
include = sysconfig.get_paths()["include"]
headers = "present" if os.path.isfile(os.path.join(include, "Python.h")) else "MISSING (Triton/Inductor need them)"
print(f"python {sys.version.split()[0]} at {sys.executable}; headers {include}: {headers}")
import torch
from torch.utils.cpp_extension import CUDA_HOME
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
cc = torch.cuda.get_device_capability() if gpu else None
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, GPU {gpu} {cc}, "
      f"torch CUDA_HOME {CUDA_HOME}")
PY

echo "== install (offline)"
install_carried_wheels
# --check-build-dependencies: a setuptools older than pyproject's floor (77: `license = "MIT"`) is named in the
# log instead of failing inside the build backend; the checkout is then used from PYTHONPATH.
"$PY" -c "import setuptools; print('setuptools', setuptools.__version__, 'at', setuptools.__file__)" \
  || echo "setuptools: not importable (the project is then used from PYTHONPATH)"
if "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --check-build-dependencies -e . \
  >"$OUT/pip_project.log" 2>&1; then
  echo "project installed with pip (editable, no network, no build isolation)"
else
  echo "pip could not install the project offline ($(tail -n 1 "$OUT/pip_project.log")); using PYTHONPATH=$PWD"
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import diffusers, fe2e_deploy; print('fe2e_deploy', fe2e_deploy.__version__, 'diffusers', diffusers.__version__)" \
  || { echo "the project does not import: stop"; exit 3; }

echo "== benchmark"
if [ "${TINY:-0}" = 1 ]; then
  PRESET=tiny DEVICE=cpu RUNS=2 WARMUP=1
  # row-wise _scaled_mm on the CPU: torch 2.13 runs it, 2.11 (the GPU image's, in the device twin) refuses it
  ROWWISE=$("$PY" -c "from fe2e_deploy.models.fp8 import rowwise_scaled_mm_runs as runs
print('scaled_mm' if runs('cpu') else 'dequantized')")
  FP8_GEMM=${FP8_GEMM:-fp8-row=$ROWWISE,fp8-row-fastacc=$ROWWISE,fp8-tensor=dequantized}
  echo "FP8 GEMMs on this CPU: $FP8_GEMM"
  RESOLUTIONS=${RESOLUTIONS:-64x48} BUDGET=${BUDGET:-240} LIMIT=${LIMIT:-360}
else
  PRESET=step1x-edit DEVICE=cuda RUNS=10 WARMUP=2 FP8_GEMM=${FP8_GEMM:-auto}
  RESOLUTIONS=${RESOLUTIONS:-1024x768 864x576 1216x352} BUDGET=${BUDGET:-450} LIMIT=${LIMIT:-510}
fi
ENGINES=${ENGINES:-stripped-bf16,reference,compiled-bf16,fp8-row,fp8-tensor,fp8-row-fastacc,attention}
args=()
for res in $RESOLUTIONS; do args+=(--resolution "$res"); done
set -x
timeout -k 15 "$LIMIT" "$PY" -m fe2e_deploy benchmark --synthetic-weights "$PRESET" --device "$DEVICE" "${args[@]}" \
  --engines "$ENGINES" --fp8-gemm "$FP8_GEMM" --runs "$RUNS" --warmup "$WARMUP" --time-budget "$BUDGET" --profile \
  --json "$OUT/bench.jsonl" --plot "$OUT/bench.png" --overwrite
rc=$?
set +x
echo "benchmark exit code $rc"

echo "== results"
if [ -s "$OUT/bench.jsonl" ]; then
  "$PY" -m fe2e_deploy.synthetic_benchmark "$OUT/bench.jsonl" "$OUT/bench.png" | tee "$OUT/bench_table.txt"
else
  echo "no result lines were written"
  [ "$rc" = 0 ] && rc=4
fi
echo "outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
