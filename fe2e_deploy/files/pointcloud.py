"""Point clouds: a prediction's depth back-projected through pinhole intrinsics, with colours and normals, as PLY.

Camera axes are OpenCV's (x right, y down, z forward), the axes of the normals. Pixel ``(u, v)`` (column, row;
integers are pixel centres, OpenCV's convention) at depth ``z`` becomes ``((u - cx) z / fx, (v - cy) z / fy, z)``.
Intrinsics, in pixels of the maps (the output resolution), come from (first found): ``--intrinsics fx,fy,cx,cy``,
``--fov`` (horizontal, degrees; principal point at the centre), the image's EXIF 35 mm equivalent focal length
(``FocalLengthIn35mmFilm``, referred to the 43.27 mm full-frame diagonal), else :data:`DEFAULT_FOV`.

z: FE2E's depth is affine-invariant in log depth (``d`` in [0, 1]), so without ``--align-to`` the cloud is
relative: ``z = exp(d)`` (positive, in FE2E's order; the true depth is ``exp(a d + b)`` for unknown ``a, b``).
With ``--align-to`` it is the metric depth. The PLY header's comments say which, and where the intrinsics came
from. Written with ``plyfile`` (binary little-endian): x, y, z float32, red, green, blue uchar, nx, ny, nz float32.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from ..errors import ImageError, InvalidInput

#: Horizontal field of view (degrees) when no intrinsics, --fov or EXIF focal length are known.
DEFAULT_FOV = 60.0
#: The full-frame (36 x 24 mm) diagonal, which 35 mm equivalent focal lengths refer to.
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)
_EXIF_IFD, _FOCAL_35MM = 0x8769, 0xA405
#: The focal lengths (pixels) and principal points (|cx|, |cy|) --intrinsics accepts: the cloud stays finite and spread.
MIN_FOCAL, MAX_FOCAL = 1e-3, 1e9
#: The narrowest --fov (degrees): its focal length is about 10^5 widths.
MIN_FOV = 1e-3
#: Seed of the --max-points subsampling (the same points every run).
SUBSAMPLE_SEED = 0
POINT_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    + [("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
)


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics in pixels of the maps, and where they came from (said in the PLY header)."""

    fx: float
    fy: float
    cx: float
    cy: float
    source: str


@dataclass(frozen=True)
class CameraOptions:
    """``--intrinsics`` (fx, fy, cx, cy), ``--fov`` and ``--max-points`` (None: every valid pixel), checked."""

    intrinsics: tuple[float, float, float, float] | None = None
    fov: float | None = None
    max_points: int | None = None

    def __post_init__(self) -> None:
        if self.intrinsics is not None:
            if len(self.intrinsics) != 4:
                raise InvalidInput(f"--intrinsics {self.intrinsics}: give fx,fy,cx,cy (4 numbers)")
            for name, value in zip(("fx", "fy", "cx", "cy"), self.intrinsics, strict=True):
                if not math.isfinite(value):
                    raise InvalidInput(
                        f"--intrinsics: {name} is {value}, not a finite number (fx,fy,cx,cy in pixels of the maps)"
                    )
            fx, fy = self.intrinsics[:2]
            if fx <= 0 or fy <= 0:
                raise InvalidInput(f"--intrinsics: fx and fy must be > 0 (got {fx:g}, {fy:g})")
            for name, value in zip(("fx", "fy"), (fx, fy), strict=True):
                if not MIN_FOCAL <= value <= MAX_FOCAL:
                    raise InvalidInput(
                        f"--intrinsics: {name} {value:g} pixels is outside {MIN_FOCAL:g} to {MAX_FOCAL:g} (the points "
                        "would be at infinity, or all on the axis)"
                    )
            for name, value in zip(("cx", "cy"), self.intrinsics[2:], strict=True):
                if abs(value) > MAX_FOCAL:
                    raise InvalidInput(
                        f"--intrinsics: {name} {value:g} pixels is outside -{MAX_FOCAL:g} to {MAX_FOCAL:g}"
                    )
        if self.fov is not None and not MIN_FOV <= self.fov < 180:  # also refuses NaN
            raise InvalidInput(
                f"--fov {self.fov:g}: give a horizontal field of view in degrees, between 0 and 180 (at least "
                f"{MIN_FOV:g}: a narrower one puts every point on the axis)"
            )
        if self.max_points is not None and self.max_points < 1:
            raise InvalidInput(f"--max-points {self.max_points}: must be >= 1")


