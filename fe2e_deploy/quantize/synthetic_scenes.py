"""Deterministic synthetic calibration scenes: rooms, sphere still lifes and outdoor ground planes.

A small vectorised ray caster (pinhole camera at the origin, OpenCV axes: x right, y down, z
forward, slightly pitched and turned) renders planes, spheres and axis-aligned boxes with
textured albedo, a point light with falloff, a sun and hemispherical ambient light; 2x2
supersampling smooths the edges. Every scene is a pure function of its index, so the images
shipped in ``calibration/images/`` can be regenerated bit for bit::

    python -m fe2e_deploy.quantize.synthetic_scenes calibration/images

FP8 calibration only needs activations in the range real photos produce (smooth shading, edges,
textures, near and far geometry); these scenes give that without downloading a data set.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..files.atomic import atomic_write

WIDTH, HEIGHT, COUNT = 256, 192, 8
KINDS = ("room", "still_life", "outdoor")
SUPERSAMPLE = 2
Hit = tuple[np.ndarray, np.ndarray, np.ndarray]  # distance t [N], normal [N, 3], albedo [N, 3]


def _plane(rays: np.ndarray, point, normal, albedo, pattern: str = "plain", period: float = 1.0) -> Hit:
    normal = np.asarray(normal, float) / np.linalg.norm(normal)
    denom = rays @ normal
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (np.asarray(point, float) @ normal) / denom
    t = np.where(np.isfinite(t) & (t > 1e-6), t, np.inf)
    hits = rays * np.where(np.isfinite(t), t, 0)[:, None]
    return t, np.broadcast_to(normal, rays.shape), _texture(hits, normal, np.asarray(albedo, float), pattern, period)


def _sphere(rays: np.ndarray, center, radius: float, albedo) -> Hit:
    center = np.asarray(center, float)
    a, b, c = np.sum(rays**2, -1), rays @ center, center @ center - radius**2
    disc = b**2 - a * c
    t = (b - np.sqrt(np.maximum(disc, 0))) / a
    t = np.where((disc > 0) & (t > 1e-6), t, np.inf)
    normals = (rays * np.where(np.isfinite(t), t, 0)[:, None] - center) / radius
    return t, normals, np.broadcast_to(np.asarray(albedo, float), rays.shape)


def _box(rays: np.ndarray, lo, hi, albedo) -> Hit:
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / np.where(np.abs(rays) > 1e-12, rays, 1e-12)
    t0, t1 = np.asarray(lo, float) * inv, np.asarray(hi, float) * inv
    near, far = np.minimum(t0, t1), np.maximum(t0, t1)
    t_in, t_out = near.max(-1), far.min(-1)
    t = np.where((t_out >= t_in) & (t_in > 1e-6), t_in, np.inf)
    axis = near.argmax(-1)
    normals = np.zeros_like(rays)
    normals[np.arange(len(rays)), axis] = -np.sign(rays[np.arange(len(rays)), axis])
    return t, normals, np.broadcast_to(np.asarray(albedo, float), rays.shape)


def _texture(points: np.ndarray, normal: np.ndarray, albedo: np.ndarray, pattern: str, period: float) -> np.ndarray:
    """Per-point albedo of a plane: plain, checker (floors) or stripes (walls)."""
    u_axis = np.cross(normal, [0.0, 0.0, 1.0] if abs(normal[2]) < 0.9 else [1.0, 0.0, 0.0])
    v_axis = np.cross(normal, u_axis)
    u, v = points @ u_axis / period, points @ v_axis / period
    if pattern == "checker":
        factor = 0.75 + 0.25 * ((np.floor(u) + np.floor(v)) % 2)
    elif pattern == "stripes":
        factor = 0.85 + 0.15 * np.sin(2 * np.pi * u)
    else:
        factor = np.ones(len(points))
    return albedo * factor[:, None]


def _color(rng: np.random.Generator, low: float = 0.25, high: float = 0.9) -> np.ndarray:
    return rng.uniform(low, high, 3)


def _room(rng: np.random.Generator) -> tuple[list[Callable], np.ndarray | None, np.ndarray | None]:
    half_w, floor_y, ceil_y = rng.uniform(1.8, 3.0), rng.uniform(1.2, 1.7), rng.uniform(-1.6, -1.1)
    depth = rng.uniform(5, 9)
    objects = [
        partial(
            _plane,
            point=(0, floor_y, 0),
            normal=(0, -1, 0),
            albedo=_color(rng),
            pattern="checker",
            period=rng.uniform(0.4, 1.0),
        ),
        partial(_plane, point=(0, ceil_y, 0), normal=(0, 1, 0), albedo=_color(rng, 0.7, 0.95)),
        partial(
            _plane,
            point=(0, 0, depth),
            normal=(0, 0, -1),
            albedo=_color(rng),
            pattern="stripes",
            period=rng.uniform(0.3, 0.8),
        ),
        partial(_plane, point=(-half_w, 0, 0), normal=(1, 0, 0), albedo=_color(rng)),
        partial(_plane, point=(half_w, 0, 0), normal=(-1, 0, 0), albedo=_color(rng)),
    ]
    for _ in range(rng.integers(1, 4)):  # furniture standing on the floor
        x, z = rng.uniform(-half_w + 0.5, half_w - 0.5), rng.uniform(2.0, depth - 0.5)
        sx, sy, sz = rng.uniform(0.3, 0.8, 3)
        lo, hi = (x - sx, floor_y - 2 * sy, z - sz), (x + sx, floor_y, z + sz)
        objects.append(partial(_box, lo=lo, hi=hi, albedo=_color(rng)))
    radius = rng.uniform(0.25, 0.5)
    center = (rng.uniform(-1, 1), floor_y - radius, rng.uniform(2.0, 4.0))
    objects.append(partial(_sphere, center=center, radius=radius, albedo=_color(rng)))
    light = np.array([rng.uniform(-1, 1), ceil_y + 0.2, rng.uniform(1.5, depth - 1)])
    return objects, light, None


def _still_life(rng: np.random.Generator) -> tuple[list[Callable], np.ndarray | None, np.ndarray | None]:
    floor_y, depth = rng.uniform(0.6, 1.0), rng.uniform(3.5, 6.0)
    objects = [
        partial(
            _plane,
            point=(0, floor_y, 0),
            normal=(0, -1, rng.uniform(-0.1, 0.1)),
            albedo=_color(rng),
            pattern="checker",
            period=0.25,
        ),
        partial(_plane, point=(0, 0, depth), normal=(rng.uniform(-0.3, 0.3), 0, -1), albedo=_color(rng)),
    ]
    for _ in range(rng.integers(3, 6)):
        radius = rng.uniform(0.15, 0.45)
        center = (rng.uniform(-1.2, 1.2), floor_y - radius, rng.uniform(1.8, depth - 0.6))
        objects.append(partial(_sphere, center=center, radius=radius, albedo=_color(rng)))
    light = np.array([rng.uniform(-2, 2), -2.0, rng.uniform(0.0, 2.0)])
    return objects, light, None


def _outdoor(rng: np.random.Generator) -> tuple[list[Callable], np.ndarray | None, np.ndarray | None]:
    ground_y = rng.uniform(1.3, 2.0)
    objects = [
        partial(
            _plane,
            point=(0, ground_y, 0),
            normal=(0, -1, 0),
            albedo=_color(rng, 0.2, 0.6),
            pattern="checker",
            period=rng.uniform(1, 3),
        ),
    ]
    for _ in range(rng.integers(3, 7)):
        x, z = rng.uniform(-12, 12), rng.uniform(6, 40)
        if rng.random() < 0.5:
            sx, sy, sz = rng.uniform(0.8, 3.0, 3)
            lo, hi = (x - sx, ground_y - 2 * sy, z - sz), (x + sx, ground_y, z + sz)
            objects.append(partial(_box, lo=lo, hi=hi, albedo=_color(rng)))
        else:
            radius = rng.uniform(0.5, 2.5)
            objects.append(partial(_sphere, center=(x, ground_y - radius, z), radius=radius, albedo=_color(rng)))
    sun = np.array([rng.uniform(-1, 1), -1.0, rng.uniform(-0.5, 1.0)])
    return objects, None, sun / np.linalg.norm(sun)


SCENES: dict[str, Callable] = {"room": _room, "still_life": _still_life, "outdoor": _outdoor}


def _rotation(pitch: float, yaw: float) -> np.ndarray:
    cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return ry @ rx


def render_scene(index: int, width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """Scene number ``index`` (kind ``KINDS[index % 3]``) as an 8-bit RGB image; deterministic."""
    kind = KINDS[index % len(KINDS)]
    rng = np.random.default_rng(1000 + index)
    objects, light, sun = SCENES[kind](rng)
    w, h = width * SUPERSAMPLE, height * SUPERSAMPLE
    focal = rng.uniform(0.7, 1.1) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    rays = np.stack([(xx + 0.5 - w / 2) / focal, (yy + 0.5 - h / 2) / focal, np.ones_like(xx)], -1).reshape(-1, 3)
    rays = rays @ _rotation(rng.uniform(-0.12, 0.12), rng.uniform(-0.25, 0.25)).T
    hits = [obj(rays) for obj in objects]
    ts = np.stack([t for t, _, _ in hits])
    nearest = ts.argmin(0)
    rows = np.arange(len(rays))
    t = ts[nearest, rows]
    normals = np.stack([n for _, n, _ in hits])[nearest, rows]
    albedo = np.stack([a for _, _, a in hits])[nearest, rows]
    normals = normals * -np.sign(np.sum(normals * rays, -1, keepdims=True) + 1e-12)  # face the camera
    points = rays * np.where(np.isfinite(t), t, 0)[:, None]
    light_in = 0.25 + 0.15 * np.clip(-normals[:, 1], 0, 1)  # ambient, brighter from above
    if light is not None:
        to_light = light - points
        dist = np.linalg.norm(to_light, axis=-1)
        light_in = light_in + 0.9 * np.clip(np.sum(normals * to_light, -1) / dist, 0, 1) / (1 + (dist / 4) ** 2)
    if sun is not None:
        light_in = light_in + 0.8 * np.clip(-(normals @ sun), 0, 1)
    color = albedo * light_in[:, None]
    sky = np.array([0.55, 0.7, 0.95]) + np.array([0.3, 0.2, 0.05]) * (
        rays[:, [1]] / np.linalg.norm(rays, axis=-1)[:, None]
    )
    color = np.where(np.isfinite(t)[:, None], color, sky)
    rgb = (np.clip(color, 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8).reshape(h, w, 3)
    return Image.fromarray(rgb).reduce(SUPERSAMPLE)


def scene_name(index: int) -> str:
    return f"scene_{index:02d}_{KINDS[index % len(KINDS)]}.png"


def write_scenes(out_dir: str | Path, count: int = COUNT, width: int = WIDTH, height: int = HEIGHT) -> list[Path]:
    """Render scenes ``0 .. count-1`` into ``out_dir`` as PNG files (atomically, replacing same-named files)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = render_scene(index, width, height)
        paths.append(atomic_write(out_dir / scene_name(index), lambda p, im=image: im.save(p, format="PNG")))
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic FP8 calibration scenes as PNG files.")
    parser.add_argument("out_dir", nargs="?", default="calibration/images", type=Path)
    parser.add_argument("--count", type=int, default=COUNT)
    parser.add_argument("--size", default=f"{WIDTH}x{HEIGHT}", help="WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    for path in write_scenes(args.out_dir, args.count, width, height):
        print(path)


if __name__ == "__main__":
    main()
