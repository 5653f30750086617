"""Finding input images and writing predictions in Marigold-style output folders.

``OUT/depth_npy/<rel>/<stem>_depth.npy``        float32 [H, W] in [0, 1]
``OUT/depth_png16/<rel>/<stem>_depth.png``      16-bit, depth * 65535
``OUT/depth_colored/<rel>/<stem>_depth_colored.png``  Spectral colour map (near red, far blue)
``OUT/normals_npy/<rel>/<stem>_normals.npy``    float32 [H, W, 3] unit vectors
``OUT/normals_png/<rel>/<stem>_normals.png``    8-bit RGB, (n + 1) / 2 * 255
and on request (:data:`EXTRA_KINDS`): ``pointcloud/<rel>/<stem>_points.ply`` (:mod:`.pointcloud`),
``depth_exr/<rel>/<stem>_depth.exr`` and ``normals_exr/<rel>/<stem>_normals.exr`` (float32, :mod:`.exr`), and with
metric depth (``--align-to``) ``alignment/<rel>/<stem>_alignment.json`` (the fit, :mod:`~fe2e_deploy.metric_align`).
``<rel>`` is the image's sub-folder inside the input folder. ``<stem>`` is the image's file name
without its suffix, unless that would collide in its folder (:func:`output_names`: ``x.jpg`` next to
``x.png`` -> ``x.jpg_depth.npy`` and ``x.png_depth.npy``). Every file is written atomically, and the
maps are converted a band of rows at a time, so writing costs little memory beyond the maps.
"""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InvalidInput
from ..processing import Prediction, row_bands
from .atomic import atomic_path, naming
from .colormaps import depth_preview, normals_preview
from .png import write_png
from .pointcloud import CameraOptions

OUTPUT_KINDS = {
    "depth_npy": "_depth.npy",
    "depth_png16": "_depth.png",
    "depth_colored": "_depth_colored.png",
    "normals_npy": "_normals.npy",
    "normals_png": "_normals.png",
}
#: Outputs written only when asked for in ``--outputs`` (``alignment``: added by ``--align-to``).
EXTRA_KINDS = {
    "pointcloud": "_points.ply",
    "depth_exr": "_depth.exr",
    "normals_exr": "_normals.exr",
    "alignment": "_alignment.json",
}
ALL_KINDS = OUTPUT_KINDS | EXTRA_KINDS
#: What ``--outputs`` accepts.
SELECTABLE_KINDS = tuple(k for k in ALL_KINDS if k != "alignment")


@dataclass(frozen=True)
class Extras:
    """What some outputs need beside the maps: the image (point-cloud colours), its EXIF 35 mm focal length, and
    with ``--align-to`` the metric depth and its fit (depth outputs become metric; the preview stays relative)."""

    image: object = None  # PIL image or uint8 [H, W, 3] array
    focal_35mm: float | None = None
    metric_depth: np.ndarray | None = None
    alignment: dict | None = None


@dataclass(frozen=True)
class OutputOptions:
    """What ``infer`` writes for each image.

    ``kinds``: a subset of :data:`OUTPUT_KINDS` (default all five). ``resolution``: ``input`` (maps
    upsampled to the image's size) or ``processing`` (the size the model ran at, Marigold's
    ``match_input_resolution=False``). ``png_compression``: zlib level 0-9 of the PNGs; it changes the
    file size and the time to write, never the pixels (default 1: fast; 6 was the old default).
    ``npy_dtype``: ``float32`` (exact) or ``float16`` (half the bytes, ~3 significant digits).
    ``camera``: intrinsics and ``--max-points`` of the ``pointcloud`` output.
    """

    kinds: tuple[str, ...] = tuple(OUTPUT_KINDS)
    resolution: str = "input"
    png_compression: int = 1
    npy_dtype: str = "float32"
    camera: CameraOptions = CameraOptions()

    def __post_init__(self) -> None:
        unknown = [k for k in self.kinds if k not in ALL_KINDS]
        if unknown or not self.kinds:
            raise InvalidInput(f"--outputs {','.join(self.kinds)}: choose one or more of {', '.join(SELECTABLE_KINDS)}")
        from .exr import check_exr_available  # noqa: PLC0415

        check_exr_available(self.kinds)
        if self.resolution not in ("input", "processing"):
            raise InvalidInput(f"--output-res {self.resolution!r}: choose input or processing")
        if not 0 <= self.png_compression <= 9:
            raise InvalidInput(f"--png-compression must be 0-9, got {self.png_compression}")
        if self.npy_dtype not in ("float32", "float16"):
            raise InvalidInput(f"--npy-dtype {self.npy_dtype!r}: choose float32 or float16")


