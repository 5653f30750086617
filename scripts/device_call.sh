#!/usr/bin/env bash
# The first GPU call: everything a lent H100/H200 is for, in order of value, in ONE device `run` of about 9 minutes.
#
#   1. scripts/device_benchmark.sh  the 12 B model on synthetic weights: at 1024x768 stripped-bf16, reference,
#      compiled-bf16, fp8-row, fp8-tensor, fp8-row-fastacc, attention; then 864x576 and 1216x352 as far as
#      the time budget goes (BUDGET 330 s for the engines, killed at LIMIT 360 s; the rule: TimeEstimates).
#   2. scripts/device_checks.sh     the CUDA behaviours torch runs: _scaled_mm errors and speed, a CUDA graph of the
#      compiled engine, an AOTInductor package for CUDA, cuDNN attention, FP8's steady peak below BF16's
#      (killed at CHECKS_LIMIT 150 s).
#
#   bash scripts/fetch_device_wheels.sh      # here, once: diffusers & co. into .whl/ (git-ignored)
#   device run: bash scripts/device_call.sh  # carry [".whl"], timeout_s 590
#   bash scripts/keep_device_results.sh FILES_AT   # here, after: the JSON lines into benchmarks/
#
# Outputs in $OUT (8 files, what the device tool brings back): bench.jsonl, bench_table.txt, bench.png,
# device_benchmark.log, pip_project.log, checks.jsonl, checks_table.txt, device_checks.log.
# TINY=1 runs both on this CPU with the tiny config (what CI's tests of each script run). Exit code: the
# benchmark's, else the checks'.
set -uo pipefail
cd "$(dirname "$0")/.."
export OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
start=$SECONDS
if [ "${TINY:-0}" = 1 ]; then
  BENCH_BUDGET=${BUDGET:-1500} BENCH_LIMIT=${LIMIT:-1700} CHECKS_BUDGET=${CHECKS_BUDGET:-800} CHECKS_LIMIT=900
  CHECKS_DEVICE=cpu
else
  BENCH_BUDGET=${BUDGET:-330} BENCH_LIMIT=${LIMIT:-360} CHECKS_BUDGET=${CHECKS_BUDGET:-135} CHECKS_LIMIT=150
  CHECKS_DEVICE=cuda
fi
BUDGET=$BENCH_BUDGET LIMIT=$BENCH_LIMIT bash scripts/device_benchmark.sh
bench_rc=$?
echo "== device_call: benchmark exit code $bench_rc after $((SECONDS - start)) s"
DEVICE=$CHECKS_DEVICE BUDGET=$CHECKS_BUDGET LIMIT=$CHECKS_LIMIT bash scripts/device_checks.sh
checks_rc=$?
echo "== device_call: checks exit code $checks_rc; $((SECONDS - start)) s in all; outputs: $(ls "$OUT" | tr '\n' ' ')"
[ "$bench_rc" != 0 ] && exit "$bench_rc"
exit "$checks_rc"
