"""The image contract every engine shares: FE2E's resize rule, pre-processing, post-processing, Prediction.

An image is resized to its processing size (FE2E's rule, or an explicit ``--processing-res``),
scaled to [-1, 1] as ``[1, 3, h, w]``; an engine returns depth ``[B, 1, h, w]`` in [0, 1] and decoded
normals ``[B, 3, h, w]``; :func:`postprocess` resizes both to the input size and normalises the
normals into a :class:`Prediction`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .resolution import fe2e_processing_size


@dataclass
class Prediction:
    depth: np.ndarray  # [H, W] float32 in [0, 1], affine-invariant in log depth
    normals: np.ndarray  # [H, W, 3] float32 unit vectors, components in [-1, 1]


def depth_from_decoded(decoded: torch.Tensor) -> torch.Tensor:
    """Decoded depth image ``[B, 3, h, w]`` in [-1, 1] -> ``[B, 1, h, w]`` in [0, 1] (mean over RGB)."""
    return (decoded * 0.5 + 0.5).mean(dim=1, keepdim=True)


def preprocess(image: Image.Image, processing_res: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB image -> ``[1, 3, h, w]`` in [-1, 1] at FE2E's processing size (or ``processing_res``)."""
    image = image.convert("RGB")
    size = processing_res or fe2e_processing_size(*image.size)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)  # PIL's default, as the official code
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    return x * 2 - 1


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B, C, h, w]`` to (width, height), antialiased when shrinking."""
    width, height = size
    if x.shape[-2:] == (height, width):
        return x
    shrink = height < x.shape[-2] or width < x.shape[-1]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)


def postprocess(depth: torch.Tensor, normals: torch.Tensor, size: tuple[int, int]) -> Prediction:
    """Depth ``[1, 1, h, w]`` in [0, 1] and decoded normals ``[1, 3, h, w]`` -> maps at ``size``."""
    depth = resize_to(depth, size).clamp(0, 1)
    normals = resize_to(normals, size)
    normals = normals / torch.linalg.vector_norm(normals, dim=1, keepdim=True).clamp_min(1e-6)
    return Prediction(
        depth=depth[0, 0].cpu().numpy().astype(np.float32),
        normals=normals[0].permute(1, 2, 0).cpu().numpy().astype(np.float32),
    )
