"""How much of the demo model's normal error the VAE alone causes: ground-truth normal maps of held-out
scenes encoded and decoded by the model's VAE, against the model's own predictions on the same scenes.

    python scripts/vae_roundtrip.py [SCENES | DATASET_DIR] [MODEL_DIR]
    # default: 20 held-out scenes (seeds from EVAL_FIRST_SEED), the shipped demo model; DATASET_DIR: a scene
    # set in the generic layout (rgb/, depth/, normals/; e.g. build/demo_eval/heldout, the second renderer),
    # its first 24 scenes; MODEL_DIR can be a training stage's folder (build/demo_train/stage2_dit-checkpoint)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from fe2e_deploy.evaluation.datasets import open_dataset
from fe2e_deploy.evaluation.metrics import angular_error
from fe2e_deploy.model_files import DEMO_RESOLUTION, ModelFiles, demo_model_files
from fe2e_deploy.reference import FE2EPipeline
from fe2e_deploy.scenes import SceneSample, random_sample
from fe2e_deploy.train.autoencoder import encode_raw
from fe2e_deploy.train.demo_model import EVAL_FIRST_SEED, scene_tensors


def dataset_samples(folder: Path, count: int = 24) -> list[SceneSample]:
    """The first ``count`` scenes of a generic-layout set (read by ``evaluate``'s dataset reader), as scene
    samples (focal length unused here)."""
    depth_set = open_dataset(folder, "depth", max_images=count)
    normal_set = open_dataset(folder, "normals", max_images=count)
    samples = []
    for depth_item, normal_item in zip(depth_set.items, normal_set.items, strict=True):
        depth = depth_set.load(depth_item)
        samples.append(SceneSample(depth.image, depth.gt, normal_set.load(normal_item).gt, 0.0))
    return samples


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else "20"
    files = ModelFiles.from_dir(Path(sys.argv[2])) if len(sys.argv) > 2 else demo_model_files()
    pipe = FE2EPipeline.from_files(files.config, files.dit, files.vae, files.prompt, files.lora)
    if Path(source).is_dir():
        samples = dataset_samples(Path(source))
    else:
        samples = [random_sample(EVAL_FIRST_SEED + i, *DEMO_RESOLUTION) for i in range(int(source))]
    count = len(samples)
    maps = scene_tensors(samples, DEMO_RESOLUTION)
    with torch.no_grad():
        decoded = pipe.vae.decode(encode_raw(pipe.vae, maps["normals"])).sample
    roundtrip = torch.nn.functional.normalize(decoded, dim=1).permute(0, 2, 3, 1).numpy()
    vae_err, model_err = [], []
    for i, sample in enumerate(samples):
        valid = sample.depth > 0
        vae_err.append(angular_error(roundtrip[i], sample.normals)[valid])
        model_err.append(angular_error(pipe(sample.rgb, DEMO_RESOLUTION).normals, sample.normals)[valid])
    for name, errors in (("VAE round trip of the true normals", vae_err), ("the model's prediction", model_err)):
        e = np.concatenate(errors)
        print(f"{name}: mean {e.mean():.2f} deg, median {np.median(e):.2f} deg ({e.size} pixels, {count} scenes)")


if __name__ == "__main__":
    main()
