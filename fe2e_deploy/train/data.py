"""Training data: a folder of rgb/ + depth/ + normals/ (+ mask/), the generic layout of ``evaluate``.

Each sample is resized to the training resolution (RGB bicubic as at inference; depth, normals and
mask nearest, normals re-normalised) and turned into FE2E's targets: depth log-normalised per
image, ``y = 2 * ((ln(D + 1e-6) - P2) / (P98 - P2) - 0.5)`` with the 2nd/98th percentiles of the
valid pixels, rounded to BF16 and replicated to 3 channels; normals as unit vectors in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import InvalidInput, MissingInput
from ..evaluation.datasets import find_ground_truth, read_depth, read_input, read_mask, read_normals
from ..files.images import check_image, find_images, open_image
from ..processing import preprocess

LOG_EPS = 1e-6


@dataclass
class TrainSample:
    rgb: torch.Tensor  # [3, H, W] in [-1, 1]
    depth: torch.Tensor  # [3, H, W] log-normalised depth in [-1, 1] (replicated), 0 where invalid
    normals: torch.Tensor  # [3, H, W] unit vectors, 0 where invalid
    valid: torch.Tensor  # [H, W] bool


def log_normalise_depth(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """FE2E's depth target in [-1, 1] (clipped), rounded to BF16 as the paper's training does."""
    if valid.sum() < 2:
        raise InvalidInput("fewer than 2 valid depth pixels")
    log_d = np.log(np.maximum(depth, 0) + LOG_EPS)
    p2, p98 = np.percentile(log_d[valid], [2, 98])
    y = 2 * ((log_d - p2) / max(p98 - p2, 1e-6) - 0.5)
    y = np.clip(np.where(valid, y, 0.0), -1, 1)
    return torch.from_numpy(y.astype(np.float32)).to(torch.bfloat16).float().numpy()


def _resize_nearest(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    rows = (np.arange(height) + 0.5) * x.shape[0] / height
    cols = (np.arange(width) + 0.5) * x.shape[1] / width
    return x[rows.astype(int)[:, None], cols.astype(int)[None, :]]


class TrainDataset:
    """Samples of a training folder at one resolution; a missing ground-truth file is an error naming it.

    Every image is opened when the dataset is indexed (header and checksums, not decoded), so an
    unreadable one stops training at the start, before the model is loaded, with its name; one that
    fails to decode later stops it with its name too (training on a silently smaller set is not wanted).
    """

    def __init__(self, root: str | Path, resolution: tuple[int, int], depth_scale: float = 1000.0):
        self.root, self.resolution, self.depth_scale = Path(root), resolution, depth_scale
        rgb = self.root / "rgb"
        if not rgb.is_dir():
            raise MissingInput(f"{rgb}: image folder not found (layout: rgb/, depth/, normals/, mask/)")
        self.items = []
        for image in find_images(rgb):
            check_image(image)
            stem = image.relative_to(rgb).with_suffix("")
            depth = find_ground_truth(self.root / "depth", stem, image, "depth")
            normals = find_ground_truth(self.root / "normals", stem, image, "normals")
            masks = [self.root / "mask" / stem.with_name(stem.name + s) for s in (".png", ".npy")]
            self.items.append((image, depth, normals, next((m for m in masks if m.is_file()), None)))
        if not self.items:
            raise MissingInput(f"{rgb}: no .jpg/.jpeg/.png images found")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> TrainSample:
        image_path, depth_path, normals_path, mask_path = self.items[index]
        image = open_image(image_path)
        depth = read_input("depth", depth_path, read_depth, self.depth_scale)
        normals, normals_valid = read_input("normals", normals_path, read_normals)
        for name, arr in (("depth", depth), ("normals", normals)):
            if arr.shape[:2] != (image.height, image.width):
                raise InvalidInput(f"{image_path}: {name} is {arr.shape[:2]}, image is {(image.height, image.width)}")
        valid = (depth > 0) & np.isfinite(depth) & (np.linalg.norm(normals, axis=-1) > 1e-6)
        if normals_valid is not None:
            valid &= normals_valid
        if mask_path is not None:
            valid &= read_input("mask", mask_path, read_mask)
        size = self.resolution
        depth, normals, valid = (_resize_nearest(a, size) for a in (depth, normals, valid))
        normals = normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-6)
        normals = np.where(valid[..., None], normals, 0.0)
        y = log_normalise_depth(depth, valid)
        return TrainSample(
            rgb=preprocess(image, size)[0],
            depth=torch.from_numpy(y).float()[None].expand(3, -1, -1).contiguous(),
            normals=torch.from_numpy(normals.astype(np.float32)).permute(2, 0, 1).contiguous(),
            valid=torch.from_numpy(valid),
        )


def write_sample(root: Path, name: str, rgb: Image.Image, depth: np.ndarray, normals: np.ndarray) -> None:
    """Write one sample in the training layout (``.png`` RGB, ``.npy`` depth and normals)."""
    for sub in ("rgb", "depth", "normals"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rgb.save(root / "rgb" / f"{name}.png")
    np.save(root / "depth" / f"{name}.npy", depth.astype(np.float32))
    np.save(root / "normals" / f"{name}.npy", normals.astype(np.float32))
