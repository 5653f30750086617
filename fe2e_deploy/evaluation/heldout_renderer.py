"""A second, independent scene renderer, for held-out evaluation only (never for training).

It shares no rendering code with :mod:`fe2e_deploy.scenes` or :mod:`fe2e_deploy.randomised_scenes`
(the training generators): scenes are signed distance functions in a y-up world (rounded boxes,
capsules, capped cylinders, hexagonal prisms, octahedra, links, smooth-blended blobs, arches made by
subtraction, a ground plane), sphere-traced from a look-at camera with a vertical field of view;
shading is Oren-Nayar diffuse plus a Schlick-Fresnel Phong lobe under one area-like key light with
penumbra soft shadows traced on the distance field, a sky dome term with distance-field ambient
occlusion, distance fog, marble, wood-ring and tile textures, and a filmic tone curve.

Ground truth matches the project's conventions: OpenCV camera axes (x right, y down, z forward),
depth = z of the surface point in metres at each pixel centre (0 where the ray escapes to the sky),
normals in camera space, unit, facing the camera (the normalised gradient of the distance field).
Depth is exact to the tracer's tolerance (1e-5 of the distance field, then a bisection refinement).

    python -m fe2e_deploy.evaluation.heldout_renderer --out build/heldout --count 24
writes ``rgb/*.png``, ``depth/*.npy``, ``normals/*.npy`` (the generic layout of ``evaluate``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

HELDOUT_KINDS = ("gallery", "yard", "tabletop")
FIRST_SEED = 0
MAX_STEPS = 160
HIT_EPS = 1e-5
FAR = 60.0

# ---------------------------------------------------------------------------------------------------
# distance functions, points [N, 3] in the world (y up) -> [N]


def _length(v: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", v, v))


def sd_ground(height: float = 0.0):
    return lambda p: p[:, 1] - height


def sd_ball(center, radius: float):
    c = np.asarray(center, float)
    return lambda p: _length(p - c) - radius


def _to_local(p, center, angle):
    q = p - center
    ca, sa = np.cos(angle), np.sin(angle)
    return np.stack([ca * q[:, 0] + sa * q[:, 2], q[:, 1], -sa * q[:, 0] + ca * q[:, 2]], -1)


def sd_round_box(center, half, rounding: float, angle: float = 0.0):
    c, h = np.asarray(center, float), np.asarray(half, float) - rounding

    def f(p):
        q = np.abs(_to_local(p, c, angle)) - h
        outside = _length(np.maximum(q, 0.0))
        inside = np.minimum(q.max(-1), 0.0)
        return outside + inside - rounding

    return f


def sd_capsule(a, b, radius: float):
    a, b = np.asarray(a, float), np.asarray(b, float)
    ba = b - a

    def f(p):
        pa = p - a
        h = np.clip(pa @ ba / (ba @ ba), 0, 1)
        return _length(pa - h[:, None] * ba) - radius

    return f


def sd_upright_cylinder(center, radius: float, half_height: float):
    c = np.asarray(center, float)

    def f(p):
        q = p - c
        d = np.stack([np.hypot(q[:, 0], q[:, 2]) - radius, np.abs(q[:, 1]) - half_height], -1)
        return np.minimum(d.max(-1), 0.0) + _length(np.maximum(d, 0.0))

    return f


def sd_hex_prism(center, radius: float, half_height: float, angle: float = 0.0):
    c = np.asarray(center, float)
    k = np.array([-0.8660254, 0.5, 0.57735])

    def f(p):
        q = _to_local(p, c, angle)
        x, z, y = np.abs(q[:, 0]), np.abs(q[:, 2]), q[:, 1]
        dot = np.minimum(k[0] * x + k[1] * z, 0.0)
        x, z = x - 2 * dot * k[0], z - 2 * dot * k[1]
        dx = np.hypot(x - np.clip(x, -k[2] * radius, k[2] * radius), z - radius) * np.sign(z - radius)
        d = np.stack([dx, np.abs(y) - half_height], -1)
        return np.minimum(d.max(-1), 0.0) + _length(np.maximum(d, 0.0))

    return f


def sd_octahedron(center, size: float):
    """A bound (not the exact distance, never larger than it), which sphere tracing allows."""
    c = np.asarray(center, float)
    return lambda p: (np.abs(p - c).sum(-1) - size) * 0.57735027


def sd_link(center, length: float, ring: float, tube: float, angle: float = 0.0):
    c = np.asarray(center, float)

    def f(p):
        q = _to_local(p, c, angle)
        qy = np.maximum(np.abs(q[:, 1]) - length, 0.0)
        return np.hypot(np.hypot(q[:, 0], qy) - ring, q[:, 2]) - tube

    return f


def smooth_union(f, g, k: float):
    def h(p):
        a, b = f(p), g(p)
        m = np.clip(0.5 + 0.5 * (b - a) / k, 0, 1)
        return b + (a - b) * m - k * m * (1 - m)

    return h


def subtract(f, g):
    return lambda p: np.maximum(f(p), -g(p))


# ---------------------------------------------------------------------------------------------------
# scenes


@dataclass
class Surface:
    sdf: object
    color: np.ndarray
    texture: str = "none"  # none, marble, wood, tiles
    roughness: float = 0.5  # Oren-Nayar sigma (radians)
    specular: float = 0.0


@dataclass
class HeldoutScene:
    surfaces: list[Surface]
    eye: np.ndarray
    target: np.ndarray
    fov_y: float  # degrees
    key_dir: np.ndarray  # unit, towards the key light
    key_color: np.ndarray
    sky_top: np.ndarray
    sky_bottom: np.ndarray
    fog: float


def _color(rng, saturation: float = 0.6) -> np.ndarray:
    grey = rng.uniform(0.2, 0.85)
    return np.clip(grey + saturation * (rng.uniform(0, 1, 3) - 0.5) * grey, 0.03, 0.95)


def _surface(rng, sdf) -> Surface:
    return Surface(
        sdf,
        _color(rng),
        str(rng.choice(("none", "none", "marble", "wood", "tiles"))),
        float(rng.uniform(0.0, 0.6)),
        float(rng.choice((0.0, 0.0, rng.uniform(0.1, 0.6)))),
    )


def _thing(rng, x: float, z: float, ground: float, scale: float) -> Surface:
    s = scale * rng.uniform(0.6, 1.3)
    kind = rng.integers(0, 7)
    if kind == 0:
        h = s * rng.uniform(0.2, 0.6, 3)
        sdf = sd_round_box((x, ground + h[1], z), h, float(min(h) * rng.uniform(0.05, 0.5)), rng.uniform(0, np.pi))
    elif kind == 1:
        r = s * rng.uniform(0.1, 0.3)
        top = ground + r + s * rng.uniform(0.2, 1.0)
        sdf = sd_capsule((x, ground + r, z), (x + s * rng.uniform(-0.3, 0.3), top, z), r)
    elif kind == 2:
        r, hh = s * rng.uniform(0.15, 0.4), s * rng.uniform(0.1, 0.6)
        sdf = sd_upright_cylinder((x, ground + hh, z), r, hh)
    elif kind == 3:
        r, hh = s * rng.uniform(0.15, 0.4), s * rng.uniform(0.1, 0.5)
        sdf = sd_hex_prism((x, ground + hh, z), r, hh, rng.uniform(0, np.pi))
    elif kind == 4:
        size = s * rng.uniform(0.25, 0.5)
        sdf = sd_octahedron((x, ground + size, z), size)
    elif kind == 5:
        ring, tube = s * rng.uniform(0.15, 0.3), s * rng.uniform(0.04, 0.08)
        length = s * rng.uniform(0.05, 0.2)
        sdf = sd_link((x, ground + length + ring + tube, z), length, ring, tube, rng.uniform(0, np.pi))
    else:  # blended blobs
        r = s * rng.uniform(0.15, 0.3)
        sdf = sd_ball((x, ground + r, z), r)
        for _ in range(rng.integers(1, 4)):
            q = (x + rng.uniform(-r, r), ground + r + rng.uniform(0, 1.5 * r), z + rng.uniform(-r, r))
            sdf = smooth_union(sdf, sd_ball(q, r * rng.uniform(0.5, 0.9)), r * 0.5)
    return _surface(rng, sdf)


def _gallery(rng) -> HeldoutScene:
    w, d, h = rng.uniform(3, 6), rng.uniform(4, 9), rng.uniform(2.6, 4.0)
    floor = Surface(sd_ground(0.0), _color(rng, 0.3), str(rng.choice(("tiles", "wood"))), 0.3, 0.2)
    walls = sd_round_box((0, h / 2, d / 2), (w / 2 + 0.3, h / 2 + 0.3, d / 2 + 0.3), 0.0)
    inner = sd_round_box((0, h / 2, d / 2), (w / 2, h / 2, d / 2), 0.0)
    room = Surface(subtract(walls, inner), _color(rng, 0.3), "none", 0.6, 0.0)  # the shell seen from inside
    surfaces = [floor, room]
    if rng.random() < 0.6:  # an arched doorway in a free-standing wall
        wx = rng.uniform(-w / 4, w / 4)
        wall = sd_round_box((wx, 1.2, d * 0.7), (1.0, 1.2, 0.1), 0.02)
        door = sd_round_box((wx, 0.5, d * 0.7), (0.35, 0.5, 0.5), 0.0)
        hole = smooth_union(door, sd_capsule((wx, 1.0, d * 0.7 - 0.5), (wx, 1.0, d * 0.7 + 0.5), 0.35), 0.01)
        surfaces.append(Surface(subtract(wall, hole), _color(rng), "marble", 0.2, 0.1))
    for _ in range(rng.integers(3, 7)):
        x, z = rng.uniform(-w / 2 + 0.5, w / 2 - 0.5), rng.uniform(1.5, d - 0.5)
        if rng.random() < 0.4:  # on a pedestal
            ph = rng.uniform(0.5, 1.0)
            surfaces.append(
                Surface(sd_upright_cylinder((x, ph / 2, z), 0.3, ph / 2), _color(rng, 0.1), "marble", 0.1, 0.3)
            )
            surfaces.append(_thing(rng, x, z, ph, 0.35))
        else:
            surfaces.append(_thing(rng, x, z, 0.0, 0.8))
    eye = np.array([rng.uniform(-w / 4, w / 4), rng.uniform(1.0, 2.0), rng.uniform(0.2, 0.8)])
    target = np.array([rng.uniform(-w / 3, w / 3), rng.uniform(0.3, 1.3), d * rng.uniform(0.5, 0.9)])
    key = np.array([rng.uniform(-0.5, 0.5), 1.0, rng.uniform(-0.3, 0.5)])
    tone = rng.uniform(0.6, 1.0)
    return HeldoutScene(
        surfaces, eye, target, rng.uniform(42, 68), key / np.linalg.norm(key),
        np.array([1.0, 0.95, 0.85]) * rng.uniform(1.2, 2.0), np.full(3, tone), np.full(3, tone * 0.7), 0.0,
    )  # fmt: skip


def _yard(rng) -> HeldoutScene:
    ground = Surface(sd_ground(0.0), np.array([0.35, 0.4, 0.25]) * rng.uniform(0.7, 1.4), "marble", 0.5, 0.0)
    surfaces = [ground]
    for _ in range(rng.integers(4, 10)):
        x, z = rng.uniform(-10, 10), rng.uniform(3, 30)
        if rng.random() < 0.3:  # a column
            hh = rng.uniform(1.5, 4)
            surfaces.append(
                Surface(sd_upright_cylinder((x, hh, z), rng.uniform(0.2, 0.5), hh), _color(rng, 0.2), "marble")
            )
        elif rng.random() < 0.3:  # a house-like block
            half = (rng.uniform(1, 3), rng.uniform(1, 3), rng.uniform(1, 3))
            surfaces.append(Surface(sd_round_box((x, half[1], z), half, 0.05, rng.uniform(0, 1)), _color(rng), "tiles"))
        else:
            surfaces.append(_thing(rng, x, z, 0.0, rng.uniform(1.0, 2.5)))
    eye = np.array([rng.uniform(-2, 2), rng.uniform(1.2, 3.0), 0.0])
    target = np.array([rng.uniform(-3, 3), rng.uniform(0.0, 1.5), rng.uniform(8, 20)])
    key = np.array([rng.uniform(-1, 1), rng.uniform(0.4, 1.2), rng.uniform(-1, 1)])
    return HeldoutScene(
        surfaces, eye, target, rng.uniform(45, 75), key / np.linalg.norm(key),
        np.array([1.0, 0.9, 0.75]) * rng.uniform(1.5, 2.5), np.array([0.35, 0.55, 0.9]), np.array([0.8, 0.85, 0.9]),
        rng.uniform(0.0, 0.03),
    )  # fmt: skip


def _tabletop(rng) -> HeldoutScene:
    table = Surface(sd_ground(0.0), _color(rng, 0.4), "wood", 0.4, 0.2)
    surfaces = [table]
    if rng.random() < 0.7:
        surfaces.append(Surface(sd_round_box((0, 1.0, 2.5), (4, 1.2, 0.1), 0.0), _color(rng, 0.3), "none", 0.5))
    for _ in range(rng.integers(2, 6)):
        surfaces.append(_thing(rng, rng.uniform(-0.7, 0.7), rng.uniform(0.6, 2.0), 0.0, 0.35))
    eye = np.array([rng.uniform(-0.4, 0.4), rng.uniform(0.3, 0.9), rng.uniform(-0.8, -0.2)])
    target = np.array([rng.uniform(-0.3, 0.3), rng.uniform(0.0, 0.2), rng.uniform(1.0, 1.5)])
    key = np.array([rng.uniform(-1, 1), rng.uniform(0.6, 1.5), rng.uniform(-1, 0.3)])
    tone = rng.uniform(0.5, 0.9)
    return HeldoutScene(
        surfaces, eye, target, rng.uniform(38, 60), key / np.linalg.norm(key),
        np.array([1.0, 0.97, 0.9]) * rng.uniform(1.3, 2.2), np.full(3, tone), np.full(3, tone * 0.6), 0.0,
    )  # fmt: skip


BUILDERS = {"gallery": _gallery, "yard": _yard, "tabletop": _tabletop}


# ---------------------------------------------------------------------------------------------------
# tracing


def scene_distance(surfaces: list[Surface], p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.stack([s.sdf(p) for s in surfaces])
    which = d.argmin(0)
    return d[which, np.arange(len(p))], which


def trace(surfaces: list[Surface], origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sphere tracing of unit ``dirs`` from ``origin``: distance along each ray (inf = escaped), surface index."""
    n = len(dirs)
    t = np.zeros(n)
    active = np.arange(n)
    hit = np.zeros(n, bool)
    for _ in range(MAX_STEPS):
        if len(active) == 0:
            break
        d, _ = scene_distance(surfaces, origin + dirs[active] * t[active, None])
        close = d < HIT_EPS * np.maximum(1.0, t[active])
        hit[active[close]] = True
        t[active] += np.where(close, 0.0, d)
        active = active[~close & (t[active] < FAR)]
    t = np.where(hit, t, np.inf)
    idx = np.nonzero(hit)[0]
    if len(idx):  # refine: bisection on the sign change between t - 2 eps and t + 2 eps, then the nearest surface
        lo, hi = t[idx] - 4 * HIT_EPS * np.maximum(1, t[idx]), t[idx] + 4 * HIT_EPS * np.maximum(1, t[idx])
        for _ in range(20):
            mid = (lo + hi) / 2
            d, _ = scene_distance(surfaces, origin + dirs[idx] * mid[:, None])
            inside = d < 0
            hi, lo = np.where(inside, mid, hi), np.where(inside, lo, mid)
        t[idx] = (lo + hi) / 2
    which = np.full(n, -1)
    if len(idx):
        which[idx] = scene_distance(surfaces, origin + dirs[idx] * t[idx, None])[1]
    return t, which


