#!/usr/bin/env bash
# Train the embedded demo model on a CPU: ray-cast scenes -> VAE (autoencoder of images, depth and
# normal maps) -> DiT (consistent velocity) -> LoRA (train-lora), official file formats.
# Usage: scripts/train_demo_model.sh [OUT] [WORK] [recipe options, e.g. --dit-steps 3000]
# Finished stages in WORK are reused, so a run that was cut off continues. The held-out scenes:
#   python -m fe2e_deploy.train.demo_model scenes --out build/demo_eval --first-seed 1000000 --count 60
set -euo pipefail
OUT=${1:-fe2e_deploy/demo_model}
WORK=${2:-build/demo_train}
shift $(( $# > 2 ? 2 : $# ))
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} python -m fe2e_deploy.train.demo_model train --out "$OUT" --work "$WORK" "$@"
