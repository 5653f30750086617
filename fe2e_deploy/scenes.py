"""Deterministic synthetic scenes with exact depth and normals (no downloads).

A small vectorised ray caster (pinhole camera at the origin, OpenCV axes: x right, y down, z
forward, slightly pitched and turned) renders planes, spheres and axis-aligned boxes with
textured albedo, a point light with falloff, a sun and hemispherical ambient light; 2x2
supersampling smooths the RGB edges, while depth (z of the hit) and the camera-space normal
(facing the camera) are exact at each pixel centre. Three uses, one renderer:

- :func:`render_scene`: the FP8 calibration scenes, a pure function of their index, shipped in
  ``calibration/images/`` and regenerated bit for bit by ``python -m fe2e_deploy.scenes calibration/images``;
- :func:`random_sample`: the training and evaluation scenes of the demo model (rooms, still lifes,
  outdoor ground planes; textures, light colours and cameras varied further), any seed;
- :func:`synthetic_sample`: the small wall + floor + sphere scene of the benchmark and test images.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from .files.atomic import atomic_write

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


@dataclass
class SceneSample:
    rgb: Image.Image
    depth: np.ndarray  # [H, W] float32, metres (z of the hit point); 0 where a ray hits nothing (sky)
    normals: np.ndarray  # [H, W, 3] float32 unit vectors, camera space, facing the camera; 0 on sky
    focal: float = 0.0  # pixels; the principal point is the image centre


@dataclass(frozen=True)
class Style:
    """What :func:`random_sample` varies beyond the scene builders: light colours and strength, textures."""

    light_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    sun_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.25
    textures: tuple[tuple[str, float], ...] = ()  # (pattern, period) per object, on top of its albedo


PLAIN = Style()
OBJECT_PATTERNS = ("plain", "checker", "stripes", "noise")


def _pattern_factor(points: np.ndarray, pattern: str, period: float) -> np.ndarray:
    """A 3D albedo pattern (so it works on any surface): checker cells, stripes or smooth noise."""
    p = points / period
    if pattern == "checker":
        return 0.7 + 0.3 * (np.floor(p).sum(-1) % 2)
    if pattern == "stripes":
        return 0.8 + 0.2 * np.sin(2 * np.pi * (p[:, 0] + 0.5 * p[:, 2]))
    if pattern == "noise":
        return 0.8 + 0.2 * np.sin(3.1 * p[:, 0] + np.sin(2.3 * p[:, 1])) * np.cos(2.7 * p[:, 2] + np.sin(1.9 * p[:, 0]))
    return np.ones(len(points))


def _cast(objects: list[Callable], rays: np.ndarray, style: Style) -> tuple[np.ndarray, ...]:
    """Nearest hit of every ray: distance (inf = miss), normal facing the ray, albedo."""
    hits = [obj(rays) for obj in objects]
    ts = np.stack([t for t, _, _ in hits])
    nearest = ts.argmin(0)
    rows = np.arange(len(rays))
    t = ts[nearest, rows]
    normals = np.stack([n for _, n, _ in hits])[nearest, rows]
    albedo = np.stack([a for _, _, a in hits])[nearest, rows]
    normals = normals * -np.sign(np.sum(normals * rays, -1, keepdims=True) + 1e-12)  # face the camera
    if style.textures:
        points = rays * np.where(np.isfinite(t), t, 0)[:, None]
        factors = np.stack([_pattern_factor(points, pattern, period) for pattern, period in style.textures])
        albedo = albedo * factors[nearest, rows][:, None]
    return t, normals, albedo


def _shade(rays, t, normals, albedo, light, sun, style: Style) -> np.ndarray:
    points = rays * np.where(np.isfinite(t), t, 0)[:, None]
    light_in = style.ambient + 0.15 * np.clip(-normals[:, 1], 0, 1)  # ambient, brighter from above
    light_in = light_in[:, None] * np.ones(3)
    if light is not None:
        to_light = light - points
        dist = np.linalg.norm(to_light, axis=-1)
        gain = 0.9 * np.clip(np.sum(normals * to_light, -1) / dist, 0, 1) / (1 + (dist / 4) ** 2)
        light_in = light_in + gain[:, None] * np.asarray(style.light_color)
    if sun is not None:
        light_in = light_in + (0.8 * np.clip(-(normals @ sun), 0, 1))[:, None] * np.asarray(style.sun_color)
    color = albedo * light_in
    sky = np.array([0.55, 0.7, 0.95]) + np.array([0.3, 0.2, 0.05]) * (
        rays[:, [1]] / np.linalg.norm(rays, axis=-1)[:, None]
    )
    return np.where(np.isfinite(t)[:, None], color, sky)


def _camera_rays(width: int, height: int, focal: float, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-space rays (z = 1) through the pixel centres and the same rays in the world frame, [H*W, 3]."""
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    rays = np.stack([(xx + 0.5 - width / 2) / focal, (yy + 0.5 - height / 2) / focal, np.ones_like(xx)], -1)
    rays = rays.reshape(-1, 3)
    return rays, rays @ rotation.T