def output_names(rel_images: Iterable[Path]) -> dict[Path, str]:
    """The name each image's outputs start with: its stem (``x.jpg`` -> ``x``), or its full file name
    (``x.jpg``) when another image in its folder has the same stem or a file name equal to that stem.

    Names are compared ignoring case (so they stay distinct on case-insensitive disks): ``x.jpg``,
    ``X.png`` -> ``x.jpg``, ``X.png``; ``y.jpg``, ``y.jpg.png`` -> ``y``, ``y.jpg.png``. File names in a
    folder are distinct, so the names returned are too.
    """
    rel_images = list(rel_images)
    counts = Counter((rel.parent, name.casefold()) for rel in rel_images for name in (rel.stem, rel.name))
    return {rel: rel.stem if counts[(rel.parent, rel.stem.casefold())] == 1 else rel.name for rel in rel_images}


class OutputOwners:
    """Which input each planned output of a run belongs to: files (an image's maps, a clip's preview videos) and
    folders (a clip's per-frame folders), so that no output is another's, lies inside another's folder or holds
    another's files (``infer`` plans images, then clips, against one of these)."""

    def __init__(self) -> None:
        self.owners: dict[Path, Path] = {}  # output file or folder -> its input
        self.inside: dict[Path, Path] = {}  # each folder above an output -> the first input with an output below it

    def owner(self, path: Path) -> Path | None:
        """The input that owns ``path``, something below it, or a file or folder above it; None when it is free."""
        if path in self.owners:
            return self.owners[path]
        if path in self.inside:
            return self.inside[path]
        return next((self.owners[p] for p in path.parents if p in self.owners), None)

    def clash(self, paths: Iterable[Path]) -> tuple[Path, Path] | None:
        """``(path, its owner)`` of the first of ``paths`` that is not free, else None."""
        return next(((path, owner) for path in paths if (owner := self.owner(path)) is not None), None)

    def add(self, paths: Iterable[Path], owner: Path) -> None:
        for path in paths:
            self.owners[path] = owner
            for parent in path.parents:
                if parent in self.inside:  # so are the folders above it
                    break
                self.inside[parent] = owner


def output_paths(
    out_dir: str | Path, rel_image: Path, name: str | None = None, kinds: Iterable[str] = tuple(OUTPUT_KINDS)
) -> dict[str, Path]:
    """The output files (of ``kinds``, default all five) of the image at ``rel_image`` (relative to the
    input folder), named after ``name`` (its entry in :func:`output_names`; default: the image's stem)."""
    name = rel_image.stem if name is None else name
    return {kind: Path(out_dir) / kind / rel_image.parent / f"{name}{ALL_KINDS[kind]}" for kind in kinds}


