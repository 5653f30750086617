"""Synthetic video clips with exact depth per frame: a camera moving through a scene of :mod:`fe2e_deploy.scenes`.

The scene stays fixed in the world and the camera moves (its position shifts the geometry, its yaw
turns the rays), so textures stay put on surfaces. Clips (:data:`CLIPS`):

- ``dolly``: walking up a room to a box standing close ahead (depth range shrinks ~10x);
- ``turn``: turning from the far end of a long room to a side wall 0.8 m away;
- ``pan``: sliding sideways past a still life (range nearly constant; the control);
- ``cut``: half ``pan``, then a hard cut to ``dolly``'s room.

``python -m fe2e_deploy.scene_clips OUT`` writes each clip as ``OUT/<clip>.mp4`` and its depth as
``OUT/<clip>_depth.npy`` ``[T, H, W]`` float32 metres.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from fractions import Fraction
from functools import partial
from pathlib import Path

import numpy as np

from .scenes import SceneSample, _box, _plane, _render, _rotation, _sphere, _texture

CLIPS = ("dolly", "turn", "pan", "cut")
Scene = tuple[list[Callable], np.ndarray | None, np.ndarray | None]


def _world_plane(rays: np.ndarray, origin: np.ndarray, point, normal, albedo, pattern="plain", period=1.0):
    """A plane fixed in the world, seen from ``origin`` (its texture anchored to the world)."""
    t, normals, _ = _plane(rays, np.asarray(point, float) - origin, normal, albedo)
    hits = rays * np.where(np.isfinite(t), t, 0)[:, None] + origin
    unit = np.asarray(normal, float) / np.linalg.norm(normal)
    return t, normals, _texture(hits, unit, np.asarray(albedo, float), pattern, period)


def _room(origin: np.ndarray, length: float = 9.0, half_width: float = 2.0) -> Scene:
    """A long room (floor, ceiling, four walls), a box and a sphere, a ceiling light; seen from ``origin``."""
    o = np.asarray(origin, float)
    objects = [
        partial(
            _world_plane,
            origin=o,
            point=(0, 1.4, 0),
            normal=(0, -1, 0),
            albedo=(0.6, 0.5, 0.4),
            pattern="checker",
            period=0.6,
        ),
        partial(_world_plane, origin=o, point=(0, -1.4, 0), normal=(0, 1, 0), albedo=(0.85, 0.85, 0.8)),
        partial(
            _world_plane,
            origin=o,
            point=(0, 0, length),
            normal=(0, 0, -1),
            albedo=(0.4, 0.6, 0.7),
            pattern="stripes",
            period=0.5,
        ),
        partial(_world_plane, origin=o, point=(0, 0, -2), normal=(0, 0, 1), albedo=(0.7, 0.7, 0.5)),
        partial(
            _world_plane,
            origin=o,
            point=(-half_width, 0, 0),
            normal=(1, 0, 0),
            albedo=(0.75, 0.45, 0.4),
            pattern="stripes",
            period=0.4,
        ),
        partial(
            _world_plane,
            origin=o,
            point=(half_width, 0, 0),
            normal=(-1, 0, 0),
            albedo=(0.45, 0.7, 0.45),
            pattern="stripes",
            period=0.7,
        ),
        partial(_box, lo=np.array((-0.5, 0.4, 5.0)) - o, hi=np.array((0.5, 1.4, 5.6)) - o, albedo=(0.8, 0.3, 0.3)),
        partial(_sphere, center=np.array((1.1, 1.0, 3.5)) - o, radius=0.4, albedo=(0.3, 0.4, 0.85)),
    ]
    return objects, np.array((0.0, -1.2, 3.0)) - o, None


def _still_life(origin: np.ndarray) -> Scene:
    o = np.asarray(origin, float)
    objects = [
        partial(
            _world_plane,
            origin=o,
            point=(0, 0.8, 0),
            normal=(0, -1, 0),
            albedo=(0.5, 0.55, 0.6),
            pattern="checker",
            period=0.25,
        ),
        partial(
            _world_plane,
            origin=o,
            point=(0, 0, 4.5),
            normal=(0, 0, -1),
            albedo=(0.8, 0.7, 0.5),
            pattern="stripes",
            period=0.3,
        ),
    ]
    for x, z, r, colour in (
        (-0.8, 2.2, 0.35, (0.8, 0.2, 0.2)),
        (0.3, 3.0, 0.45, (0.2, 0.7, 0.3)),
        (1.2, 2.5, 0.3, (0.3, 0.3, 0.9)),
    ):  # noqa: E501
        objects.append(partial(_sphere, center=np.array((x, 0.8 - r, z)) - o, radius=r, albedo=colour))
    return objects, np.array((-1.0, -2.0, 1.0)) - o, None


def _frame(kind: str, s: float, width: int, height: int) -> SceneSample:
    """Frame at progress ``s`` in [0, 1] of clip ``kind``."""
    focal = 0.8
    if kind == "dolly":  # from the back of the room up to 0.4 m before the box's front face
        z = -1.5 + s * (5.0 - 0.4 + 1.5)
        return _render(_room((0.0, 0.3, z)), focal, _rotation(0.12, 0.0), width, height)
    if kind == "turn":  # standing near the right wall, turning from the far end (yaw 0) to face it (yaw 80 deg)
        yaw = np.radians(80.0) * s
        return _render(_room((1.2, 0.0, 1.0)), focal, _rotation(0.05, float(yaw)), width, height)
    if kind == "pan":
        return _render(_still_life((-0.8 + 1.6 * s, 0.0, 0.0)), focal, _rotation(0.2, -0.1 + 0.2 * s), width, height)
    raise ValueError(f"unknown clip {kind!r}; choose one of {', '.join(CLIPS)}")


def camera_clip(kind: str, frames: int = 48, width: int = 128, height: int = 96) -> Iterator[SceneSample]:
    """The ``frames`` frames of clip ``kind`` (:data:`CLIPS`), rendered one at a time (deterministic)."""
    for i in range(frames):
        s = i / max(1, frames - 1)
        if kind == "cut":  # the first half of pan, then dolly's second half
            half = frames // 2
            yield _frame("pan" if i < half else "dolly", s, width, height)
        else:
            yield _frame(kind, s, width, height)


def write_clip(
    out_dir: Path, kind: str, frames: int = 48, width: int = 128, height: int = 96, fps: int = 24
) -> tuple[Path, Path]:
    """``OUT/<kind>.mp4`` (H.264, near-lossless) and ``OUT/<kind>_depth.npy`` ``[T, H, W]`` metres (0: nothing hit)."""
    from .files.video import VideoWriter  # noqa: PLC0415

    out_dir = Path(out_dir)
    video = out_dir / f"{kind}.mp4"
    writer = VideoWriter(video, Fraction(fps))
    depths = []
    try:
        for sample in camera_clip(kind, frames, width, height):
            writer.write(np.asarray(sample.rgb))
            depths.append(sample.depth)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    depth_path = out_dir / f"{kind}_depth.npy"
    np.save(depth_path, np.stack(depths).astype(np.float32))
    return video, depth_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the synthetic camera clips (mp4) and their exact depth (npy).")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--clips", default=",".join(CLIPS))
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--size", default="128x96", help="WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    for kind in args.clips.split(","):
        for path in write_clip(args.out_dir, kind, args.frames, width, height):
            print(path)


if __name__ == "__main__":
    main()
