"""Domain-randomised training scenes with exact depth and normals (the demo model's generator since issue 24).

A vectorised ray caster of its own (rays with any origin, so surfaces cast shadows) over many primitive
kinds: infinite planes, oriented boxes, capped cylinders, cones and frusta, tori (sphere-traced inside
their bounding sphere, then Newton-polished on the quartic, so the hit is exact), and spheres. Scene
builders combine them into rooms and room corners with furniture (tables on thin legs, shelves,
stairs, stacked boxes, lamps, framed pictures), still lifes of stacked and intersecting objects,
close-ups, and outdoor scenes (ground and sky, buildings, trees, poles, fences, stairs, sculptures).

Appearance is randomised on top: solid textures (checkers, stripes, value noise, photo-like fBm colour
noise, text-like glyph rows), matte or glossy materials (Blinn-Phong highlights), several coloured
point lights and a sun with shadow rays, hemispherical ambient light darkened by a screen-space
ambient-occlusion approximation, exposure, gamma, vignetting, blur, sensor noise and JPEG artefacts.
The camera (OpenCV axes: x right, y down, z forward, at the origin) has a horizontal field of view of
35-90 deg, roll, pitch, yaw and a random height above the floor, and a random pixel aspect (an image
of another aspect ratio resized to the output size, as ``infer`` does to photos), so the output keeps
its size while its aspect varies.

Depth (z of the hit) and camera-space normals (unit, facing the camera) are exact at each pixel centre
(a separate cast through the centres); 0 where a ray hits nothing (sky).

:func:`randomised_sample` is the entry point; :func:`fe2e_deploy.scenes.random_sample` (the generator
the first demo model was trained on) is unchanged.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from .scenes import SceneSample

KINDS = ("room", "corner", "still_life", "closeup", "outdoor")
KIND_WEIGHTS = (0.3, 0.15, 0.2, 0.1, 0.25)
PATTERNS = ("plain", "checker", "stripes", "noise", "photo", "text")
SUPERSAMPLE = 2
EPS = 1e-6
HitFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]  # (origins, dirs) -> t [N], normal [N, 3]


# ---------------------------------------------------------------------------------------------------
# primitives: (origins [N or 1, 3], directions [N, 3]) -> (t [N] in units of the direction, inf = miss,
# outward normal [N, 3]); only hits with t > EPS count


def plane(point, normal) -> HitFn:
    p0 = np.asarray(point, float)
    n = np.asarray(normal, float) / np.linalg.norm(normal)

    def hit(o, d):
        denom = d @ n
        with np.errstate(divide="ignore", invalid="ignore"):
            t = ((p0 - o) @ n) / denom
        t = np.where(np.isfinite(t) & (t > EPS), t, np.inf)
        return t, np.broadcast_to(n, d.shape)

    return hit


def sphere(center, radius: float) -> HitFn:
    c = np.asarray(center, float)

    def hit(o, d):
        oc = o - c
        a, b = np.sum(d * d, -1), np.sum(oc * d, -1)
        cc = np.sum(oc * oc, -1) - radius**2
        disc = b * b - a * cc
        root = np.sqrt(np.maximum(disc, 0))
        t1, t2 = (-b - root) / a, (-b + root) / a
        t = np.where(t1 > EPS, t1, np.where(t2 > EPS, t2, np.inf))
        t = np.where(disc > 0, t, np.inf)
        p = o + d * np.where(np.isfinite(t), t, 0)[:, None]
        return t, (p - c) / radius

    return _bounded(hit, c, radius)


def _bounded(hit: HitFn, center: np.ndarray, radius: float) -> HitFn:
    """Attach a bounding sphere to a hit function (:func:`cast` tests only the rays that enter it)."""
    hit.bound = (np.asarray(center, float), radius * (1 + 1e-6) + 1e-9)
    return hit


class Rays:
    """Origins ([1, 3]: one for all, or [N, 3]) and directions [N, 3], with what culling needs precomputed."""

    def __init__(self, o: np.ndarray, d: np.ndarray):
        self.o, self.d = o, d
        self.a = np.einsum("ij,ij->i", d, d)
        self.do = d @ o[0] if len(o) == 1 else np.einsum("ij,ij->i", d, o)
        self.oo = np.einsum("ij,ij->i", o, o)

    def candidates(self, hit: HitFn) -> np.ndarray | None:
        """Indices of the rays that enter ``hit``'s bounding sphere ahead of their origin (None: all rays)."""
        bound = getattr(hit, "bound", None)
        if bound is None:
            return None
        center, radius = bound
        b = self.d @ center - self.do  # d . (c - o)
        c2 = self.oo - 2 * (self.o @ center) + center @ center - radius**2  # |c - o|^2 - r^2
        return np.nonzero((c2 <= 0) | ((b > 0) & (b * b > self.a * c2)))[0]


