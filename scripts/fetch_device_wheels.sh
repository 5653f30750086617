#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (git-ignored), for `scripts/device_benchmark.sh`.
# The GPU machines have no network and no diffusers; they have huggingface_hub 1.33, safetensors 0.8,
# zipp, Pillow, numpy, regex, requests, filelock (see the device tool's KINDS.md). diffusers 0.42.1
# accepts that hub (>=1.32,<3); importlib_metadata 8.7 is the newest that needs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 importlib_metadata==8.7.0 zipp==4.1.2
ls -l .whl
