"""Temporal consistency of a clip's depth: every frame mapped into one scale/shift frame of reference.

FE2E's depth is affine-invariant per frame (each frame has its own scale and shift of log depth), so a
clip's raw maps jump from frame to frame. :class:`TemporalAligner` fits, for frame t, the scale and
shift that map its prediction onto the aligned frame t-1, by least squares on the pixels that agree
(iteratively trimmed: pixels far off the fit, moving objects and newly seen surfaces, are left out),
in FE2E's own depth space. The frames' images give the camera's motion first: the shift of frame t's
picture against frame t-1's (phase correlation of grey thumbnails), so that a pan or a turn compares
each pixel with the same surface one frame earlier, not with what slid into its place. Chained, these
put every frame in the frame of reference of the clip's first frame, which is squeezed into the middle
of [0, 1] (:data:`HEADROOM`) so that later, nearer or farther content still fits in [0, 1] for the
previews. A frame that agrees with the previous one on too few pixels (a scene cut) starts a new frame
of reference. Then, on the pixels that agree, the aligned depth is blended with the previous aligned
frame moved by the same shift (:data:`SMOOTHING`): the model's frame-to-frame jitter averages out,
while moving objects and new surfaces (which do not agree) keep the frame's own prediction.

What no alignment of affine-invariant maps can recover: a change of the whole scene's depth that
looks like a change of scale (walking towards a wall). Only the shift of the picture is modelled, not
rotation about the view axis or zoom; those frames are aligned on whatever pixels still agree.

Normals need no alignment: FE2E predicts them in camera space with no scale or shift to choose.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

#: The first frame (and the frame after a cut) is mapped from [0, 1] to [HEADROOM, 1 - HEADROOM].
HEADROOM = 0.25
#: Pixels used for a fit, at most (maps are subsampled with a regular stride).
FIT_PIXELS = 16_384
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
HYPOTHESES, PROBE_PIXELS = 256, 1024

#: Weight of the previous aligned frame (moved by the picture's shift) in each frame's depth, where they agree.
SMOOTHING = 0.7
#: Long side of the grey thumbnails the picture's frame-to-frame shift is measured on.
REGISTRATION_SIZE = 256

TEMPORAL_MODES = ("align", "none")


@dataclass
class Fit:
    scale: float
    shift: float
    inliers: float  # fraction of the sampled pixels that agree
    correlation: float  # of the frame and the previous aligned frame on those pixels
    reset: bool  # a new frame of reference (first frame or a scene cut)
    motion: tuple[int, int] = (0, 0)  # the picture's shift from frame t-1, in pixels (rows, columns) of the map
    smoothed: float = 0.0  # fraction of the map's pixels blended with the previous aligned frame


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
        keep = residual < inlier_threshold(residual)
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
    """A regular subsample of at most about :data:`FIT_PIXELS` pixels."""
    step = max(1, int(np.sqrt(depth.size / FIT_PIXELS)))
    return depth[::step, ::step]


def inlier_threshold(residual: np.ndarray) -> float:
    """The residual under which a pixel agrees with a fit: :data:`INLIER_SIGMAS` robust sigmas, at least the floor."""
    finite = residual[np.isfinite(residual)]
    sigma = 1.4826 * float(np.median(finite)) if finite.size else 0.0
    return max(INLIER_SIGMAS * sigma, RESIDUAL_FLOOR)


def registration_image(image: Image.Image) -> np.ndarray:
    """A frame's grey thumbnail (long side :data:`REGISTRATION_SIZE`), what :func:`picture_shift` compares."""
    grey = image.convert("L")
    grey.thumbnail((REGISTRATION_SIZE, REGISTRATION_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(grey, np.float32)


def picture_shift(previous: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """How far the picture moved from ``previous`` to ``current`` (two :func:`registration_image` thumbnails), as
    fractions of the height and width: ``current[y, x]`` shows what ``previous`` showed at ``(y - dy, x - dx)``.

    Phase correlation (numpy's FFT; OpenCV's ``phaseCorrelate`` does the same but would be a large dependency
    for one function): the peak of the normalised cross-power spectrum of the Hann-windowed thumbnails, to
    the nearest thumbnail pixel. Thumbnails of different sizes (a change of resolution) give no shift."""
    if previous.shape != current.shape:
        return 0.0, 0.0
    window = np.outer(np.hanning(current.shape[0]), np.hanning(current.shape[1])).astype(np.float32)
    a = np.fft.rfft2((previous - previous.mean()) * window)
    b = np.fft.rfft2((current - current.mean()) * window)
    cross = b * np.conj(a)
    surface = np.fft.irfft2(cross / (np.abs(cross) + 1e-12), s=current.shape)
    dy, dx = np.unravel_index(int(np.argmax(surface)), surface.shape)
    height, width = current.shape
    dy, dx = (dy - height if dy > height // 2 else dy), (dx - width if dx > width // 2 else dx)
    return dy / height, dx / width


def shifted(depth: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``depth`` moved by ``(dy, dx)`` pixels (float32; NaN where nothing moved in)."""
    height, width = depth.shape
    out = np.full(depth.shape, np.nan, np.float32)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    out[max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = depth[
        max(-dy, 0) : height + min(-dy, 0), max(-dx, 0) : width + min(-dx, 0)
    ]
    return out


class TemporalAligner:
    """Feed the frames of one clip in order (:meth:`align`); each comes back in the clip's frame of reference."""

    def __init__(
        self,
        headroom: float = HEADROOM,
        cut_inliers: float = CUT_INLIERS,
        cut_correlation: float = CUT_CORRELATION,
        smoothing: float = SMOOTHING,
    ):
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"temporal smoothing {smoothing}: must be in [0, 1)")
        self.headroom, self.cut_inliers, self.cut_correlation = headroom, cut_inliers, cut_correlation
        self.smoothing = smoothing
        self.previous: np.ndarray | None = None  # the last aligned frame, full size
        self.previous_picture: np.ndarray | None = None
        self.fits: list[Fit] = []

    def align(self, depth: np.ndarray, picture: np.ndarray | None = None) -> np.ndarray:
        """Frame t's depth ``[H, W]`` (per-frame affine, in [0, 1]) -> float32 in the clip's frame of reference
        (may leave [0, 1] when the clip's depth range grows; previews clip it). ``picture``: the frame's
        :func:`registration_image`, for the camera's motion (without it, pixels are compared in place)."""
        depth = np.asarray(depth, np.float32)
        fit, threshold, motion = None, 0.0, (0, 0)
        if self.previous is not None and self.previous.shape == depth.shape:
            if picture is not None and self.previous_picture is not None:
                fy, fx = picture_shift(self.previous_picture, picture)
                motion = (round(fy * depth.shape[0]), round(fx * depth.shape[1]))
            before = shifted(self.previous, *motion)
            sample, target = _sample(depth), _sample(before)
            scale, shift, keep = robust_fit(sample, target)
            overlap = np.isfinite(target).ravel()
            inliers = float(keep.sum() / max(overlap.sum(), 1))
            agree = correlation(sample.ravel()[keep], target.ravel()[keep]) if keep.any() else 0.0
            if inliers >= self.cut_inliers and agree >= self.cut_correlation and scale > 0:
                fit = Fit(scale, shift, inliers, agree, reset=False, motion=motion)
                threshold = inlier_threshold(np.abs(scale * sample + shift - target))
        if fit is None:  # the first frame, or a cut: a new frame of reference
            span = 1.0 - 2 * self.headroom
            fit = Fit(span, self.headroom, 1.0, 1.0, reset=True)
        aligned = depth * np.float32(fit.scale)
        aligned += np.float32(fit.shift)
        if not fit.reset and self.smoothing > 0:  # in place: a handful of passes over the full-size map
            towards = np.subtract(before, aligned, out=before)
            with np.errstate(invalid="ignore"):
                agreeing = np.abs(towards) < threshold  # NaN (nothing moved in) never agrees
            towards *= np.float32(self.smoothing)
            np.add(aligned, towards, out=aligned, where=agreeing)
            fit.smoothed = float(np.count_nonzero(agreeing) / agreeing.size)
        self.fits.append(fit)
        self.previous, self.previous_picture = aligned, picture
        return aligned
