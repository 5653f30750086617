#!/usr/bin/env bash
# The GPU-only paths checked in <= 3 minutes (python -m fe2e_deploy.device_checks): torch._scaled_mm per-tensor and
# per-row (fast accumulation too) at the DiT's GEMM shapes, a CUDA graph of the compiled engine, an AOTInductor
# package for CUDA, cuDNN attention at the DiT's shape, FP8's steady peak memory below BF16's.
# One JSON line per check in $OUT/checks.jsonl, written as measured (a killed run keeps them), the log in
# $OUT/device_checks.log, the table in $OUT/checks_table.txt.
#
#   device run: bash scripts/device_checks.sh           # with carry [".whl"] (diffusers; scripts/fetch_device_wheels.sh)
#   DEVICE=cpu bash scripts/device_checks.sh            # here: the CUDA-only parts say "skipped: needs CUDA"
#
# Environment: OUT (default: a new temp folder), DEVICE (auto, cuda, cpu), PRESET_MID (builtin, a preset, a
# model_config.json, none), CHECKS (comma-separated), BUDGET (seconds for the checks; default 150 on CUDA),
# LIMIT (hard time limit of the checks, s; default 165), GEMM_SHAPES (full, reduced, auto), WHEELS (default .whl),
# SITE (where the wheels go), PYTHON (default python3).
# Exit code: 0 no check failed, 1 some check failed (or the module failed to import), 3 the wheels did not install,
# 124/137 killed at LIMIT. About 5 s besides the checks (the wheels' install).
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/carried_wheels.sh
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
LIMIT=${LIMIT:-165}
exec > >(tee -a "$OUT/device_checks.log") 2>&1
export PYTHONUNBUFFERED=1

echo "== device checks ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
if ! "$PY" -c "import importlib.util as u, sys; sys.exit(u.find_spec('diffusers') is None)"; then
  install_carried_wheels  # diffusers missing: the GPU machine's case
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout, not an installed copy

args=(--out "$OUT" --device "${DEVICE:-auto}")
[ -n "${PRESET_MID:-}" ] && args+=(--preset-mid "$PRESET_MID")
[ -n "${CHECKS:-}" ] && args+=(--checks "$CHECKS")
[ -n "${BUDGET:-}" ] && args+=(--budget "$BUDGET")
[ -n "${GEMM_SHAPES:-}" ] && args+=(--gemm-shapes "$GEMM_SHAPES")
start=$SECONDS
set -x
timeout -k 10 "$LIMIT" "$PY" -m fe2e_deploy.device_checks "${args[@]}"
rc=$?
set +x
echo "device checks exit code $rc after $((SECONDS - start)) s"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "killed at the ${LIMIT} s limit: the lines written before it are in $OUT/checks.jsonl"
fi
if [ ! -s "$OUT/checks_table.txt" ]; then  # killed before the module printed its table (SIGKILL), or it did not start
  if [ -s "$OUT/checks.jsonl" ]; then
    "$PY" -m fe2e_deploy.device_checks --summary "$OUT/checks.jsonl" | tee "$OUT/checks_table.txt"
  else
    echo "no check line was written"
  fi
fi
echo "outputs in $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit "$rc"