def gradient_normals(surfaces: list[Surface], p: np.ndarray, eps: float = 1e-4) -> np.ndarray:
    """Unit outward normals: the tetrahedral finite-difference gradient of the distance field."""
    ks = np.array([[1, -1, -1], [-1, -1, 1], [-1, 1, -1], [1, 1, 1]], float)
    g = sum(k[None] * scene_distance(surfaces, p + eps * k)[0][:, None] for k in ks)
    return g / np.maximum(_length(g), 1e-12)[:, None]


def soft_shadow(surfaces, p, light_dir, k: float = 10.0) -> np.ndarray:
    res = np.ones(len(p))
    t = np.full(len(p), 0.02)
    for _ in range(40):
        d, _ = scene_distance(surfaces, p + light_dir * t[:, None])
        res = np.minimum(res, np.clip(k * d / t, 0, 1))
        t = t + np.clip(d, 0.02, 0.5)
    return np.clip(res, 0, 1) ** 1.5


def occlusion(surfaces, p, n) -> np.ndarray:
    occ, weight = np.zeros(len(p)), 1.0
    for i in range(5):
        h = 0.02 + 0.12 * i
        d, _ = scene_distance(surfaces, p + n * h)
        occ += (h - d) * weight
        weight *= 0.9
    return np.clip(1 - 2.5 * occ, 0.35, 1)


