#!/usr/bin/env bash
# Train the embedded demo model on a CPU: ray-cast scenes -> VAE (autoencoder of images, depth and
# normal maps: random crops, then whole maps) -> DiT (consistent velocity) -> LoRA (train-lora), in the
# official file formats. This is the run that made fe2e_deploy/demo_model/ (its MODEL_CARD.md: times).
# Usage: scripts/train_demo_model.sh [OUT] [WORK] [-- extra recipe options, e.g. --threads 1]
#   (default OUT: WORK/model, WORK: build/demo_train). Two torch threads (a quiet 2-core machine);
#   pass --threads 1 where other jobs share the cores (OpenMP barriers stall on busy cores).
# Scenes: 3 in 4 from the domain-randomised generator (fe2e_deploy/randomised_scenes.py), 1 in 4 from
# the first one (fe2e_deploy/scenes.py), rendered in --threads worker processes (recipe field
# generator=mixed); `-- --generator randomised` or `-- --generator v1` trains on one of them only.
# Finished stages in WORK are reused, so a run that was cut off continues (with the recipe it was
# started with: another recipe is refused, naming the changed fields). The held-out scenes and
# the scores: scripts/evaluate_demo_model.sh. To ship a new model, copy OUT's five model files and
# WORK/training.json into fe2e_deploy/demo_model/ (OUT is replaced whole: never point it at that
# folder, whose model card would go).
set -euo pipefail
WORK=${2:-build/demo_train}
OUT=${1:-$WORK/model}
shift $(( $# < 2 ? $# : 2 ))
[ "${1:-}" = "--" ] && shift
python -m fe2e_deploy.train.demo_model train --out "$OUT" --work "$WORK" "$@"