def write_prediction(
    paths: dict[str, Path], pred: Prediction, options: OutputOptions = OutputOptions(), extras: Extras | None = None
) -> None:
    """Write the files of ``paths`` (kind -> path) to temporaries first, then rename them: a failure leaves
    none behind. Thread-safe (writers run in parallel in ``infer``). ``extras``: see :class:`Extras`; with a
    metric depth, ``depth_npy``/``depth_exr`` hold it and ``depth_png16`` holds it x 1000 (millimetres for
    metres, clipped to 0..65535), while ``depth_colored`` stays the preview of FE2E's relative depth."""
    extras = extras or Extras()
    depth = np.asarray(pred.depth, dtype=np.float32)  # no copies: the maps may be large
    normals = np.asarray(pred.normals, dtype=np.float32)
    metric = None if extras.metric_depth is None else np.asarray(extras.metric_depth, dtype=np.float32)
    level = options.png_compression
    npy = np.float16 if options.npy_dtype == "float16" else np.float32
    with contextlib.ExitStack() as stack:
        tmp = {kind: stack.enter_context(atomic_path(path)) for kind, path in paths.items()}
        if "depth_npy" in tmp:
            with naming(paths["depth_npy"]):
                save_npy(tmp["depth_npy"], (depth if metric is None else metric).astype(npy, copy=False))
        if "normals_npy" in tmp:
            with naming(paths["normals_npy"]):
                save_npy(tmp["normals_npy"], normals.astype(npy, copy=False))
        for kind in ("depth_png16", "depth_colored", "normals_png"):
            if kind in tmp:
                if kind == "depth_png16" and metric is not None:
                    pixels = _banded(metric, (), np.uint16, lambda band: np.round(band * 1000).clip(0, 65535))
                else:
                    pixels = png_pixels(kind, depth, normals)
                with naming(paths[kind]):
                    write_png(tmp[kind], pixels, level)
        if "depth_exr" in tmp or "normals_exr" in tmp:
            from .exr import write_exr  # noqa: PLC0415  (optional dependency)

            if "depth_exr" in tmp:
                with naming(paths["depth_exr"]):
                    write_exr(tmp["depth_exr"], depth if metric is None else metric)
            if "normals_exr" in tmp:
                with naming(paths["normals_exr"]):
                    write_exr(tmp["normals_exr"], normals)
        if "pointcloud" in tmp:
            with naming(paths["pointcloud"]):
                write_pointcloud(tmp["pointcloud"], depth, normals, metric, options.camera, extras)
        if "alignment" in tmp:
            with naming(paths["alignment"]):
                tmp["alignment"].write_text(json.dumps(extras.alignment, indent=2) + "\n")


def save_npy(path: str | Path, array: np.ndarray) -> None:
    """``np.save``'s file (the same bytes), written through Python's file object so that a failed write says why
    (``ENOSPC``...): numpy's own ``tofile`` reports a short write without an errno."""
    array = np.asarray(array)
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(array))
        fh.write(array.data)


def write_pointcloud(
    path: Path, depth: np.ndarray, normals: np.ndarray, metric: np.ndarray | None, camera, extras: Extras
) -> None:
    """The ``pointcloud`` output (of an image or a video frame): see :mod:`.pointcloud` (z, intrinsics and their
    precedence)."""
    from .pointcloud import (  # noqa: PLC0415
        cloud_depth,
        header_comments,
        map_colors,
        point_cloud,
        resolve_intrinsics,
        write_ply,
    )

    height, width = depth.shape
    intrinsics = resolve_intrinsics(camera, width, height, extras.focal_35mm)
    z, note = cloud_depth(depth, metric)
    points = point_cloud(z, normals, map_colors(extras.image, width, height), intrinsics, camera.max_points)
    write_ply(path, points, header_comments(note, intrinsics))


def png_pixels(kind: str, depth: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """The pixels of a PNG output: ``depth_png16`` (uint16, depth * 65535), ``depth_colored`` (the Spectral
    preview) or ``normals_png`` (uint8 RGB, (n + 1) / 2 * 255); converted a band of rows at a time."""
    if kind == "depth_png16":
        # diffusers' export_depth_to_16bit_png passes mode= to Image.fromarray, which Pillow 13 rejects
        return _banded(depth, (), np.uint16, lambda band: np.round(band.clip(0, 1) * 65535))
    if kind == "depth_colored":
        return _banded(depth, (3,), np.uint8, depth_preview)
    if kind == "normals_png":
        return _banded(normals, (3,), np.uint8, normals_preview)
    raise InvalidInput(f"{kind!r} is not a PNG output (depth_png16, depth_colored, normals_png)")


def _banded(values: np.ndarray, channels: tuple[int, ...], dtype: type, convert: Callable) -> np.ndarray:
    """``convert`` (per pixel) applied a band of rows at a time into a new ``[H, W, *channels]`` array."""
    height, width = values.shape[:2]
    out = np.empty((height, width, *channels), dtype=dtype)
    for rows in row_bands(height, width):
        out[rows] = np.asarray(convert(values[rows]))
    return out
