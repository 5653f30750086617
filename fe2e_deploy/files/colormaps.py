"""Depth and normal previews as 8-bit RGB, the same pixels as diffusers' Marigold visualisers, faster.

``MarigoldImageProcessor.visualize_depth`` / ``visualize_normals`` convert to torch, loop over a batch
and back through PIL: on a 1024x768 map that is ~13 ms of mostly Python work per preview, and
``infer`` writes them from several threads at once, where that work holds the GIL. These are the
same float32 operations in the same order on whole numpy arrays (the "Spectral" table copied from
diffusers, itself from matplotlib), so the bytes are identical (``tests`` compare them with diffusers).
"""

from __future__ import annotations

import numpy as np

#: matplotlib's "Spectral" as diffusers' Marigold colormap lists it (11 stops, depth 0 -> 1).
SPECTRAL = np.array(
    [
        (0.61960784313725492, 0.003921568627450980, 0.25882352941176473),
        (0.83529411764705885, 0.24313725490196078, 0.30980392156862746),
        (0.95686274509803926, 0.42745098039215684, 0.2627450980392157),
        (0.99215686274509807, 0.68235294117647061, 0.38039215686274508),
        (0.99607843137254903, 0.8784313725490196, 0.54509803921568623),
        (1.0, 1.0, 0.74901960784313726),
        (0.90196078431372551, 0.96078431372549022, 0.59607843137254901),
        (0.6705882352941176, 0.8666666666666667, 0.64313725490196083),
        (0.4, 0.76078431372549016, 0.6470588235294118),
        (0.19607843137254902, 0.53333333333333333, 0.74117647058823533),
        (0.36862745098039218, 0.30980392156862746, 0.63529411764705879),
    ],
    dtype=np.float32,
)


def depth_preview(depth: np.ndarray) -> np.ndarray:
    """``[H, W]`` depth in [0, 1] -> ``[H, W, 3]`` uint8, Spectral (near red, far blue)."""
    last = SPECTRAL.shape[0] - 1
    pos = np.clip(np.asarray(depth, dtype=np.float32), 0, 1) * np.float32(last)
    left = pos.astype(np.intp)  # truncation, as torch's .long()
    right = np.minimum(left + 1, last)
    d = pos - left.astype(np.float32)
    rest = np.float32(1) - d
    out = np.empty((*pos.shape, 3), dtype=np.uint8)
    for c in range(3):  # one channel at a time: 1-D gathers from an 11-entry table
        stops = SPECTRAL[:, c]
        value = rest * stops.take(left) + d * stops.take(right)
        out[..., c] = value * np.float32(255)  # float -> uint8 truncates, as torch's .to(uint8)
    return out


def normals_preview(normals: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` unit normals in [-1, 1] -> ``[H, W, 3]`` uint8, ``(n + 1) / 2 * 255``."""
    img = (np.asarray(normals, dtype=np.float32) + np.float32(1.0)) * np.float32(0.5)
    return (img * np.float32(255)).astype(np.uint8)
