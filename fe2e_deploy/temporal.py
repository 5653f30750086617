"""Temporal consistency of a clip's depth: every frame mapped into one scale/shift frame of reference.

FE2E's depth is affine-invariant per frame (each frame has its own scale and shift of log depth), so a
clip's raw maps jump from frame to frame. :class:`TemporalAligner` fits, for frame t, the scale and
shift that map its prediction onto the aligned frame t-1, by least squares on the pixels that agree
(iteratively trimmed: pixels far off the fit, moving objects and newly seen surfaces, are left out),
in FE2E's own depth space. Chained, these put every frame in the frame of reference of the clip's
first frame, which is squeezed into the middle of [0, 1] (:data:`HEADROOM`) so that later, nearer or
farther content still fits in [0, 1] for the previews. A frame that agrees with the previous one on
too few pixels (a scene cut) starts a new frame of reference.

Normals need no alignment: FE2E predicts them in camera space with no scale or shift to choose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The first frame (and the frame after a cut) is mapped from [0, 1] to [HEADROOM, 1 - HEADROOM].
HEADROOM = 0.25
#: Pixels used for a fit, at most (maps are subsampled with a regular stride).
FIT_PIXELS = 65_536
#: A pixel agrees with the fit when its residual is below this many robust sigmas (and the floor below).
INLIER_SIGMAS = 5
#: Residuals below this (in [0, 1] depth units) always count as agreeing.
RESIDUAL_FLOOR = 0.01
#: A frame agreeing with the previous one on fewer pixels than this fraction starts a new reference...
CUT_INLIERS = 0.4
#: ... and so does one whose agreeing pixels correlate less than this with the previous frame's.
CUT_CORRELATION = 0.5
TRIM_ROUNDS = 3
#: Lines tried by the least-median start, and the pixels their median residual is taken over.
HYPOTHESES, PROBE_PIXELS = 256, 4096

TEMPORAL_MODES = ("align", "none")


@dataclass
class Fit:
    scale: float
    shift: float
    inliers: float  # fraction of the sampled pixels that agree
    correlation: float  # of the frame and the previous aligned frame on those pixels
    reset: bool  # a new frame of reference (first frame or a scene cut)


def robust_fit(pred: np.ndarray, target: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``(scale, shift, inliers)`` (a mask of the flattened pixels) minimising ``|scale * pred + shift - target|``
    on the pixels that agree: least median of squares over lines through random pixel pairs (robust to half of
    the pixels disagreeing; seeded, so deterministic), then least squares refitted :data:`TRIM_ROUNDS` times on the
    pixels within :data:`INLIER_SIGMAS` robust sigmas (and always those within :data:`RESIDUAL_FLOOR`)."""
    x = np.asarray(pred, np.float64).ravel()
    y = np.asarray(target, np.float64).ravel()
    finite = np.isfinite(x) & np.isfinite(y)
    if finite.sum() < 16 or np.ptp(x[finite]) < 1e-6:
        return 1.0, 0.0, finite
    rng = np.random.default_rng(0)
    xs, ys = x[finite], y[finite]
    probe = rng.choice(xs.size, min(xs.size, PROBE_PIXELS), replace=False)
    i, j = rng.integers(0, xs.size, (2, HYPOTHESES))
    dx = xs[j] - xs[i]
    ok = np.abs(dx) > 1e-6 * np.ptp(xs)
    scales = (ys[j] - ys[i])[ok] / dx[ok]
    shifts = ys[i][ok] - scales * xs[i][ok]
    residuals = np.abs(scales[:, None] * xs[probe][None] + shifts[:, None] - ys[probe][None])
    best = int(np.argmin(np.median(residuals, axis=1))) if scales.size else None
    scale, shift = (float(scales[best]), float(shifts[best])) if best is not None else _least_squares(xs, ys)
    keep = finite
    for _ in range(TRIM_ROUNDS + 1):
        residual = np.where(finite, np.abs(scale * x + shift - y), np.inf)
        sigma = 1.4826 * np.median(residual[finite])
        keep = residual < max(INLIER_SIGMAS * sigma, RESIDUAL_FLOOR)
        if keep.sum() < 16 or np.ptp(x[keep]) < 1e-6:
            break
        scale, shift = _least_squares(x[keep], y[keep])
    return float(scale), float(shift), keep


def _least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    mx, my = x.mean(), y.mean()
    scale = float(np.mean((x - mx) * (y - my)) / np.mean((x - mx) ** 2))
    return scale, float(my - scale * mx)


def correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation (0 when either is constant)."""
    x, y = x - x.mean(), y - y.mean()
    norm = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / norm) if norm > 0 else 0.0


def _sample(depth: np.ndarray) -> np.ndarray:
    step = max(1, int(np.sqrt(depth.size / FIT_PIXELS)))
    return depth[::step, ::step]


class TemporalAligner:
    """Feed the frames of one clip in order (:meth:`align`); each comes back in the clip's frame of reference."""

    def __init__(self, headroom: float = HEADROOM, cut_inliers: float = CUT_INLIERS, cut_correlation=CUT_CORRELATION):
        self.headroom, self.cut_inliers, self.cut_correlation = headroom, cut_inliers, cut_correlation
        self.previous: np.ndarray | None = None  # the last aligned frame, subsampled
        self.fits: list[Fit] = []

    def align(self, depth: np.ndarray) -> np.ndarray:
        """Frame t's depth ``[H, W]`` (per-frame affine, in [0, 1]) -> float32 in the clip's frame of reference
        (may leave [0, 1] when the clip's depth range grows; previews clip it)."""
        sample = _sample(depth)
        fit = None
        if self.previous is not None and self.previous.shape == sample.shape:
            scale, shift, keep = robust_fit(sample, self.previous)
            inliers = float(keep.mean())
            agree = correlation(sample.ravel()[keep], self.previous.ravel()[keep]) if keep.any() else 0.0
            if inliers >= self.cut_inliers and agree >= self.cut_correlation and scale > 0:
                fit = Fit(scale, shift, inliers, agree, reset=False)
        if fit is None:  # the first frame, or a cut: a new frame of reference
            span = 1.0 - 2 * self.headroom
            fit = Fit(span, self.headroom, 1.0, 1.0, reset=True)
        self.fits.append(fit)
        aligned = (np.asarray(depth, np.float32) * np.float32(fit.scale) + np.float32(fit.shift)).astype(np.float32)
        self.previous = _sample(aligned)
        return aligned
