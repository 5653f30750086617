#!/usr/bin/env bash
# Score the embedded demo model and its deployed engines on held-out scenes of three kinds, none used in training:
#   procedural  60 scenes of the first generator (fe2e_deploy.scenes.random_sample, seeds 1000000..)
#   randomised  60 scenes of the domain-randomised training generator (seeds 1000000..)
#   heldout     24 scenes of the second, independent renderer (fe2e_deploy/evaluation/heldout_renderer.py:
#               signed distance fields, another shading model and camera; evaluation only, never trained on)
# Usage: scripts/evaluate_demo_model.sh [MODEL_DIR] [WORK]   (defaults: fe2e_deploy/demo_model, build/demo_eval)
#   ENGINES="reference_fp32" scripts/evaluate_demo_model.sh   scores only the listed engines (default: all five)
#   SETS="heldout" ...                                          and only the listed scene sets (default: all three)
# Writes WORK/<set>/ (generic layout), WORK/results/<set>/<engine>_<task>.json (fe2e-deploy evaluate) and
# WORK/results/<set>/baseline.json; prints per set: depth AbsRel, the best log-aligned constant's AbsRel,
# their ratio (how many times better than the constant), delta1, normals mean/median angle and a11.25.
set -euo pipefail
MODEL=${1:-fe2e_deploy/demo_model}
WORK=${2:-build/demo_eval}
ENGINES=${ENGINES:-"reference_fp32 stripped_bf16 onnx_fp32 onnx_bf16 onnx_fp8"}
SETS=${SETS:-"procedural randomised heldout"}
RES=128x96
mkdir -p "$WORK/results"
for set in $SETS; do
  case $set in
    procedural) [ -d "$WORK/$set/rgb" ] || python -m fe2e_deploy.train.demo_model scenes --out "$WORK/$set" \
                  --first-seed 1000000 --count 60 --generator v1 ;;
    randomised) [ -d "$WORK/$set/rgb" ] || python -m fe2e_deploy.train.demo_model scenes --out "$WORK/$set" \
                  --first-seed 1000000 --count 60 --generator randomised ;;
    heldout) [ -d "$WORK/$set/rgb" ] || python -m fe2e_deploy.evaluation.heldout_renderer --out "$WORK/$set" --count 24 ;;
    *) echo "unknown scene set: $set" >&2; exit 2 ;;
  esac
  mkdir -p "$WORK/results/$set"
  python -m fe2e_deploy.train.demo_model baseline "$WORK/$set" > "$WORK/results/$set/baseline.json"
done
M=(--model-config "$MODEL/model_config.json" --dit "$MODEL/dit.safetensors" --vae "$MODEL/vae.safetensors"
   --prompt-embedding "$MODEL/empty_prompt.npz" --lora "$MODEL/lora.safetensors")
needs() { [[ " $ENGINES " == *" $1 "* ]]; }
for dtype in fp32 bf16; do
  if needs "stripped_$dtype" || needs "onnx_$dtype" || { [ $dtype = bf16 ] && needs onnx_fp8; }; then
    [ -f "$WORK/stripped_$dtype/stripped.json" ] || fe2e-deploy strip -o "$WORK/stripped_$dtype" "${M[@]}" --dtype $dtype --no-progress
  fi
  if needs "onnx_$dtype"; then
    [ -f "$WORK/onnx_$dtype/manifest.json" ] || fe2e-deploy export "$WORK/stripped_$dtype" -o "$WORK/onnx_$dtype" \
      --resolution $RES --graph fe2e --check --no-progress
  fi
done
if needs onnx_fp8; then
  [ -f "$WORK/fp8_scales.json" ] || fe2e-deploy calibrate "$WORK/stripped_bf16" --out "$WORK/fp8_scales.json" \
    --processing-res $RES --no-progress
  [ -f "$WORK/onnx_fp8/manifest.json" ] || fe2e-deploy export "$WORK/stripped_bf16" -o "$WORK/onnx_fp8" \
    --resolution $RES --graph fe2e --precision fp8 --scales "$WORK/fp8_scales.json" --check --no-progress
fi
declare -A PATHS=([reference_fp32]="$MODEL" [stripped_bf16]="$WORK/stripped_bf16" [onnx_fp32]="$WORK/onnx_fp32"
                  [onnx_bf16]="$WORK/onnx_bf16" [onnx_fp8]="$WORK/onnx_fp8")
for set in $SETS; do
  for name in $ENGINES; do
    for task in depth normals; do
      fe2e-deploy evaluate --engine "${PATHS[$name]}" --dataset "$WORK/$set" --task $task --dataset-kind generic \
        --processing-res $RES --json "$WORK/results/$set/${name}_$task.json" --overwrite --no-progress
    done
  done
done
python - "$WORK/results" "$SETS" "$ENGINES" <<'PY'
import json, sys
from pathlib import Path
root, sets, engines = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
for s in sets:
    r = root / s
    base = json.loads((r / "baseline.json").read_text())
    const = base["depth_abs_rel_constant_log_aligned"]
    print(f"== {s} ({base['images']} images) baseline: {json.dumps(base)}")
    print(f"{'engine':16} {'AbsRel':>7} {'const':>7} {'ratio':>6} {'delta1':>7} {'normals mean':>12} {'median':>7} {'a11.25':>7}")
    for name in engines:
        d = json.loads((r / f"{name}_depth.json").read_text())["metrics"]
        n = json.loads((r / f"{name}_normals.json").read_text())["metrics"]
        print(f"{name:16} {d['abs_rel']:7.4f} {const:7.4f} {const / d['abs_rel']:6.2f} {d['delta1']:7.4f} "
              f"{n['mean']:12.2f} {n['median']:7.2f} {n['a11.25']:7.2f}")
PY
