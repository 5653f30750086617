"""How much of the demo model's normal error the VAE alone causes: ground-truth normal maps of held-out
scenes encoded and decoded by the model's VAE, against the model's own predictions on the same scenes.

    python scripts/vae_roundtrip.py [SCENES] [MODEL_DIR]
    # default: 20 held-out scenes (seeds from EVAL_FIRST_SEED), the shipped demo model; MODEL_DIR can be
    # a training stage's folder (build/demo_train/stage2_dit-checkpoint: a DiT being trained)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from fe2e_deploy.model_files import DEMO_RESOLUTION, ModelFiles, demo_model_files
from fe2e_deploy.reference import FE2EPipeline
from fe2e_deploy.scenes import random_sample
from fe2e_deploy.train.autoencoder import encode_raw
from fe2e_deploy.train.demo_model import EVAL_FIRST_SEED, scene_tensors


def angles(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.degrees(np.arccos(np.clip((predicted * truth).sum(-1), -1, 1)))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    files = ModelFiles.from_dir(Path(sys.argv[2])) if len(sys.argv) > 2 else demo_model_files()
    pipe = FE2EPipeline.from_files(files.config, files.dit, files.vae, files.prompt, files.lora)
    samples = [random_sample(EVAL_FIRST_SEED + i, *DEMO_RESOLUTION) for i in range(count)]
    maps = scene_tensors(samples, DEMO_RESOLUTION)
    with torch.no_grad():
        decoded = pipe.vae.decode(encode_raw(pipe.vae, maps["normals"])).sample
    roundtrip = torch.nn.functional.normalize(decoded, dim=1).permute(0, 2, 3, 1).numpy()
    vae_err, model_err = [], []
    for i, sample in enumerate(samples):
        valid = sample.depth > 0
        vae_err.append(angles(roundtrip[i], sample.normals)[valid])
        model_err.append(angles(pipe(sample.rgb, DEMO_RESOLUTION).normals, sample.normals)[valid])
    for name, errors in (("VAE round trip of the true normals", vae_err), ("the model's prediction", model_err)):
        e = np.concatenate(errors)
        print(f"{name}: mean {e.mean():.2f} deg, median {np.median(e):.2f} deg ({e.size} pixels, {count} scenes)")


if __name__ == "__main__":
    main()