def _render(
    scene: tuple[list[Callable], np.ndarray | None, np.ndarray | None],
    focal_ratio: float,
    rotation: np.ndarray,
    width: int,
    height: int,
    style: Style = PLAIN,
    geometry: bool = True,
) -> SceneSample:
    """RGB (2x2 supersampled, gamma 2.2) and, with ``geometry``, exact depth and camera-space normals."""
    objects, light, sun = scene
    w, h = width * SUPERSAMPLE, height * SUPERSAMPLE
    _, rays = _camera_rays(w, h, focal_ratio * w, rotation)
    t, normals, albedo = _cast(objects, rays, style)
    color = _shade(rays, t, normals, albedo, light, sun, style)
    rgb = (np.clip(color, 0, 1) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8).reshape(h, w, 3)
    image = Image.fromarray(rgb).reduce(SUPERSAMPLE)
    if not geometry:
        return SceneSample(image, np.zeros((0, 0), np.float32), np.zeros((0, 0, 3), np.float32))
    _, rays = _camera_rays(width, height, focal_ratio * width, rotation)
    t, normals, _ = _cast(objects, rays, style)
    hit = np.isfinite(t)
    depth = np.where(hit, t, 0.0).reshape(height, width)  # camera rays have z = 1, so z of the hit = t
    normals_cam = np.where(hit[:, None], normals @ rotation, 0.0).reshape(height, width, 3)
    return SceneSample(image, depth.astype(np.float32), normals_cam.astype(np.float32), focal_ratio * width)


def render_scene(index: int, width: int = WIDTH, height: int = HEIGHT) -> Image.Image:
    """Calibration scene number ``index`` (kind ``KINDS[index % 3]``) as an 8-bit RGB image; deterministic."""
    return render_sample(index, width, height, geometry=False).rgb


def render_sample(index: int, width: int = WIDTH, height: int = HEIGHT, geometry: bool = True) -> SceneSample:
    """Calibration scene ``index`` with its depth and normals (plain style: white lights, builders' textures)."""
    kind = KINDS[index % len(KINDS)]
    rng = np.random.default_rng(1000 + index)
    scene = SCENES[kind](rng)
    focal_ratio = rng.uniform(0.7, 1.1)
    rotation = _rotation(rng.uniform(-0.12, 0.12), rng.uniform(-0.25, 0.25))
    return _render(scene, focal_ratio, rotation, width, height, PLAIN, geometry)


def _random_style(rng: np.random.Generator, objects: int) -> Style:
    def tint() -> tuple[float, float, float]:
        return tuple(float(c) for c in rng.uniform(0.7, 1.3, 3) * rng.uniform(0.6, 1.4))

    textures = tuple((str(rng.choice(OBJECT_PATTERNS)), float(rng.uniform(0.1, 0.8))) for _ in range(objects))
    return Style(light_color=tint(), sun_color=tint(), ambient=float(rng.uniform(0.12, 0.4)), textures=textures)


def random_sample(seed: int, width: int, height: int, kind: str | None = None) -> SceneSample:
    """A training/evaluation scene: a random kind (rooms twice as often), builders' geometry and
    textures, plus random per-object textures, light colours, ambient level and a wider camera range."""
    rng = np.random.default_rng([seed, 15])  # a stream of its own: never one of the calibration scenes
    kind = kind or str(rng.choice(("room", "room", "still_life", "outdoor")))
    objects, light, sun = SCENES[kind](rng)
    if light is not None and sun is None and rng.random() < 0.3:  # daylight through a window
        sun = np.array([rng.uniform(-1, 1), -1.0, rng.uniform(-0.5, 1.0)])
        sun = sun / np.linalg.norm(sun)
    style = _random_style(rng, len(objects))
    focal_ratio = rng.uniform(0.6, 1.2)
    rotation = _rotation(rng.uniform(-0.25, 0.25), rng.uniform(-0.4, 0.4))
    return _render((objects, light, sun), focal_ratio, rotation, width, height, style)


def synthetic_sample(width: int, height: int, seed: int = 0) -> SceneSample:
    """A back wall, a checkered floor and a sphere (flat shading, no supersampling); the benchmark/test scene."""
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
    return SceneSample(rgb, points[..., 2].astype(np.float32), normals.astype(np.float32), focal)


def synthetic_scene(width: int, height: int, seed: int = 0) -> Image.Image:
    """The RGB image of :func:`synthetic_sample`."""
    return synthetic_sample(width, height, seed).rgb


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