def hit_culled(hit: HitFn, rays: Rays) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``hit`` on the rays inside its bounding sphere: (t, normals, indices of those rays or None = all)."""
    o, d = rays.o, rays.d
    idx = rays.candidates(hit)
    if idx is None:
        t, n = hit(o, d)
        return t, n, None
    if len(idx) == 0:
        return np.zeros(0), np.zeros((0, 3)), idx
    t, n = hit(o if len(o) == 1 else o[idx], d[idx])
    return t, n, idx


def _local(o, d, center, rotation):
    """Ray origins and directions in an object's frame (``rotation``'s columns: its axes in the world)."""
    return (o - center) @ rotation, d @ rotation


def box(center, half, rotation=None) -> HitFn:
    """An oriented box: half sizes ``half`` along the columns of ``rotation`` (identity: axis-aligned)."""
    c, h = np.asarray(center, float), np.asarray(half, float)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, float)

    def hit(o, d):
        lo, ld = _local(o, d, c, rot)
        safe = np.where(np.abs(ld) > 1e-12, ld, 1e-12)
        t0, t1 = (-h - lo) / safe, (h - lo) / safe
        near, far = np.minimum(t0, t1), np.maximum(t0, t1)
        t_in = np.maximum(np.maximum(near[:, 0], near[:, 1]), near[:, 2])
        t_out = np.minimum(np.minimum(far[:, 0], far[:, 1]), far[:, 2])
        t = np.where((t_out >= t_in) & (t_in > EPS), t_in, np.inf)
        axis = near.argmax(-1)
        n_local = np.zeros_like(ld)
        rows = np.arange(len(ld))
        n_local[rows, axis] = -np.sign(safe[rows, axis])
        return t, n_local @ rot.T

    return _bounded(hit, c, float(np.linalg.norm(h)))


def _caps(lo, ld, half_height, radii):
    """Hits of the two discs y = -h (radius radii[0]) and y = +h (radii[1]) of a y-axis solid, local frame."""
    best = np.full(len(ld), np.inf)
    normal_y = np.zeros(len(ld))
    safe = np.where(np.abs(ld[:, 1]) > 1e-12, ld[:, 1], 1e-12)
    for y, radius, ny in ((-half_height, radii[0], -1.0), (half_height, radii[1], 1.0)):
        if radius <= 0:
            continue
        t = (y - lo[:, 1]) / safe
        p = lo + ld * t[:, None]
        ok = (t > EPS) & (p[:, 0] ** 2 + p[:, 2] ** 2 <= radius**2) & (t < best)
        best = np.where(ok, t, best)
        normal_y = np.where(ok, ny, normal_y)
    return best, normal_y


def cone(center, half_height: float, radius_bottom: float, radius_top: float, rotation=None) -> HitFn:
    """A capped frustum along the local y axis: radius ``radius_bottom`` at y = -h, ``radius_top`` at +h
    (equal radii: a cylinder; one of them 0: a cone). Local y points down in the OpenCV world when
    ``rotation`` is the identity, so ``radius_bottom`` is the radius at the top of the object there."""
    c = np.asarray(center, float)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, float)
    rm, k = (radius_bottom + radius_top) / 2, (radius_top - radius_bottom) / (2 * half_height)

    def hit(o, d):
        lo, ld = _local(o, d, c, rot)
        r_o = rm + k * lo[:, 1]
        a = ld[:, 0] ** 2 + ld[:, 2] ** 2 - (k * ld[:, 1]) ** 2
        b = lo[:, 0] * ld[:, 0] + lo[:, 2] * ld[:, 2] - k * ld[:, 1] * r_o
        cc = lo[:, 0] ** 2 + lo[:, 2] ** 2 - r_o**2
        disc = b * b - a * cc
        root = np.sqrt(np.maximum(disc, 0))
        safe_a = np.where(np.abs(a) > 1e-12, a, 1e-12)
        side = np.full(len(ld), np.inf)
        for t in sorted_pair((-b - root) / safe_a, (-b + root) / safe_a)[::-1]:  # the nearer root wins
            y = lo[:, 1] + t * ld[:, 1]
            ok = (disc >= 0) & (np.abs(a) > 1e-12) & (t > EPS) & (np.abs(y) <= half_height) & (rm + k * y >= 0)
            side = np.where(ok, t, side)
        cap_t, cap_ny = _caps(lo, ld, half_height, (radius_bottom, radius_top))
        use_cap = cap_t < side
        t = np.where(use_cap, cap_t, side)
        p = lo + ld * np.where(np.isfinite(t), t, 0)[:, None]
        n_side = np.stack([p[:, 0], -k * (rm + k * p[:, 1]), p[:, 2]], -1)
        n_side = n_side / np.maximum(np.linalg.norm(n_side, axis=-1, keepdims=True), 1e-12)
        n_cap = np.stack([np.zeros(len(ld)), cap_ny, np.zeros(len(ld))], -1)
        return t, np.where(use_cap[:, None], n_cap, n_side) @ rot.T

    return _bounded(hit, c, float(np.hypot(half_height, max(radius_bottom, radius_top))))


def sorted_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.minimum(a, b), np.maximum(a, b)


def cylinder(center, half_height: float, radius: float, rotation=None) -> HitFn:
    return cone(center, half_height, radius, radius, rotation)


def torus(center, major: float, minor: float, rotation=None, iterations: int = 80) -> HitFn:
    """A torus around the local y axis (ring radius ``major``, tube radius ``minor``).

    Rays that enter its bounding sphere are sphere-traced on its exact distance function to 1e-5, then
    three Newton steps on the quartic ``(|p|^2 + R^2 - r^2)^2 - 4 R^2 (x^2 + z^2)`` make the hit exact."""
    c = np.asarray(center, float)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, float)
    bound = major + minor
    big, small = major**2, minor**2

    def quartic(p, ld):
        s = np.sum(p * p, -1) + big - small
        g = s * s - 4 * big * (p[:, 0] ** 2 + p[:, 2] ** 2)
        dg = 4 * s * np.sum(p * ld, -1) - 8 * big * (p[:, 0] * ld[:, 0] + p[:, 2] * ld[:, 2])
        return g, dg

    def hit(o, d):
        lo, ld = _local(o, d, c, rot)
        lo = np.broadcast_to(lo, ld.shape)
        t_out = np.full(len(ld), np.inf)
        normals = np.zeros_like(ld)
        a, b = np.sum(ld * ld, -1), np.sum(lo * ld, -1)
        disc = b * b - a * (np.sum(lo * lo, -1) - bound**2)
        idx = np.nonzero(disc > 0)[0]
        if len(idx) == 0:
            return t_out, normals
        root = np.sqrt(disc[idx])
        t = np.maximum((-b[idx] - root) / a[idx], EPS * 10)
        t_far = (-b[idx] + root) / a[idx]
        speed = np.sqrt(a[idx])
        po, pd = lo[idx], ld[idx]
        done = np.zeros(len(idx), bool)
        alive = t_far > EPS
        for _ in range(iterations):
            p = po + pd * t[:, None]
            q = np.sqrt(p[:, 0] ** 2 + p[:, 2] ** 2) - major
            dist = np.sqrt(q * q + p[:, 1] ** 2) - minor
            done |= alive & (dist < 1e-5)
            step = alive & ~done
            t = np.where(step, t + dist / speed, t)
            alive &= t < t_far
            if not step.any():
                break
        for _ in range(3):
            g, dg = quartic(po + pd * t[:, None], pd)
            t = np.where(done, t - g / np.where(np.abs(dg) > 1e-12, dg, 1e-12), t)
        ok = done & (t > EPS)
        p = po + pd * t[:, None]
        s = np.sum(p * p, -1) + big - small
        grad = 4 * s[:, None] * p - 8 * big * p * np.array([1.0, 0.0, 1.0])
        grad = grad / np.maximum(np.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)
        t_out[idx] = np.where(ok, t, np.inf)
        normals[idx] = grad
        return t_out, normals @ rot.T

    return _bounded(hit, c, bound)


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """R_y(yaw) @ R_x(pitch) @ R_z(roll)."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


