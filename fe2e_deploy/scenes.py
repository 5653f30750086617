"""Deterministic synthetic RGB scenes (no downloads): a shaded sphere in a room, for demos and benchmarks."""

from __future__ import annotations

import numpy as np
from PIL import Image


def synthetic_scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """A Lambertian sphere in front of a floor and back wall, lit from a seeded direction."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = (xx + 0.5) / width * 2 - 1, (yy + 0.5) / height * 2 - 1
    light = np.array([rng.uniform(-0.6, 0.6), -0.7, 0.8], dtype=np.float32)
    light /= np.linalg.norm(light)
    floor = v > 0.1
    normal = np.zeros((height, width, 3), np.float32)
    normal[..., 2] = 1.0  # back wall faces the camera
    normal[floor] = (0.0, -1.0, 0.0)
    cx, cy, r = rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.1), rng.uniform(0.3, 0.5)
    d2 = ((u - cx) / r) ** 2 + ((v - cy) / (r * width / height)) ** 2
    sphere = d2 < 1
    nx, ny = (u - cx) / r, (v - cy) / (r * width / height)
    nz = np.sqrt(np.clip(1 - nx**2 - ny**2, 0, 1))
    normal[sphere] = np.stack([nx, ny, nz], -1)[sphere]
    shade = np.clip(normal @ light, 0, 1)[..., None] * 0.8 + 0.2
    albedo = np.where(floor[..., None], (0.55, 0.45, 0.35), (0.75, 0.78, 0.8)).astype(np.float32)
    albedo[sphere] = rng.uniform(0.3, 0.9, size=3)
    stripes = 0.05 * np.sin(xx * 0.3)[..., None] * floor[..., None]  # texture on the floor
    return Image.fromarray((np.clip(albedo * shade + stripes, 0, 1) * 255).astype(np.uint8))
