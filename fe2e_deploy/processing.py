"""The image contract every engine shares: FE2E's resize rule, pre-processing, post-processing, Prediction.

An image is resized to its processing size (FE2E's rule, or an explicit ``--processing-res``),
scaled to [-1, 1] as ``[1, 3, h, w]``; an engine returns depth ``[B, 1, h, w]`` in [0, 1] and decoded
normals ``[B, 3, h, w]``; :func:`postprocess` resizes both to the input size and normalises the
normals into a :class:`Prediction`.

Post-processing works at the input's size, which may be large (a 12 MP photo: 192 MB of maps), so it
keeps its memory to the maps themselves (16 bytes per pixel) plus one channel (4) at a time: normals are
resized a channel at a time and normalised in bands of rows (:func:`row_bands`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .resolution import fe2e_processing_size

#: Pixels per band when large maps are processed a band of rows at a time.
BAND_PIXELS = 1 << 20


@dataclass
class Prediction:
    depth: np.ndarray  # [H, W] float32 in [0, 1], affine-invariant in log depth
    normals: np.ndarray  # [H, W, 3] float32 unit vectors, components in [-1, 1]

    def is_finite(self) -> bool:
        """False when either map holds NaN or Inf (a broken engine or weights): such maps are not written."""
        return bool(np.isfinite(self.depth).all() and np.isfinite(self.normals).all())


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


def row_bands(height: int, width: int, pixels: int = BAND_PIXELS) -> Iterator[slice]:
    """Slices of rows covering ``height`` rows, about ``pixels`` pixels each (at least one row)."""
    rows = max(1, pixels // max(1, width))
    for start in range(0, height, rows):
        yield slice(start, min(start + rows, height))


def postprocess(depth: torch.Tensor, normals: torch.Tensor, size: tuple[int, int]) -> Prediction:
    """Depth ``[1, 1, h, w]`` in [0, 1] and decoded normals ``[1, 3, h, w]`` -> maps at ``size``.

    Peak memory: the two maps (16 bytes per output pixel) plus one resized channel (4 bytes per pixel).
    """
    width, height = size
    resized = resize_to(depth, size)
    resized = resized.clamp_(0, 1) if resized is not depth else resized.clamp(0, 1)  # never the caller's tensor
    depth_map = np.asarray(resized[0, 0].cpu().numpy(), dtype=np.float32)
    del resized
    normal_map = np.empty((height, width, 3), dtype=np.float32)
    for c in range(3):  # one channel at a time: no [3, H, W] copy next to the [H, W, 3] result
        normal_map[..., c] = resize_to(normals[:, c : c + 1], size)[0, 0].cpu().numpy()
    unit = torch.from_numpy(normal_map)  # shares the memory: normalised in place, a band at a time
    for rows in row_bands(height, width):
        band = unit[rows]
        band /= torch.linalg.vector_norm(band, dim=-1, keepdim=True).clamp_min(1e-6)
    return Prediction(depth=depth_map, normals=normal_map)