# ---------------------------------------------------------------------------------------------------
# materials and textures


@dataclass
class Material:
    albedo: np.ndarray
    second: np.ndarray  # the pattern's other colour
    pattern: str = "plain"
    period: float = 0.5
    gloss: float = 0.0  # specular strength (0: matte)
    shininess: float = 20.0


@dataclass
class Obj:
    hit: HitFn
    material: Material
    casts_shadow: bool = True


@dataclass
class Scene:
    objects: list[Obj]
    lights: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (position, colour)
    sun: tuple[np.ndarray, np.ndarray] | None = None  # (direction it shines along, colour)
    sky: tuple[np.ndarray, np.ndarray] = (np.array([0.55, 0.7, 0.95]), np.array([0.85, 0.9, 1.0]))  # zenith, horizon
    ambient: np.ndarray = field(default_factory=lambda: np.full(3, 0.25))


def _hash(i, j, k):
    x = np.sin(i * 12.9898 + j * 78.233 + k * 37.719) * 43758.5453
    return x - np.floor(x)


def value_noise(p: np.ndarray) -> np.ndarray:
    """Smooth 3D value noise in [0, 1] (hashed lattice, trilinear with smoothstep)."""
    cell = np.floor(p)
    f = p - cell
    f = f * f * (3 - 2 * f)
    i, j, k = cell[:, 0], cell[:, 1], cell[:, 2]
    out = np.zeros(len(p))
    for di in (0, 1):
        wx = f[:, 0] if di else 1 - f[:, 0]
        for dj in (0, 1):
            wy = f[:, 1] if dj else 1 - f[:, 1]
            for dk in (0, 1):
                wz = f[:, 2] if dk else 1 - f[:, 2]
                out += wx * wy * wz * _hash(i + di, j + dj, k + dk)
    return out


def fbm(p: np.ndarray, octaves: int = 4) -> np.ndarray:
    total, amp, norm = np.zeros(len(p)), 0.5, 0.0
    for _ in range(octaves):
        total += amp * value_noise(p)
        norm += amp
        p = p * 2.03 + 17.1
        amp *= 0.5
    return total / norm


