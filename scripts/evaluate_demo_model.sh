#!/usr/bin/env bash
# Score the embedded demo model and its deployed engines on held-out procedural scenes.
# Usage: scripts/evaluate_demo_model.sh [MODEL_DIR] [WORK]   (defaults: fe2e_deploy/demo_model, build/demo_eval)
# Writes WORK/scenes (60 scenes, seeds 1000000.., never used in training; generic layout),
# WORK/results/<engine>_<task>.json (fe2e-deploy evaluate) and WORK/results/baseline.json.
set -euo pipefail
MODEL=${1:-fe2e_deploy/demo_model}
WORK=${2:-build/demo_eval}
RES=128x96
SCENES=$WORK/scenes
R=$WORK/results
mkdir -p "$R"
[ -d "$SCENES/rgb" ] || python -m fe2e_deploy.train.demo_model scenes --out "$SCENES" --first-seed 1000000 --count 60
python -m fe2e_deploy.train.demo_model baseline "$SCENES" > "$R/baseline.json"
M=(--model-config "$MODEL/model_config.json" --dit "$MODEL/dit.safetensors" --vae "$MODEL/vae.safetensors"
   --prompt-embedding "$MODEL/empty_prompt.npz" --lora "$MODEL/lora.safetensors")
for dtype in fp32 bf16; do
  [ -f "$WORK/stripped_$dtype/stripped.json" ] || fe2e-deploy strip -o "$WORK/stripped_$dtype" "${M[@]}" --dtype $dtype --no-progress
  [ -f "$WORK/onnx_$dtype/manifest.json" ] || fe2e-deploy export "$WORK/stripped_$dtype" -o "$WORK/onnx_$dtype" \
    --resolution $RES --graph fe2e --check --no-progress
done
[ -f "$WORK/fp8_scales.json" ] || fe2e-deploy calibrate "$WORK/stripped_bf16" --out "$WORK/fp8_scales.json" \
  --processing-res $RES --no-progress
[ -f "$WORK/onnx_fp8/manifest.json" ] || fe2e-deploy export "$WORK/stripped_bf16" -o "$WORK/onnx_fp8" \
  --resolution $RES --graph fe2e --precision fp8 --scales "$WORK/fp8_scales.json" --check --no-progress
declare -A ENGINES=([reference_fp32]="$MODEL" [stripped_bf16]="$WORK/stripped_bf16" [onnx_fp32]="$WORK/onnx_fp32"
                    [onnx_bf16]="$WORK/onnx_bf16" [onnx_fp8]="$WORK/onnx_fp8")
for name in reference_fp32 stripped_bf16 onnx_fp32 onnx_bf16 onnx_fp8; do
  for task in depth normals; do
    fe2e-deploy evaluate --engine "${ENGINES[$name]}" --dataset "$SCENES" --task $task --dataset-kind generic \
      --processing-res $RES --json "$R/${name}_$task.json" --overwrite --no-progress
  done
done
python - "$R" <<'PY'
import json, sys
from pathlib import Path
r = Path(sys.argv[1])
base = json.loads((r / "baseline.json").read_text())
print("baseline:", json.dumps(base))
print(f"{'engine':16} {'AbsRel':>7} {'delta1':>7} {'normals mean':>12} {'median':>7} {'a11.25':>7}")
for name in ("reference_fp32", "stripped_bf16", "onnx_fp32", "onnx_bf16", "onnx_fp8"):
    d = json.loads((r / f"{name}_depth.json").read_text())["metrics"]
    n = json.loads((r / f"{name}_normals.json").read_text())["metrics"]
    print(f"{name:16} {d['abs_rel']:7.4f} {d['delta1']:7.4f} {n['mean']:12.2f} {n['median']:7.2f} {n['a11.25']:7.2f}")
PY
