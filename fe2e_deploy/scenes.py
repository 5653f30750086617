"""Deterministic synthetic scenes with exact depth and normals (no downloads).

A pinhole camera (OpenCV axes: x right, y down, z forward) looks at a back wall, a floor and a
sphere; every pixel's ray is intersected analytically, so depth (z of the hit) and the camera-space
normal (facing the camera) are exact. Used by the demo/benchmark images, the shipped calibration
images and the training tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class SceneSample:
    rgb: Image.Image
    depth: np.ndarray  # [H, W] float32, metres (z of the hit point)
    normals: np.ndarray  # [H, W, 3] float32 unit vectors, camera space, facing the camera


def synthetic_sample(width: int, height: int, seed: int = 0) -> SceneSample:
    rng = np.random.default_rng(seed)
    focal = 0.9 * width
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(xx + 0.5 - width / 2) / focal, (yy + 0.5 - height / 2) / focal, np.ones_like(xx)], -1)
    wall_z, floor_y = rng.uniform(4.0, 8.0), rng.uniform(0.8, 1.5)
    center = np.array([rng.uniform(-0.8, 0.8), rng.uniform(-0.3, 0.4), rng.uniform(2.5, 3.5)])
    radius = rng.uniform(0.5, 0.9)
    # distances along each ray (z = 1 per unit), np.inf where missed
    t_wall = np.full(xx.shape, wall_z)
    t_floor = np.where(rays[..., 1] > 1e-6, floor_y / np.maximum(rays[..., 1], 1e-6), np.inf)
    a = np.sum(rays**2, -1)
    b = -2 * rays @ center
    c = center @ center - radius**2
    disc = b**2 - 4 * a * c
    t_sphere = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
    t_sphere = np.where(t_sphere > 0, t_sphere, np.inf)
    hit = np.argmin(np.stack([t_wall, t_floor, t_sphere]), axis=0)  # 0 wall, 1 floor, 2 sphere
    t = np.choose(hit, [t_wall, t_floor, t_sphere])
    points = rays * t[..., None]
    normals = np.zeros(points.shape)
    normals[hit == 0] = (0.0, 0.0, -1.0)
    normals[hit == 1] = (0.0, -1.0, 0.0)
    sphere_n = (points - center) / radius
    normals[hit == 2] = sphere_n[hit == 2]
    light = np.array([rng.uniform(-0.5, 0.5), -1.0, -0.6])
    light /= np.linalg.norm(light)
    shade = np.clip(normals @ light, 0, 1) * 0.75 + 0.25
    albedos = rng.uniform(0.3, 0.9, size=(3, 3))
    color = albedos[hit] * shade[..., None]
    floor = points[hit == 1]
    color[hit == 1] *= 0.85 + 0.15 * np.sign(np.sin(floor[:, [0]] * 4) * np.sin(floor[:, [2]] * 4))  # checkerboard
    rgb = Image.fromarray((np.clip(color, 0, 1) * 255).astype(np.uint8))
    return SceneSample(rgb, points[..., 2].astype(np.float32), normals.astype(np.float32))


def synthetic_scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """The RGB image of :func:`synthetic_sample`."""
    return synthetic_sample(width, height, seed).rgb
