"""``--align-to``: metric depth from known depths, by a robust scale/shift fit in the space FE2E predicts.

FE2E's depth ``d`` in [0, 1] is affine-invariant in log depth (it was trained on per-image log-normalised
depth; :func:`~fe2e_deploy.evaluation.metrics.align_depth`'s ``log`` alignment), so the fit is
``log(depth) = scale * d + shift`` and the metric depth is ``exp(scale * d + shift)``.

Known depths, one file per image named after its stem (``ALIGN/<sub-folder>/<stem>.npy`` or ``.csv``, the
sub-folder as the image's in the input folder):

- sparse ``.npy`` ``[N, 3]`` or ``.csv`` with the header ``u,v,depth``: pixel column, row (of the input image;
  integers are pixel centres) and depth;
- dense ``.npy`` ``[H, W]``: a depth per pixel of the image (its size, else refused before the map is read); NaN, 0
  or negative = invalid.

The fit: least squares, then again on the points within 3 robust standard deviations (1.4826 x the median absolute
residual, at least 1e-6) until the kept points do not change (at most 20 rounds): outliers do not pull it. At most
:data:`MAX_FIT_POINTS` valid points are fitted (more are drawn with a fixed seed), and known depths that are all the
same (no spread: no scale to fit) fail the image.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ImageError, MissingInput, NotAFolder

ALIGN_SUFFIXES = (".npy", ".csv")
#: Fewest valid known depths an image needs (2 unknowns, and a robust fit needs more).
MIN_POINTS = 4
_LOG_CLIP = 80.0  # exp(80): beyond any depth; keeps float32 finite
#: Most known depths a fit uses; more (a dense map of a large image) are drawn with :data:`SAMPLE_SEED`.
MAX_FIT_POINTS = 1 << 20
SAMPLE_SEED = 0
#: Least spread of log(known depth) (max - min) a fit needs: 1e-6, a relative spread of one in a million.
SPREAD = 1e-6


@dataclass(frozen=True)
class Alignment:
    """The fit of one image (written as its ``_alignment.json``)."""

    scale: float  # log(depth) = scale * d + shift
    shift: float
    points: int  # valid known depths fitted (at most MAX_FIT_POINTS)
    inliers: int  # kept by the robust fit
    median_abs_rel: float  # median |metric - known| / known over all valid points
    source: str  # the align file

    def document(self) -> dict:
        return {"space": "log(depth) = scale * d + shift (d: FE2E's depth in [0, 1])", **asdict(self)}


def find_align_files(align_dir: str | Path, rel_images: Iterable[Path]) -> dict[Path, Path]:
    """The align file of each image (relative path -> file); a missing or ambiguous one refuses the run in one line."""
    align_dir = Path(align_dir)
    if align_dir.exists() and not align_dir.is_dir():
        raise NotAFolder(
            f"--align-to {align_dir}: is a file; give the folder that holds one <stem>.npy or <stem>.csv per image"
        )
    if not align_dir.is_dir():
        raise MissingInput(f"--align-to {align_dir}: folder not found (give a folder with one file per image)")
    found, missing, ambiguous = {}, [], []
    for rel in rel_images:
        candidates = [align_dir / rel.parent / f"{rel.stem}{s}" for s in ALIGN_SUFFIXES]
        present = [p for p in candidates if p.is_file()]
        if len(present) == 1:
            found[rel] = present[0]
        elif present:
            ambiguous.append(rel.as_posix())
        else:
            missing.append(rel.as_posix())
    if missing:
        raise MissingInput(
            f"--align-to {align_dir}: no .npy/.csv of known depths for {len(missing)} image(s) "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); every image needs <stem>.npy or .csv"
        )
    if ambiguous:
        raise MissingInput(f"--align-to {align_dir}: both <stem>.npy and <stem>.csv for {', '.join(ambiguous[:3])}")
    return found


#: What a file of known depths may fail to read with (each fails its image alone).
_READ_ERRORS = (OSError, ValueError, IndexError, EOFError, csv.Error)


def _unreadable(path: Path, why: object) -> ImageError:
    return ImageError(f"{path}: unreadable known depths ({why})")


def load_known_depths(path: Path) -> np.ndarray:
    """The array of a ``.npy`` of known depths, memory-mapped (nothing read yet beyond its header), or
    :class:`ImageError` (``unreadable known depths (why)``): not an ``.npy`` (empty, an ``.npz`` archive, garbage),
    or not numbers (strings, records, objects, complex)."""
    try:
        values = np.load(path, mmap_mode="r", allow_pickle=False)
    except _READ_ERRORS as exc:
        raise _unreadable(path, "an empty file" if _empty(path) else exc or type(exc).__name__) from None
    if not isinstance(values, np.ndarray):  # np.load opened a zip: an .npz archive of arrays
        values.close()
        raise _unreadable(path, "an .npz archive, not one .npy array")
    if values.dtype.kind not in "iuf":
        raise _unreadable(path, f"dtype {values.dtype}: expected numbers")
    return values


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def read_known_depths(path: Path, grid: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[int, int] | None]:
    """``(points [N, 3] of u, v, depth; a dense map's size (w, h) or None)``: a dense map becomes its valid pixels
    (:func:`dense_points`). ``grid`` (w, h): the image's size, which a dense map must have (checked first)."""
    if path.suffix == ".csv":
        try:
            with open(path, newline="") as fh:
                rows = list(csv.reader(fh))
            header = [c.strip().lower() for c in rows[0]] if rows else []
            if header[:3] != ["u", "v", "depth"]:
                raise ImageError(f"{path}: expected the header u,v,depth, got {','.join(header) or 'an empty file'}")
            return np.array([[float(c) for c in row[:3]] for row in rows[1:] if row], dtype=np.float64).reshape(
                -1, 3
            ), None
        except ImageError:
            raise
        except _READ_ERRORS as exc:
            raise _unreadable(path, exc) from None
    values = load_known_depths(path)  # memory-mapped: its shape is checked before anything is read
    if values.ndim != 2:
        raise ImageError(f"{path}: expected [N, 3] (u, v, depth) or a dense [H, W] map, got shape {values.shape}")
    sparse = values.shape[1] == 3
    if not sparse and grid is not None and values.shape != (grid[1], grid[0]):
        raise ImageError(
            f"{path}: known-depth map is {values.shape[0]}x{values.shape[1]}, the image is {grid[1]}x{grid[0]} "
            "(height x width): a dense map needs the image's size"
        )
    try:
        if sparse:
            return np.asarray(values, dtype=np.float64), None
        return dense_points(values), (values.shape[1], values.shape[0])
    except _READ_ERRORS as exc:  # a file cut short after its header
        raise _unreadable(path, exc) from None


def dense_points(values: np.ndarray) -> np.ndarray:
    """A dense map's valid pixels (finite, > 0) as points ``[N, 3]`` of column, row, depth: at most
    :data:`MAX_FIT_POINTS`, drawn with a fixed seed (the same every run), in row-major order."""
    flat = np.flatnonzero(np.isfinite(values) & (values > 0))
    flat = _subsample(flat)
    rows, cols = np.divmod(flat, values.shape[1])
    return np.stack([cols, rows, np.asarray(values.reshape(-1)[flat], dtype=np.float64)], -1).astype(np.float64)


def _subsample(index: np.ndarray) -> np.ndarray:
    """At most :data:`MAX_FIT_POINTS` of ``index``, drawn with :data:`SAMPLE_SEED`, in their order."""
    if index.size <= MAX_FIT_POINTS:
        return index
    keep = np.random.default_rng(SAMPLE_SEED).choice(index.size, size=MAX_FIT_POINTS, replace=False)
    return index[np.sort(keep)]


def sample_points(
    points: np.ndarray, grid: tuple[int, int], map_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid points (finite, depth > 0, inside ``grid`` (w, h)) -> (map rows, map cols, depths), nearest pixel."""
    u, v, depth = points[:, 0], points[:, 1], points[:, 2]
    grid_w, grid_h = grid
    ok = np.isfinite(points).all(axis=1) & (depth > 0) & (u > -0.5) & (v > -0.5) & (u < grid_w - 0.5)
    ok &= v < grid_h - 0.5
    width, height = map_size
    cols = np.clip(np.floor((u[ok] + 0.5) * width / grid_w), 0, width - 1).astype(np.int64)
    rows = np.clip(np.floor((v[ok] + 0.5) * height / grid_h), 0, height - 1).astype(np.int64)
    return rows, cols, depth[ok]


def fit_log_affine(pred: np.ndarray, depth: np.ndarray, rounds: int = 20) -> tuple[float, float, np.ndarray]:
    """Robust ``log(depth) = scale * pred + shift``: (scale, shift, inlier mask); see the module's doc."""
    target = np.log(depth)
    keep = np.ones(pred.shape, dtype=bool)
    scale = shift = 0.0
    for _ in range(rounds):
        design = np.stack([pred[keep], np.ones(int(keep.sum()))], -1)
        (scale, shift), *_ = np.linalg.lstsq(design, target[keep], rcond=None)
        residual = np.abs(scale * pred + shift - target)
        limit = 3 * max(1.4826 * float(np.median(residual[keep])), 1e-6)
        new = residual <= limit
        if new.sum() < MIN_POINTS or np.array_equal(new, keep):
            break
        keep = new
    return float(scale), float(shift), keep


def _check_spread(path: Path, known: np.ndarray, which: str) -> None:
    """:class:`ImageError` when the known depths (``which``: those the robust fit kept) are all the same: the
    fit's scale would be 0 or rounding noise (accepted at 2.0 as 2.8e-16, refused at 1.0 as near/far reversed)."""
    logs = np.log(known)
    if logs.size and float(np.ptp(logs)) < SPREAD:
        raise ImageError(
            f"{path}: known depths have no spread: cannot fit a scale (the {logs.size} known depths{which} "
            f"are all {float(np.median(known)):.6g})"
        )


def align_depth_map(
    depth: np.ndarray, path: Path, image_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, Alignment]:
    """Metric depth (float32, the map's size) of FE2E's depth map ``depth`` from the known depths in ``path``.

    ``image_size`` (w, h): the input image's, which sparse ``u, v`` refer to (default: the map's). Too few valid
    points, a flat prediction at them or a fit that reverses near and far fail this image (:class:`ImageError`).
    """
    height, width = depth.shape
    grid = image_size or (width, height)
    points, _ = read_known_depths(path, grid)
    rows, cols, known = sample_points(points, grid, (width, height))
    pred = depth[rows, cols].astype(np.float64)
    finite = np.flatnonzero(np.isfinite(pred))
    finite = _subsample(finite)
    pred, known = pred[finite], known[finite]
    if pred.size < MIN_POINTS:
        raise ImageError(f"{path}: {pred.size} valid known depth(s), need at least {MIN_POINTS} (finite, > 0, inside)")
    if float(np.ptp(pred)) < 1e-6:
        raise ImageError(f"{path}: the predicted depth is the same at all {pred.size} known points: no scale to fit")
    _check_spread(path, known, "")
    scale, shift, keep = fit_log_affine(pred, known)
    _check_spread(path, known[keep], " the fit kept")
    if not scale > 0:
        raise ImageError(f"{path}: the known depths reverse the predicted near/far order (fitted scale {scale:.3g})")
    metric = np.exp(np.clip(scale * depth.astype(np.float64) + shift, -_LOG_CLIP, _LOG_CLIP)).astype(np.float32)
    fitted = np.exp(np.clip(scale * pred + shift, -_LOG_CLIP, _LOG_CLIP))
    residual = float(np.median(np.abs(fitted - known) / known))
    return metric, Alignment(scale, shift, int(pred.size), int(keep.sum()), residual, str(path))
