#!/usr/bin/env bash
# Train the embedded demo model on a CPU: ray-cast scenes -> VAE (autoencoder of images, depth and
# normal maps) -> DiT (consistent velocity) -> LoRA (train-lora), official file formats. Two passes:
# pass 1 trains everything; pass 2 continues the DiT from pass 1 (at a lower learning rate) with the
# same VAE and scenes, then trains the LoRA again. This is the run that made fe2e_deploy/demo_model/.
# Usage: scripts/train_demo_model.sh [OUT] [WORK]   (default OUT: WORK/model)
# Finished stages in WORK are reused, so a run that was cut off continues. The held-out scenes and
# the scores: scripts/evaluate_demo_model.sh. To ship a new model, copy OUT's five model files and
# WORK/pass*/training.json into fe2e_deploy/demo_model/ (OUT is replaced whole: never point it at
# that folder, whose model card and logs would go).
set -euo pipefail
WORK=${2:-build/demo_train}
OUT=${1:-$WORK/model}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python -m fe2e_deploy.train.demo_model train --out "$WORK/pass1_model" --work "$WORK/pass1"
mkdir -p "$WORK/pass2"
[ -d "$WORK/pass2/stage1_vae" ] || cp -r "$WORK/pass1/stage2_dit" "$WORK/pass2/stage1_vae"  # VAE + pass-1 DiT
cp -rn "$WORK/pass1/init" "$WORK/pass1/scenes.pt" "$WORK/pass2/"
python -m fe2e_deploy.train.demo_model train --out "$OUT" --work "$WORK/pass2" \
  --dit-steps 2600 --dit-lr 4e-4 --dit-budget-s 660