def _texture(s: Surface, p: np.ndarray) -> np.ndarray:
    if s.texture == "marble":
        v = np.sin(4 * p[:, 0] + 3 * np.sin(2.1 * p[:, 1]) + 2.5 * np.sin(1.7 * p[:, 2] + 1.3 * p[:, 0]))
        return s.color * (0.8 + 0.2 * v)[:, None]
    if s.texture == "wood":
        r = np.hypot(p[:, 0] + 0.3 * np.sin(p[:, 2]), p[:, 1] * 0.3) * 12
        return s.color * (0.75 + 0.25 * (r - np.floor(r)))[:, None]
    if s.texture == "tiles":
        u, v = p[:, 0] * 2, p[:, 2] * 2 + p[:, 1] * 2
        grout = (np.abs(u - np.round(u)) < 0.04) | (np.abs(v - np.round(v)) < 0.04)
        return np.where(grout[:, None], s.color * 0.4, s.color)
    return np.broadcast_to(s.color, p.shape)


def _shade(scene: HeldoutScene, eye, dirs, t, which) -> np.ndarray:
    up = dirs[:, 1:2]
    color = scene.sky_bottom + (scene.sky_top - scene.sky_bottom) * np.clip(up, 0, 1)
    idx = np.nonzero(which >= 0)[0]
    if len(idx) == 0:
        return color
    p = eye + dirs[idx] * t[idx, None]
    n = gradient_normals(scene.surfaces, p)
    v = -dirs[idx]
    lgt = scene.key_dir
    albedo, sigma, spec = np.zeros((len(idx), 3)), np.zeros(len(idx)), np.zeros(len(idx))
    for k in np.unique(which[idx]):
        sel = which[idx] == k
        s = scene.surfaces[k]
        albedo[sel] = _texture(s, p[sel])
        sigma[sel], spec[sel] = s.roughness, s.specular
    # Oren-Nayar diffuse
    nl, nv = np.clip(n @ lgt, 0, 1), np.clip(np.einsum("ij,ij->i", n, v), 0, 1)
    s2 = sigma**2
    a, b = 1 - 0.5 * s2 / (s2 + 0.33), 0.45 * s2 / (s2 + 0.09)
    lp = lgt - n * nl[:, None]
    vp = v - n * nv[:, None]
    cos_phi = np.clip(np.einsum("ij,ij->i", lp, vp) / np.maximum(_length(lp) * _length(vp), 1e-9), 0, 1)
    ti, tr = np.arccos(nl), np.arccos(nv)
    alpha, beta = np.maximum(ti, tr), np.minimum(ti, tr)
    diffuse = nl * (a + b * cos_phi * np.sin(alpha) * np.tan(np.minimum(beta, 1.5)))
    shadow = soft_shadow(scene.surfaces, p + n * 2e-3, lgt)
    refl = 2 * nl[:, None] * n - lgt
    fresnel = 0.04 + 0.96 * (1 - nv) ** 5
    phong = spec * (0.3 + fresnel) * np.clip(np.einsum("ij,ij->i", refl, v), 0, 1) ** 30
    ao = occlusion(scene.surfaces, p, n)
    sky_term = (0.5 + 0.5 * n[:, 1:2]) * scene.sky_top * 0.35 + scene.sky_bottom * 0.1
    lit = albedo * (scene.key_color * (diffuse * shadow)[:, None] + sky_term * ao[:, None])
    lit = lit + (phong * shadow)[:, None] * scene.key_color
    fog = 1 - np.exp(-scene.fog * t[idx])
    color[idx] = lit * (1 - fog[:, None]) + scene.sky_bottom * fog[:, None]
    return color


