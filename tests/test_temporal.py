"""Temporal alignment of a clip's depth: known per-frame scale/shift recovered, outliers ignored, cuts reset."""

from __future__ import annotations

import numpy as np
import pytest

from fe2e_deploy.temporal import HEADROOM, TemporalAligner, robust_fit


def true_sequence(frames: int = 20, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """A static scene's depth-like field in [0, 1], repeated: ``[T, H, W]`` (a still camera; FE2E's per-frame
    affine ambiguity cannot tell a global change of the scene's depth from a change of scale/shift)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    phase = rng.uniform(0, 2 * np.pi, 2)
    field = 0.5 + 0.3 * np.sin(3 * xx + phase[0]) * np.cos(2 * yy + phase[1]) + 0.1 * yy
    return np.repeat(field[None], frames, axis=0)


def distort(truth: np.ndarray, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each frame through its own affine map (what an affine-invariant model returns): (frames, scales, shifts)."""
    rng = np.random.default_rng(seed)
    scales, shifts = rng.uniform(0.5, 2.0, len(truth)), rng.uniform(-0.3, 0.3, len(truth))
    return (truth - shifts[:, None, None]) / scales[:, None, None], scales, shifts


def test_known_per_frame_scale_and_shift_are_recovered():
    truth = true_sequence()
    frames, scales, shifts = distort(truth)
    aligner = TemporalAligner()
    aligned = np.stack([aligner.align(f.astype(np.float32)) for f in frames])
    # every frame in the first frame's frame of reference, squeezed into [HEADROOM, 1 - HEADROOM]
    span = 1 - 2 * HEADROOM
    expected = span * (truth - shifts[0]) / scales[0] + HEADROOM
    np.testing.assert_allclose(aligned, expected, atol=2e-5)
    # and the fits are the inverse of the distortion, relative to frame 0
    for t, fit in enumerate(aligner.fits[1:], start=1):
        assert fit.scale == pytest.approx((1 - 2 * HEADROOM) * scales[t] / scales[0], rel=1e-4)
        assert not fit.reset
    assert aligner.fits[0].reset


def test_outlier_pixels_do_not_bias_the_fit():
    truth = true_sequence(frames=12)
    frames, scales, _ = distort(truth, seed=2)
    rng = np.random.default_rng(3)
    for t in range(1, len(frames)):  # a moving object: 14% of each frame, so up to 28% disagree
        y, x = rng.integers(0, 30), rng.integers(0, 40)
        frames[t, y : y + 18, x : x + 24] = rng.uniform(-1, 2)
    aligner = TemporalAligner()
    for f in frames:
        aligner.align(f.astype(np.float32))
    for t, fit in enumerate(aligner.fits[1:], start=1):
        assert fit.scale == pytest.approx((1 - 2 * HEADROOM) * scales[t] / scales[0], rel=1e-3), t
        assert 0.6 < fit.inliers < 0.95  # the object where it is now and where it was


def test_a_scene_cut_starts_a_new_frame_of_reference():
    first = distort(true_sequence(frames=6, seed=0), seed=4)[0]
    rng = np.random.default_rng(5)
    second = rng.uniform(0, 1, (6, 48, 64))  # unrelated content: nothing agrees with the last frame
    aligner = TemporalAligner()
    for f in np.concatenate([first, second]):
        aligner.align(f.astype(np.float32))
    assert [fit.reset for fit in aligner.fits] == [True] + [False] * 5 + [True] + [True] * 5
    none = TemporalAligner(cut_inliers=0.0, cut_correlation=-1.0)  # no reset: the fit onto noise is used
    for f in np.concatenate([first, second[:1]]):
        none.align(f.astype(np.float32))
    assert not none.fits[-1].reset


def test_robust_fit_exact_on_clean_data():
    rng = np.random.default_rng(6)
    x = rng.uniform(0, 1, 5000)
    scale, shift, inliers = robust_fit(x, 1.7 * x - 0.2)
    assert scale == pytest.approx(1.7, abs=1e-9) and shift == pytest.approx(-0.2, abs=1e-9) and inliers.all()
