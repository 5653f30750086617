"""Depth and surface-normal metrics, following the reference evaluation code.

Depth (Marigold / FE2E): align the prediction to the ground truth (:func:`align_depth`), clip it to
the dataset's depth range, compute the metrics per image on the valid pixels, average over images.
Normals (DSINE / FE2E): angular errors of all valid pixels of the whole dataset pooled together.
All thresholds are strict (``<``), as in the reference code.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import InvalidInput

DEPTH_METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "delta1", "delta2", "delta3")
NORMAL_THRESHOLDS = (5.0, 7.5, 11.25, 22.5, 30.0)
NORMAL_METRICS = ("mean", "median", "rmse", *(f"a{t:g}" for t in NORMAL_THRESHOLDS))
ALIGNMENTS = ("log", "depth", "disparity", "none")

LOG_DEPTH_MAX = 5.0  # FE2E clips the aligned log depth at 5 (e^5 = 148.4 m) before exp
MIN_DISPARITY = 1e-3  # Marigold clips the aligned disparity to this before inverting
MIN_EVAL_DEPTH = 1e-6  # predictions are kept above this so that ratios and logs are defined


def check_alignment(alignment: str) -> str:
    if alignment not in ALIGNMENTS:
        raise InvalidInput(f"alignment {alignment!r} not supported; choose one of {', '.join(ALIGNMENTS)}")
    return alignment


def fit_scale_shift(pred: np.ndarray, target: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(scale, shift)`` minimising ``||scale * pred + shift - target||`` on ``mask``."""
    x = pred[mask].astype(np.float64)
    y = target[mask].astype(np.float64)
    if x.size == 0:
        raise InvalidInput("no valid pixels to fit the scale and shift on")
    a = np.stack([x, np.ones_like(x)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(a, y, rcond=None)
    return float(scale), float(shift)


def align_depth(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, alignment: str = "log") -> np.ndarray:
    """Map an affine-invariant prediction to metric depth using the ground truth on ``valid`` pixels.

    ``log``: least-squares scale/shift of ``pred`` to ``log(gt)``, aligned values clipped at 5, exp (FE2E).
    ``depth``: least-squares scale/shift of ``pred`` to ``gt`` (Marigold ``least_square``).
    ``disparity``: least-squares to ``1 / gt``, clipped to >= 1e-3, inverted (Marigold ``least_square_disparity``).
    ``none``: ``pred`` is already metric depth.
    For ``log`` and ``disparity``, pixels where ``pred <= 0`` are left out of the fit, as in the reference.
    Returns float64 depth (not yet clipped to the dataset's range).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or valid.shape != gt.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape}, ground truth {gt.shape}, mask {valid.shape}")
    if check_alignment(alignment) == "none":
        return pred
    if alignment == "depth":
        scale, shift = fit_scale_shift(pred, gt, valid)
        return pred * scale + shift
    positive = valid & (gt > 0) & (pred > 0)
    if not positive.any():  # an all-zero prediction: fit on the valid pixels rather than fail
        positive = valid & (gt > 0)
    if alignment == "log":
        scale, shift = fit_scale_shift(pred, np.log(np.where(gt > 0, gt, 1.0)), positive)
        return np.exp(np.minimum(pred * scale + shift, LOG_DEPTH_MAX))
    scale, shift = fit_scale_shift(pred, 1.0 / np.where(gt > 0, gt, 1.0), positive)  # disparity
    return 1.0 / np.maximum(pred * scale + shift, MIN_DISPARITY)


def finite_pixels(gt: np.ndarray) -> np.ndarray:
    """``[H, W]`` bool: the pixels whose ground truth (depth ``[H, W]`` or normals ``[H, W, C]``) is finite.

    The one rule for non-finite GT (NaN, +/-Inf: never valid), applied to every dataset's samples.
    """
    finite = np.isfinite(np.asarray(gt))
    return finite.all(axis=-1) if finite.ndim == 3 else finite


def depth_valid_mask(gt: np.ndarray, min_depth: float, max_depth: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Pixels with ``min_depth < gt < max_depth`` (finite) and inside ``mask``."""
    valid = finite_pixels(gt) & (gt > min_depth) & (gt < max_depth)
    return valid if mask is None else valid & mask


def depth_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """The seven depth metrics of one image on its ``valid`` pixels (``pred`` metric and positive).

    AbsRel = mean |p - g| / g, SqRel = mean (p - g)^2 / g, RMSE = sqrt mean (p - g)^2,
    RMSE-log = sqrt mean (ln p - ln g)^2, delta_k = fraction of max(p/g, g/p) < 1.25^k (in [0, 1]).
    """
    p = np.asarray(pred, dtype=np.float64)[valid]
    g = np.asarray(gt, dtype=np.float64)[valid]
    if g.size == 0:
        raise InvalidInput("no valid ground-truth pixels")
    diff = p - g
    ratio = np.maximum(p / g, g / p)
    return {
        "abs_rel": float(np.mean(np.abs(diff) / g)),
        "sq_rel": float(np.mean(diff**2 / g)),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "rmse_log": float(np.sqrt(np.mean((np.log(p) - np.log(g)) ** 2))),
        **{f"delta{k}": float(np.mean(ratio < 1.25**k)) for k in (1, 2, 3)},
    }


def evaluate_depth(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    alignment: str = "log",
    min_depth: float = 0.0,
    max_depth: float = math.inf,
) -> dict[str, float]:
    """Align, clip to ``[min_depth, max_depth]`` (and above 1e-6), then :func:`depth_metrics`."""
    depth = align_depth(pred, gt, valid, alignment)
    depth = np.clip(depth, max(min_depth, MIN_EVAL_DEPTH), max_depth)
    return depth_metrics(depth, gt, valid)


def mean_metrics(per_image: list[dict[str, float]]) -> dict[str, float]:
    """Average each metric over images (the depth convention)."""
    if not per_image:
        raise InvalidInput("no images to average")
    return {k: float(np.mean([m[k] for m in per_image])) for k in per_image[0]}


def normalize(v: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), eps)


def normal_valid_mask(gt: np.ndarray, mask: np.ndarray | None = None, eps: float = 1e-6) -> np.ndarray:
    """GT normals with a finite, non-zero vector, inside ``mask``."""
    gt = np.asarray(gt)
    finite = finite_pixels(gt)
    valid = finite & (np.linalg.norm(np.where(finite[..., None], gt, 0.0), axis=-1) > eps)
    return valid if mask is None else valid & mask


def relative_l2(pred: np.ndarray, ref: np.ndarray) -> float:
    """``||pred - ref|| / ||ref||`` in float64 (0 for two zero arrays, inf when only ``ref`` is zero).

    The one relative error of the toolkit: engine vs engine (``compare``, ``benchmark``) and graph vs
    PyTorch (``export --check``).
    """
    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    norm_ref, norm_diff = float(np.linalg.norm(ref)), float(np.linalg.norm(pred - ref))
    if norm_ref > 0:
        return norm_diff / norm_ref
    return 0.0 if norm_diff == 0 else math.inf


def angular_error(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Angle in degrees between ``[..., 3]`` vectors, both normalised first."""
    cos = np.sum(normalize(pred) * normalize(gt), axis=-1)
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def normal_metrics(errors: np.ndarray) -> dict[str, float]:
    """Mean, median, RMSE (degrees) and % of errors under each threshold, over the 1-D ``errors``."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    if e.size == 0:
        raise InvalidInput("no valid ground-truth normals")
    return {
        "mean": float(e.mean()),
        "median": float(np.median(e)),
        "rmse": float(np.sqrt(np.mean(e**2))),
        **{f"a{t:g}": float(100.0 * np.mean(e < t)) for t in NORMAL_THRESHOLDS},
    }


class PooledAngularErrors:
    """Pools angular errors over a dataset, as DSINE / FE2E do (``torch.cat`` of every image's errors).

    The errors are kept in their own dtype (4 bytes a pixel for the float32 errors of the official
    protocols, 8 for float64), so every metric is exact: the median is ``np.median`` of the pool (the
    mean of the two middle values for an even count). Mean, RMSE and percentages are accumulated as
    they come, in float64.
    """

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.count = 0
        self.total = 0.0
        self.total_sq = 0.0
        self.under = np.zeros(len(NORMAL_THRESHOLDS), dtype=np.int64)

    def add(self, errors: np.ndarray) -> None:
        e = np.asarray(errors).ravel()
        if not np.issubdtype(e.dtype, np.floating):
            e = e.astype(np.float64)
        self.chunks.append(e.copy())
        e64 = e.astype(np.float64)
        self.count += e.size
        self.total += float(e64.sum())
        self.total_sq += float(np.sum(e64**2))
        self.under += np.array([np.count_nonzero(e < t) for t in NORMAL_THRESHOLDS])

    def median(self) -> float:
        """``np.median`` of all pooled errors (computed in float64, so two float32 middles average exactly)."""
        pool = np.concatenate(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks = [pool]  # concatenated once
        k = (pool.size - 1) // 2
        if pool.size % 2:
            return float(np.partition(pool, k)[k])
        part = np.partition(pool, (k, k + 1))
        return (float(part[k]) + float(part[k + 1])) / 2.0

    def result(self) -> dict[str, float]:
        if self.count == 0:
            raise InvalidInput("no valid ground-truth normals")
        return {
            "mean": self.total / self.count,
            "median": float(self.median()),
            "rmse": math.sqrt(self.total_sq / self.count),
            **{f"a{t:g}": float(100.0 * u / self.count) for t, u in zip(NORMAL_THRESHOLDS, self.under, strict=True)},
        }