def parse_intrinsics(text: str | None) -> tuple[float, float, float, float] | None:
    """``"fx,fy,cx,cy"`` -> 4 floats (None stays None); anything else is a one-line error."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise InvalidInput(
            f"--intrinsics {text!r}: give fx,fy,cx,cy in pixels of the output maps, e.g. 500,500,320,240"
        )
    return values  # type: ignore[return-value]


def exif_focal_35mm(source: str | Path | bytes | BinaryIO | Image.Image | None) -> float | None:
    """The EXIF ``FocalLengthIn35mmFilm`` (mm) of an image file, bytes or opened image; None when absent."""
    if source is None:
        return None
    try:
        if isinstance(source, Image.Image):
            value = source.getexif().get_ifd(_EXIF_IFD).get(_FOCAL_35MM)
        else:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:  # header only
                value = image.getexif().get_ifd(_EXIF_IFD).get(_FOCAL_35MM)
        value = float(value) if value is not None else None
    except (OSError, ValueError, TypeError, SyntaxError):
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def resolve_intrinsics(
    camera: CameraOptions | None, width: int, height: int, focal_35mm: float | None = None
) -> Intrinsics:
    """The intrinsics of a ``width`` x ``height`` map: ``--intrinsics``, else ``--fov``, else EXIF, else the default."""
    camera = camera or CameraOptions()
    cx, cy = (width - 1) / 2, (height - 1) / 2
    if camera.intrinsics is not None:
        return Intrinsics(*camera.intrinsics, source="--intrinsics")
    if camera.fov is not None:
        f = width / 2 / math.tan(math.radians(camera.fov) / 2)
        return Intrinsics(f, f, cx, cy, f"--fov {camera.fov:g} (horizontal)")
    if focal_35mm is not None:
        f = focal_35mm * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM
        return Intrinsics(f, f, cx, cy, f"EXIF FocalLengthIn35mmFilm {focal_35mm:g} mm")
    f = width / 2 / math.tan(math.radians(DEFAULT_FOV) / 2)
    return Intrinsics(f, f, cx, cy, f"default {DEFAULT_FOV:g} deg horizontal field of view (no intrinsics known)")


def map_colors(image: Image.Image | np.ndarray | None, width: int, height: int) -> np.ndarray:
    """The image's RGB at the maps' size (bicubic when resized), uint8 ``[H, W, 3]``; mid grey without an image."""
    if image is None:
        return np.full((height, width, 3), 128, dtype=np.uint8)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def point_cloud(
    z: np.ndarray, normals: np.ndarray, colors: np.ndarray, intrinsics: Intrinsics, max_points: int | None = None
) -> np.ndarray:
    """The points (:data:`POINT_DTYPE`) of the pixels with a finite ``z > 0``, in row-major order; ``max_points``
    keeps that many of them, drawn without replacement with a fixed seed (the same points every run). A point that
    does not fit float32 is an :class:`ImageError` (nothing written for the image)."""
    height, width = z.shape
    flat = np.flatnonzero(np.isfinite(z) & (z > 0))
    if max_points is not None and flat.size > max_points:
        keep = np.random.default_rng(SUBSAMPLE_SEED).choice(flat.size, size=max_points, replace=False)
        flat = flat[np.sort(keep)]
    rows, cols = np.divmod(flat, width)
    depth = z.reshape(-1)[flat].astype(np.float64)
    points = np.empty(flat.size, dtype=POINT_DTYPE)
    with np.errstate(over="ignore"):  # checked below
        points["x"] = (cols - intrinsics.cx) * depth / intrinsics.fx
        points["y"] = (rows - intrinsics.cy) * depth / intrinsics.fy
        points["z"] = depth
    rgb = colors.reshape(-1, 3)[flat]
    normal = normals.reshape(-1, 3)[flat]
    for i, name in enumerate(("red", "green", "blue")):
        points[name] = rgb[:, i]
    for i, name in enumerate(("nx", "ny", "nz")):
        points[name] = normal[:, i]  # float32 as predicted: the same values as normals_npy
    for axis in ("x", "y", "z"):
        if not np.isfinite(points[axis]).all():  # float32 overflow: extreme depths over a short focal length
            raise ImageError(
                f"point cloud: {axis} is not finite in float32 (up to |{np.abs(depth).max():.3g}| depth, "
                f"fx {intrinsics.fx:.3g}, fy {intrinsics.fy:.3g}): give a longer focal length"
            )
    return points


def cloud_depth(relative: np.ndarray, metric: np.ndarray | None) -> tuple[np.ndarray, str]:
    """The z of the cloud and what it is: the metric depth when given, else ``exp(d)`` of FE2E's relative depth."""
    if metric is not None:
        return metric, "z: metric depth (--align-to: scale and shift fitted to the known depths)"
    return np.exp(relative.astype(np.float64)), "z: relative depth exp(d) of FE2E's affine-invariant log depth d"


def header_comments(z_note: str, intrinsics: Intrinsics) -> list[str]:
    """The PLY header comments: what z is, the axes, the intrinsics and their source."""
    return [
        "fe2e-deploy point cloud (FE2E depth and normals)",
        z_note,
        "axes: OpenCV camera (x right, y down, z forward); normals in the same axes, facing the camera",
        f"intrinsics fx {intrinsics.fx:.6g} fy {intrinsics.fy:.6g} cx {intrinsics.cx:.6g} cy {intrinsics.cy:.6g}"
        f" (pixels of the maps), from {intrinsics.source}",
    ]


def write_ply(target: str | Path | BinaryIO, points: np.ndarray, comments: list[str]) -> None:
    """``points`` as a binary little-endian PLY ``vertex`` element (plyfile) at a path or into a binary file."""
    from plyfile import PlyData, PlyElement  # noqa: PLC0415  (only when a point cloud is written)

    element = PlyElement.describe(points, "vertex")
    PlyData([element], text=False, byte_order="<", comments=comments).write(target)


def ply_bytes(points: np.ndarray, comments: list[str]) -> bytes:
    """The PLY file of :func:`write_ply` as bytes (``serve``'s ``format=ply``)."""
    buffer = io.BytesIO()
    write_ply(buffer, points, comments)
    return buffer.getvalue()