def _plane_coords(points: np.ndarray, normals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2D coordinates on the plane most facing each normal (tri-planar choice)."""
    axis = np.abs(normals).argmax(-1)
    u = np.where(axis == 0, points[:, 2], points[:, 0])
    v = np.where(axis == 1, points[:, 2], points[:, 1])
    return u, v


def _text(u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Rows of glyph-like marks: 1 where ink, 0 on the page (3x5 random stroke cells per glyph)."""
    gu, gv = u / (0.12 * period), v / (0.2 * period)
    col, row = np.floor(gu), np.floor(gv)
    line = (row % 3) != 2  # two text lines, one blank
    word = _hash(np.floor(col / 6), row, 3.0) > 0.15  # gaps between words
    fu, fv = gu - col, gv - row
    sub_u, sub_v = np.floor(fu * 4), np.floor(fv * 6)
    inside = (sub_u < 3) & (sub_v < 5)
    stroke = _hash(col * 7 + sub_u, row * 11 + sub_v, 1.0) > 0.5
    return (line & word & inside & stroke).astype(float)


def _pattern(points: np.ndarray, normals: np.ndarray, material: Material) -> np.ndarray:
    """Mix factor in [0, 1] between the material's albedo (0) and its second colour (1)."""
    p = points / material.period
    name = material.pattern
    if name == "checker":
        return np.floor(p + 1e-4).sum(-1) % 2
    if name == "stripes":
        return 0.5 + 0.5 * np.sign(np.sin(2 * np.pi * (p[:, 0] + 0.6 * p[:, 1] + 0.3 * p[:, 2])))
    if name == "noise":
        return value_noise(p * 2)
    if name == "photo":
        return np.clip(1.6 * (fbm(p * 3, 4) - 0.5) + 0.5, 0, 1)
    if name == "text":
        u, v = _plane_coords(points, normals)
        return _text(u, v, material.period)
    return np.zeros(len(points))


# ---------------------------------------------------------------------------------------------------
# casting and shading


def cast(objects: list[Obj], origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit of every ray: t (inf = miss), normal facing the ray (unit), object index (-1 = miss)."""
    t = np.full(len(dirs), np.inf)
    normals = np.zeros((len(dirs), 3))
    nearest = np.zeros(len(dirs), int)
    rays = Rays(origins, dirs)
    for k, obj in enumerate(objects):
        t_k, n_k, idx = hit_culled(obj.hit, rays)
        if idx is None:
            better = t_k < t
            t, nearest = np.where(better, t_k, t), np.where(better, k, nearest)
            normals = np.where(better[:, None], n_k, normals)
        else:
            better = t_k < t[idx]
            rows = idx[better]
            t[rows], normals[rows], nearest[rows] = t_k[better], n_k[better], k
    normals = normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)
    normals = normals * -np.sign(np.sum(normals * dirs, -1, keepdims=True) + 1e-12)
    hit = np.isfinite(t)
    return t, np.where(hit[:, None], normals, 0.0), np.where(hit, nearest, -1)


def _occluded(objects: list[Obj], points: np.ndarray, dirs: np.ndarray, t_max: float) -> np.ndarray:
    blocked = np.zeros(len(points), bool)
    rays = Rays(points, dirs)
    for obj in objects:
        if obj.casts_shadow and len(points):
            t, _, idx = hit_culled(obj.hit, rays)
            if idx is None:
                blocked |= t < t_max
            else:
                blocked[idx[t < t_max]] = True
    return blocked


def _box_blur(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window (edges clamped), [H, W]."""
    pad = np.pad(x, radius + 1, mode="edge")
    c = pad.cumsum(0).cumsum(1)
    k = 2 * radius + 1
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return s[: x.shape[0], : x.shape[1]] / k**2


def ambient_occlusion(depth: np.ndarray, strength: float) -> np.ndarray:
    """Screen-space ambient occlusion approximation: pixels deeper than their neighbourhood (creases,
    contacts, corners) get less ambient light. ``depth`` [H, W] (inf = sky)."""
    d = np.where(np.isfinite(depth), depth, np.nan)
    fill = np.nanmax(d) if np.isfinite(d).any() else 1.0
    d = np.where(np.isfinite(d), d, fill)
    radius = max(2, depth.shape[1] // 40)
    occ = np.zeros_like(d)
    for r in (radius, 2 * radius):
        occ += np.clip((d - _box_blur(d, r)) / d, 0, 0.15) / 0.15
    return 1 - strength * np.clip(occ / 2, 0, 1)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", a, b)


def _shade(scene: Scene, dirs, t, normals, index, ao) -> np.ndarray:
    """Linear RGB of every ray: sky where it misses; else textured albedo under ambient (times the
    occlusion ``ao``), point lights and the sun (Lambert, shadow rays, Blinn-Phong highlights)."""
    hit = index >= 0
    color = np.empty((len(dirs), 3))
    unit = dirs / np.sqrt(_dot(dirs, dirs))[:, None]
    miss = np.nonzero(~hit)[0]
    if len(miss):
        up = -unit[miss, 1]  # y points down: up > 0 looks at the sky above the horizon
        zenith, horizon = scene.sky
        sky = horizon + (zenith - horizon) * np.sqrt(np.clip(up, 0, 1))[:, None]
        sky = np.where(up[:, None] < 0, horizon * 0.8, sky)
        if scene.sun is not None:
            glow = np.clip(unit[miss] @ -scene.sun[0], 0, 1)
            for _ in range(6):
                glow = glow * glow  # ** 64
            sky = sky + glow[:, None] * scene.sun[1]
        color[miss] = sky
    p_idx = np.nonzero(hit)[0]
    if len(p_idx) == 0:
        return color
    pts = dirs[p_idx] * t[p_idx, None]
    n = normals[p_idx]
    view = -unit[p_idx]
    albedo = np.zeros((len(p_idx), 3))
    gloss = np.zeros(len(p_idx))
    shininess = np.ones(len(p_idx))
    owner = index[p_idx]
    for k in np.unique(owner):
        sel = np.nonzero(owner == k)[0]
        m = scene.objects[k].material
        if m.pattern == "plain":
            albedo[sel] = m.albedo
        else:
            mix = _pattern(pts[sel], n[sel], m)[:, None]
            albedo[sel] = m.albedo * (1 - mix) + m.second * mix
        gloss[sel], shininess[sel] = m.gloss, m.shininess
    sky_light = 0.6 - 0.4 * n[:, 1]  # hemispherical: more from above
    light = scene.ambient * (sky_light * ao[p_idx])[:, None]
    origin = pts + n * (1e-4 * np.maximum(t[p_idx], 1))[:, None]
    sources = [(pos - origin, col, True) for pos, col in scene.lights]
    if scene.sun is not None:
        sources.append((np.broadcast_to(-scene.sun[0], pts.shape), scene.sun[1], False))
    shiny = np.nonzero(gloss > 0)[0]
    spec = np.zeros((len(shiny), 3))
    for to_light, col, is_point in sources:
        dist = np.sqrt(_dot(to_light, to_light))
        l_dir = to_light / dist[:, None]
        lambert = np.clip(_dot(n, l_dir), 0, 1)
        lit = np.nonzero(lambert > 0)[0]
        visible = np.zeros(len(pts))
        visible[lit] = ~_occluded(scene.objects, origin[lit], to_light[lit], 1.0 if is_point else np.inf)
        gain = lambert * visible
        if is_point:
            gain = gain / (1 + (dist / 3.5) ** 2)
        light += gain[:, None] * col
        if len(shiny):
            half = l_dir[shiny] + view[shiny]
            half = half / np.maximum(np.sqrt(_dot(half, half)), 1e-12)[:, None]
            cos = np.clip(_dot(n[shiny], half), 0, 1)
            falloff = gain[shiny] / np.maximum(lambert[shiny], 1e-12)  # visibility / distance falloff
            spec += (cos ** shininess[shiny] * gloss[shiny] * falloff)[:, None] * col
    color[p_idx] = albedo * light
    color[p_idx[shiny]] += spec
    return color


# ---------------------------------------------------------------------------------------------------
# scene builders: camera at the origin looking along +z (before its rotation); y down, so the floor
# is the plane y = +height


def _rgb(rng, low=0.15, high=0.9) -> np.ndarray:
    return rng.uniform(low, high, 3)


def _material(rng, pattern: str | None = None, gloss: bool | None = None) -> Material:
    albedo = _rgb(rng)
    if rng.random() < 0.3:  # a muted colour: greys and browns are common
        albedo = np.full(3, rng.uniform(0.15, 0.9)) * rng.uniform(0.85, 1.15, 3)
    pattern = pattern or str(rng.choice(PATTERNS, p=(0.35, 0.12, 0.12, 0.15, 0.18, 0.08)))
    second = albedo * rng.uniform(0.3, 0.8) if rng.random() < 0.6 else _rgb(rng, 0.05, 0.95)
    if pattern == "text":
        albedo, second = np.full(3, rng.uniform(0.75, 0.95)), np.full(3, rng.uniform(0.02, 0.2))
    shiny = rng.random() < 0.35 if gloss is None else gloss
    return Material(
        albedo=np.clip(albedo, 0.02, 0.95),
        second=np.clip(second, 0.02, 0.95),
        pattern=pattern,
        period=float(rng.uniform(0.08, 0.6)),
        gloss=float(rng.uniform(0.2, 0.9)) if shiny else 0.0,
        shininess=float(rng.uniform(8, 120)),
    )


def _yaw(rng, spread: float = np.pi) -> np.ndarray:
    return rotation(yaw=float(rng.uniform(-spread, spread)))


def _object(rng, x: float, floor: float, z: float, scale: float) -> list[Obj]:
    """One random object standing on the floor plane y = ``floor`` (or a stack or an intersecting pair)."""
    kind = rng.choice(("box", "cylinder", "cone", "sphere", "torus", "stack", "pair", "table", "lamp"))
    m = _material(rng)
    s = scale * rng.uniform(0.5, 1.4)
    if kind == "box":
        half = s * rng.uniform(0.2, 0.6, 3)
        return [Obj(box((x, floor - half[1], z), half, _yaw(rng)), m)]
    if kind == "cylinder":
        r, h = s * rng.uniform(0.1, 0.4), s * rng.uniform(0.15, 0.7)
        if rng.random() < 0.3:  # lying on its side
            rot = rotation(yaw=float(rng.uniform(-np.pi, np.pi)), pitch=np.pi / 2)
            return [Obj(cylinder((x, floor - r, z), h, r, rot), m)]
        return [Obj(cylinder((x, floor - h, z), h, r), m)]
    if kind == "cone":
        r, h = s * rng.uniform(0.15, 0.45), s * rng.uniform(0.2, 0.6)
        top = r * rng.uniform(0.0, 0.7) if rng.random() < 0.6 else 0.0
        return [Obj(cone((x, floor - h, z), h, top, r), m)]  # local -y is up: narrow end on top
    if kind == "sphere":
        r = s * rng.uniform(0.12, 0.45)
        return [Obj(sphere((x, floor - r, z), r), m)]
    if kind == "torus":
        major = s * rng.uniform(0.2, 0.45)
        minor = major * rng.uniform(0.15, 0.45)
        if rng.random() < 0.5:  # lying flat
            return [Obj(torus((x, floor - minor, z), major, minor, _yaw(rng)), m)]
        rot = rotation(yaw=float(rng.uniform(-np.pi, np.pi)), pitch=np.pi / 2)
        return [Obj(torus((x, floor - major - minor, z), major, minor, rot), m)]
    if kind == "stack":  # boxes stacked, each turned a little
        out, y = [], floor
        for _ in range(rng.integers(2, 4)):
            half = s * rng.uniform(0.15, 0.4, 3)
            out.append(Obj(box((x, y - half[1], z), half, _yaw(rng, 0.6)), _material(rng)))
            y -= 2 * half[1]
        if rng.random() < 0.5:
            r = s * rng.uniform(0.08, 0.2)
            out.append(Obj(sphere((x, y - r, z), r), _material(rng)))
        return out
    if kind == "pair":  # intersecting solids
        r = s * rng.uniform(0.2, 0.4)
        half = s * rng.uniform(0.15, 0.35, 3)
        return [
            Obj(sphere((x, floor - r, z), r), m),
            Obj(box((x + r * 0.6, floor - half[1], z - r * 0.3), half, _yaw(rng)), _material(rng)),
        ]
    if kind == "table":  # a top on four thin legs, something on it
        hw, hd, height = s * rng.uniform(0.4, 0.9), s * rng.uniform(0.3, 0.6), s * rng.uniform(0.5, 0.9)
        thick, leg = 0.03 + 0.03 * rng.random(), 0.015 + 0.03 * rng.random()
        rot = _yaw(rng, 0.8)
        center = np.array([x, floor - height + thick, z])
        out = [Obj(box(center, (hw, thick, hd), rot), m)]
        round_legs = rng.random() < 0.5
        for sx in (-1, 1):
            for sz in (-1, 1):
                foot = center + rot @ np.array([sx * (hw - 2 * leg), 0, sz * (hd - 2 * leg)])
                mid = foot + np.array([0, (height - thick) / 2, 0])
                if round_legs:
                    out.append(Obj(cylinder(mid, (height - thick) / 2, leg), m))
                else:
                    out.append(Obj(box(mid, (leg, (height - thick) / 2, leg), rot), m))
        top = center[1] - thick
        out += _object(rng, x + rng.uniform(-0.3, 0.3) * hw, top, z + rng.uniform(-0.3, 0.3) * hd, scale * 0.4)
        return out
    # a lamp: a thin pole with a cone shade
    height = s * rng.uniform(0.8, 1.6)
    pole = 0.01 + 0.02 * rng.random()
    shade = s * rng.uniform(0.12, 0.25)
    return [
        Obj(cylinder((x, floor - height / 2, z), height / 2, pole), m),
        Obj(cone((x, floor - height - shade * 0.5, z), shade * 0.6, shade * 0.5, shade), _material(rng)),
    ]


def _stairs(rng, x: float, floor: float, z: float, along_x: bool) -> list[Obj]:
    steps, rise, run = int(rng.integers(3, 9)), rng.uniform(0.12, 0.22), rng.uniform(0.22, 0.35)
    width = rng.uniform(0.6, 1.6)
    m = _material(rng)
    out = []
    for i in range(steps):
        height = rise * (i + 1)
        if along_x:
            center, half = (x + run * (i + 0.5), floor - height / 2, z), (run / 2, height / 2, width / 2)
        else:
            center, half = (x, floor - height / 2, z + run * (i + 0.5)), (width / 2, height / 2, run / 2)
        out.append(Obj(box(center, half), m))
    return out


def _room(rng, corner: bool) -> tuple[Scene, dict]:
    height = rng.uniform(0.9, 1.9)  # camera height above the floor
    ceiling = height - rng.uniform(2.3, 3.4)
    half_w = rng.uniform(1.5, 3.5)
    depth = rng.uniform(2.0, 4.5) if corner else rng.uniform(3.5, 9.0)  # corners: a near back wall, turned
    back = -rng.uniform(0.5, 2.0)
    objects = [
        Obj(plane((0, height, 0), (0, -1, 0)), _material(rng, gloss=rng.random() < 0.3), False),
        Obj(plane((0, ceiling, 0), (0, 1, 0)), _material(rng, "plain", False), False),
        Obj(plane((0, 0, depth), (0, 0, -1)), _material(rng), False),
        Obj(plane((-half_w, 0, 0), (1, 0, 0)), _material(rng), False),
        Obj(plane((half_w, 0, 0), (-1, 0, 0)), _material(rng), False),
        Obj(plane((0, 0, back), (0, 0, 1)), _material(rng), False),
    ]
    for _ in range(rng.integers(2, 7)):
        x, z = rng.uniform(-half_w + 0.4, half_w - 0.4), rng.uniform(0.8, depth - 0.4)
        objects += _object(rng, x, height, z, 0.9)
    if rng.random() < 0.35:
        objects += _stairs(rng, -half_w, height, rng.uniform(0.8, max(1.0, depth - 1.5)), True)
    if rng.random() < 0.5:  # shelves: thin boards on a wall
        x = half_w - 0.16
        m = _material(rng)
        zc = rng.uniform(0.8, max(1.0, depth - 1))
        for k in range(rng.integers(2, 5)):
            objects.append(Obj(box((x, height - 0.4 - 0.45 * k, zc), (0.15, 0.012, rng.uniform(0.3, 0.8))), m))
    if rng.random() < 0.5:  # a framed picture or a poster on the back wall
        cx, cy = rng.uniform(-half_w + 0.8, half_w - 0.8), ceiling + rng.uniform(0.6, 1.2)
        hw, hh = rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.5)
        objects.append(
            Obj(box((cx, cy, depth - 0.02), (hw, hh, 0.02)), _material(rng, str(rng.choice(("photo", "text")))))
        )
    lights = []
    for _ in range(rng.integers(1, 4)):
        pos = np.array([rng.uniform(-half_w + 0.3, half_w - 0.3), ceiling + 0.3, rng.uniform(0.5, depth - 0.5)])
        lights.append((pos, _light_colour(rng) * rng.uniform(0.5, 1.3)))
    sun = None
    if rng.random() < 0.3:  # daylight (through a window that is not modelled)
        sun = (_unit(rng.uniform(-1, 1), 1.0, rng.uniform(-0.5, 1.0)), _light_colour(rng) * rng.uniform(0.3, 0.8))
    yaw = rng.uniform(-1.0, 1.0) if corner else rng.uniform(-0.4, 0.4)
    camera = {"pitch": rng.uniform(-0.35, 0.25), "yaw": yaw}
    return Scene(objects, lights, sun, _indoor_sky(rng), _ambient(rng, 0.1, 0.35)), camera


def _still_life(rng, closeup: bool) -> tuple[Scene, dict]:
    height = rng.uniform(0.3, 1.0) if not closeup else rng.uniform(0.2, 0.6)
    spread = 1.0 if not closeup else 0.35
    near = 1.0 if not closeup else 0.35
    objects = [Obj(plane((0, height, 0), (rng.uniform(-0.05, 0.05), -1, rng.uniform(-0.05, 0.05))), _material(rng))]
    if rng.random() < 0.8:
        wall_z = near + rng.uniform(1.0, 3.5) * (1 if not closeup else 0.5)
        objects.append(Obj(plane((0, 0, wall_z), (rng.uniform(-0.4, 0.4), 0, -1)), _material(rng), False))
    else:
        wall_z = near + 3.0
    count = rng.integers(3, 8) if not closeup else rng.integers(1, 4)
    for _ in range(count):
        x = rng.uniform(-spread, spread)
        z = rng.uniform(near + 0.2 * spread, max(near + 0.4 * spread, wall_z - 0.5 * spread))
        objects += _object(rng, x, height, z, 0.5 if not closeup else 0.25)
    lights = [
        (np.array([rng.uniform(-2, 2), height - rng.uniform(1.0, 2.5), rng.uniform(-0.5, 2.5)]), _light_colour(rng))
        for _ in range(rng.integers(1, 3))
    ]
    camera = {
        "pitch": rng.uniform(0.1, 0.6) if height > 0.35 else rng.uniform(-0.1, 0.35),
        "yaw": rng.uniform(-0.3, 0.3),
    }
    return Scene(objects, lights, None, _indoor_sky(rng), _ambient(rng, 0.12, 0.4)), camera


def _outdoor(rng) -> tuple[Scene, dict]:
    height = rng.uniform(0.4, 3.0)
    tilt = rng.uniform(-0.06, 0.06, 2) if rng.random() < 0.5 else np.zeros(2)
    ground_m = _material(rng, str(rng.choice(("noise", "photo", "checker", "plain"))))
    ground_m.period = float(rng.uniform(0.3, 3.0))
    objects = [Obj(plane((0, height, 0), (tilt[0], -1, tilt[1])), ground_m, False)]
    for _ in range(rng.integers(3, 10)):
        x, z = rng.uniform(-15, 15), rng.uniform(3, 45)
        floor = height - tilt[0] * x - tilt[1] * z  # on the tilted ground: y = height - tx x - tz z
        what = rng.choice(("building", "tree", "pole", "fence", "thing", "stairs"))
        if what == "building":
            half = (rng.uniform(1, 5), rng.uniform(1.5, 8), rng.uniform(1, 5))
            objects.append(Obj(box((x, floor - half[1] + 0.5, z), half, _yaw(rng, 0.8)), _material(rng)))
        elif what == "tree":
            trunk_h, trunk_r = rng.uniform(0.8, 3.0), rng.uniform(0.08, 0.3)
            crown = rng.uniform(0.6, 2.0)
            objects.append(Obj(cylinder((x, floor - trunk_h / 2, z), trunk_h / 2 + 0.05, trunk_r), _material(rng)))
            leaves = _material(rng, "noise")
            leaves.albedo = np.array([rng.uniform(0.1, 0.4), rng.uniform(0.3, 0.7), rng.uniform(0.05, 0.3)])
            if rng.random() < 0.5:
                objects.append(Obj(sphere((x, floor - trunk_h - crown * 0.7, z), crown), leaves))
            else:
                objects.append(Obj(cone((x, floor - trunk_h - crown, z), crown * 1.2, 0.0, crown * 0.8), leaves))
        elif what == "pole":
            h = rng.uniform(2, 6)
            objects.append(Obj(cylinder((x, floor - h / 2, z), h / 2, rng.uniform(0.03, 0.12)), _material(rng)))
        elif what == "fence":
            m = _material(rng)
            n, gap = int(rng.integers(5, 14)), rng.uniform(0.15, 0.5)
            h = rng.uniform(0.6, 1.4)
            for k in range(n):
                objects.append(Obj(box((x + k * gap, floor - h / 2, z), (0.03, h / 2, 0.03)), m))
            objects.append(
                Obj(box((x + gap * (n - 1) / 2, floor - h * 0.8, z), (gap * (n - 1) / 2 + 0.05, 0.03, 0.02)), m)
            )
        elif what == "stairs":
            objects += _stairs(rng, x, floor, z, bool(rng.random() < 0.5))
        else:
            objects += _object(rng, x, floor, z, rng.uniform(1.0, 3.0))
    sun_dir = _unit(rng.uniform(-1, 1), rng.uniform(0.3, 1.0), rng.uniform(-0.5, 1.0))
    sun = (sun_dir, _light_colour(rng) * rng.uniform(0.7, 1.2))
    zenith = np.array([rng.uniform(0.2, 0.5), rng.uniform(0.4, 0.65), rng.uniform(0.7, 1.0)])
    horizon = np.array([rng.uniform(0.7, 1.0), rng.uniform(0.75, 0.95), rng.uniform(0.8, 1.0)])
    if rng.random() < 0.3:  # overcast
        zenith = horizon = np.full(3, rng.uniform(0.55, 0.9))
        sun = (sun_dir, sun[1] * 0.2)
    camera = {"pitch": rng.uniform(-0.15, 0.3) + (0.2 if height > 2 else 0), "yaw": rng.uniform(-0.6, 0.6)}
    return Scene(objects, [], sun, (zenith, horizon), _ambient(rng, 0.2, 0.45)), camera


def _unit(x, y, z) -> np.ndarray:
    v = np.array([x, y, z], float)
    return v / np.linalg.norm(v)


def _light_colour(rng) -> np.ndarray:
    warmth = rng.uniform(-0.3, 0.3)
    return np.clip(np.array([1 + warmth, 1.0, 1 - warmth]) * rng.uniform(0.85, 1.15, 3), 0.2, 1.6)


def _ambient(rng, low, high) -> np.ndarray:
    return rng.uniform(low, high) * rng.uniform(0.85, 1.15, 3)


def _indoor_sky(rng) -> tuple[np.ndarray, np.ndarray]:
    base = rng.uniform(0.3, 0.9)
    return np.full(3, base), np.full(3, base * 0.9)


# ---------------------------------------------------------------------------------------------------
# camera, rendering, the camera's own effects


@dataclass(frozen=True)
class Camera:
    fx: float  # pixels
    fy: float
    rotation: np.ndarray  # camera -> world


def camera_rays(width: int, height: int, cam: Camera, scale: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rays through the centres of a ``scale``-times finer grid: camera space (z = 1) and world, [N, 3]."""
    w, h = width * scale, height * scale
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    rays = np.stack(
        [(xx + 0.5 - w / 2) / (cam.fx * scale), (yy + 0.5 - h / 2) / (cam.fy * scale), np.ones_like(xx)], -1
    )
    rays = rays.reshape(-1, 3)
    return rays, rays @ cam.rotation.T


def _random_camera(rng, width: int, height: int, pitch: float, yaw: float) -> Camera:
    fov = np.radians(rng.uniform(35, 90))
    fx = width / 2 / np.tan(fov / 2)
    fy = fx * float(np.exp(rng.uniform(np.log(0.75), np.log(1.33))))  # another aspect ratio, resized
    roll = rng.normal(0, 0.06) if rng.random() < 0.7 else rng.uniform(-0.35, 0.35)
    return Camera(fx, fy, rotation(yaw=yaw, pitch=-pitch, roll=roll))  # pitch > 0 looks down (y is down)


def _camera_effects(rng, linear: np.ndarray, width: int, height: int) -> Image.Image:
    """Exposure, tone curve, vignetting (on the fine grid), then downsampling, blur, noise and JPEG."""
    h, w = linear.shape[:2]
    linear = linear * 2 ** rng.uniform(-0.7, 0.7)
    if rng.random() < 0.5:
        linear = linear / (1 + linear) * 1.6  # a soft shoulder instead of clipping
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((xx + 0.5) / w - 0.5) ** 2 + ((yy + 0.5) / h - 0.5) ** 2
    linear = linear * (1 - rng.uniform(0, 0.8) * r2 * 2)[..., None]
    gamma = rng.uniform(1.9, 2.5)
    rgb = (np.clip(linear, 0, 1) ** (1 / gamma) * 255 + 0.5).astype(np.uint8)
    image = Image.fromarray(rgb).resize((width, height), Image.BOX)
    if rng.random() < 0.4:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.6:
        arr = np.asarray(image).astype(np.float32)
        sigma = rng.uniform(1, 8)
        arr = arr + rng.normal(0, sigma, arr.shape) * np.sqrt(np.maximum(arr, 8) / 128)
        image = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=int(rng.integers(25, 90)))
        image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return image


def render(scene: Scene, cam: Camera, width: int, height: int, rng, supersample: int = SUPERSAMPLE) -> SceneSample:
    """RGB (``supersample``-times finer, box-filtered) and exact depth and camera-space normals per pixel centre."""
    zero = np.zeros((1, 3))
    _, dirs = camera_rays(width, height, cam, supersample)
    t, normals, index = cast(scene.objects, zero, dirs)
    fine_h, fine_w = height * supersample, width * supersample
    ao = ambient_occlusion(t.reshape(fine_h, fine_w), rng.uniform(0.3, 0.8)).reshape(-1)
    linear = _shade(scene, dirs, t, normals, index, ao).reshape(fine_h, fine_w, 3)
    image = _camera_effects(rng, linear, width, height)
    cam_rays, dirs = camera_rays(width, height, cam)
    t, normals, _ = cast(scene.objects, zero, dirs)
    hit = np.isfinite(t)
    depth = np.where(hit, t, 0.0).reshape(height, width)  # camera rays have z = 1: z of the hit = t
    normals_cam = np.where(hit[:, None], normals @ cam.rotation, 0.0).reshape(height, width, 3)
    return SceneSample(image, depth.astype(np.float32), normals_cam.astype(np.float32), float(cam.fx))


def build_scene(rng, kind: str) -> tuple[Scene, dict]:
    if kind in ("room", "corner"):
        return _room(rng, kind == "corner")
    if kind in ("still_life", "closeup"):
        return _still_life(rng, kind == "closeup")
    if kind == "outdoor":
        return _outdoor(rng)
    raise ValueError(f"unknown scene kind {kind!r}; one of {KINDS}")


def randomised_sample(seed: int, width: int, height: int, kind: str | None = None) -> SceneSample:
    """A domain-randomised training scene, a pure function of ``seed`` (and the size).

    ``focal`` of the sample is the horizontal focal length in pixels; the vertical one differs by the
    random pixel aspect (the image stands for a photo of another aspect ratio resized to this size)."""
    scene, cam, rng = randomised_scene(seed, width, height, kind)
    return render(scene, cam, width, height, rng)


def randomised_scene(seed: int, width: int, height: int, kind: str | None = None) -> tuple[Scene, Camera, object]:
    """The scene and camera of :func:`randomised_sample` and its random stream, positioned for rendering."""
    rng = np.random.default_rng([seed, 24])  # a stream of its own
    kind = kind or str(rng.choice(KINDS, p=KIND_WEIGHTS))
    scene, view = build_scene(rng, kind)
    return scene, _random_camera(rng, width, height, view["pitch"], view["yaw"]), rng
