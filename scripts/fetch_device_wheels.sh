#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (git-ignored), for `scripts/device_benchmark.sh`.
# The GPU machines have no network and no diffusers; they have huggingface_hub 1.33, safetensors 0.8,
# zipp, Pillow, numpy, regex, requests, filelock (see the device tool's KINDS.md). diffusers 0.42.1
# accepts that hub (>=1.32,<3); importlib_metadata 8.7 is the newest that needs nothing new.
#
#   bash scripts/fetch_device_wheels.sh              # download them (pip skips those already there)
#   bash scripts/fetch_device_wheels.sh --missing    # no network: print those not in .whl/, exit 1 if any
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=(diffusers==0.42.1 importlib_metadata==8.7.0 zipp==4.1.2)
if [ "${1:-}" = --missing ]; then
  missing=0
  for spec in "${WHEELS[@]}"; do
    name=${spec%%==*}
    version=${spec#*==}
    # wheel file names spell the project name with underscores (diffusers-0.42.1-py3-none-any.whl)
    if ! compgen -G ".whl/${name//-/_}-${version}-*.whl" >/dev/null; then
      echo "not in .whl/: $spec"
      missing=1
    fi
  done
  exit "$missing"
fi
mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
ls -l .whl