def _filmic(x: np.ndarray) -> np.ndarray:
    a, b, c, d, e = 2.51, 0.03, 2.43, 0.59, 0.14  # ACES fit (Narkowicz)
    return np.clip((x * (a * x + b)) / (x * (c * x + d) + e), 0, 1)


@dataclass
class HeldoutSample:
    rgb: Image.Image
    depth: np.ndarray  # [H, W] float32 metres, 0 = sky
    normals: np.ndarray  # [H, W, 3] float32, OpenCV camera space, facing the camera, 0 on sky
    focal: float  # pixels (square pixels; principal point at the image centre)
    kind: str


def _camera(scene: HeldoutScene) -> np.ndarray:
    """World-from-camera rotation, columns: the OpenCV camera's x (right), y (down), z (forward) in the world."""
    forward = scene.target - scene.eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 1.0, 0.0])
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    return np.stack([right, down, forward], 1)


def _pixel_dirs(width, height, focal, rot, sub: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit world directions through a ``sub`` x ``sub`` grid inside every pixel, and their camera z."""
    offsets = (np.arange(sub) + 0.5) / sub
    ys = (np.arange(height)[:, None] + offsets[None]).reshape(-1)
    xs = (np.arange(width)[:, None] + offsets[None]).reshape(-1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    cam = np.stack([(xx - width / 2) / focal, (yy - height / 2) / focal, np.ones_like(xx)], -1).reshape(-1, 3)
    unit = cam / _length(cam)[:, None]
    return unit @ rot.T, unit[:, 2]


def render_heldout(seed: int, width: int, height: int, kind: str | None = None, supersample: int = 2) -> HeldoutSample:
    """Held-out scene ``seed`` (a pure function of it and the size)."""
    rng = np.random.default_rng([seed, 4242])
    kind = kind or HELDOUT_KINDS[seed % len(HELDOUT_KINDS)]
    scene = BUILDERS[kind](rng)
    rot = _camera(scene)
    focal = height / 2 / np.tan(np.radians(scene.fov_y) / 2)
    dirs, _ = _pixel_dirs(width, height, focal, rot, supersample)
    t, which = trace(scene.surfaces, scene.eye, dirs)
    color = _shade(scene, scene.eye, dirs, t, which)
    color = color.reshape(height, supersample, width, supersample, 3).mean((1, 3))
    rgb = (_filmic(color * rng.uniform(0.8, 1.3)) ** (1 / 2.2) * 255 + 0.5).astype(np.uint8)
    dirs, cam_z = _pixel_dirs(width, height, focal, rot, 1)
    t, which = trace(scene.surfaces, scene.eye, dirs)
    hit = which >= 0
    depth = np.where(hit, t * cam_z, 0.0)
    normals = np.zeros((len(dirs), 3))
    if hit.any():
        n = gradient_normals(scene.surfaces, scene.eye + dirs[hit] * t[hit, None])
        n = np.where((np.einsum("ij,ij->i", n, dirs[hit]) > 0)[:, None], -n, n)
        normals[hit] = n @ rot  # world -> camera
    return HeldoutSample(
        Image.fromarray(rgb),
        depth.reshape(height, width).astype(np.float32),
        normals.reshape(height, width, 3).astype(np.float32),
        float(focal),
        kind,
    )


def write_heldout_set(out: str | Path, count: int, width: int, height: int, first_seed: int = FIRST_SEED) -> list[str]:
    """Scenes ``first_seed ..`` in the generic evaluation layout (rgb/*.png, depth/*.npy, normals/*.npy)."""
    out = Path(out)
    for sub in ("rgb", "depth", "normals"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for seed in range(first_seed, first_seed + count):
        s = render_heldout(seed, width, height)
        name = f"heldout_{seed:04d}_{s.kind}"
        s.rgb.save(out / "rgb" / f"{name}.png")
        np.save(out / "depth" / f"{name}.npy", s.depth)
        np.save(out / "normals" / f"{name}.npy", s.normals)
        names.append(name)
    meta = {"renderer": "heldout_renderer", "first_seed": first_seed, "count": count, "resolution": [width, height]}
    (out / "scenes.json").write_text(json.dumps(meta) + "\n")
    return names


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write held-out scenes of the second renderer (evaluation only).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--resolution", default="128x96", help="WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.resolution.lower().split("x"))
    if (args.out / "rgb").exists():
        parser.error(f"{args.out}: already holds a scene set")
    for name in write_heldout_set(args.out, args.count, width, height, args.first_seed):
        print(name)


if __name__ == "__main__":
    main()
