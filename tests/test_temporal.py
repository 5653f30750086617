"""Temporal alignment of a clip's depth: known per-frame scale/shift recovered, outliers ignored, cuts reset."""

from __future__ import annotations

import numpy as np
import pytest

from fe2e_deploy.temporal import HEADROOM, TemporalAligner, picture_shift, robust_fit


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


def panning_clip(frames: int = 10, step: int = 2, height: int = 48, width: int = 64, seed: int = 7):
    """A camera sliding right over a wide scene, ``step`` pixels per frame: the true depth-like crops
    ``[T, H, W]`` and the crops of a textured picture of the same scene (what the video shows)."""
    rng = np.random.default_rng(seed)
    wide = width + step * frames
    yy, xx = np.mgrid[0:height, 0:wide] / np.array([height, width])[:, None, None]
    field = 0.5 + 0.3 * np.sin(2.5 * xx + 0.4) * np.cos(1.5 * yy) + 0.15 * xx
    texture = rng.uniform(0, 255, (height, wide)).astype(np.float32)
    texture = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) / 3  # some structure, still sharp
    depth = np.stack([field[:, t * step : t * step + width] for t in range(frames)])
    pictures = [texture[:, t * step : t * step + width] for t in range(frames)]
    return depth, pictures


def test_picture_shift_measures_the_camera_motion():
    _, pictures = panning_clip(frames=4, step=3)
    assert picture_shift(pictures[0], pictures[1]) == (0.0, -3 / 64)  # content moves left as the camera pans right
    assert picture_shift(pictures[1], pictures[0]) == (0.0, 3 / 64)
    assert picture_shift(pictures[0], pictures[0]) == (0.0, 0.0)
    rolled = np.roll(pictures[0], (5, -7), axis=(0, 1))  # both axes
    assert picture_shift(pictures[0], rolled) == (5 / 48, -7 / 64)
    assert picture_shift(pictures[0], pictures[1][:40]) == (0.0, 0.0)  # thumbnails of different sizes


def test_a_pan_is_aligned_on_the_same_surfaces_not_the_same_pixels():
    truth, pictures = panning_clip()
    frames, scales, shifts = distort(truth, seed=8)
    moving = TemporalAligner(smoothing=0.0)
    aligned = np.stack([moving.align(f.astype(np.float32), p) for f, p in zip(frames, pictures, strict=True)])
    span = 1 - 2 * HEADROOM
    np.testing.assert_allclose(aligned, span * (truth - shifts[0]) / scales[0] + HEADROOM, atol=2e-5)
    assert [fit.motion for fit in moving.fits] == [(0, 0)] + [(0, -2)] * (len(frames) - 1)
    still = TemporalAligner(smoothing=0.0)  # no pictures: each pixel compared with what slid into its place
    for f in frames:
        still.align(f.astype(np.float32))
    errors = [abs(fit.scale / ((1 - 2 * HEADROOM) * scales[t] / scales[0]) - 1) for t, fit in enumerate(still.fits)]
    assert max(errors) > 0.02


def test_smoothing_averages_jitter_where_frames_agree_and_keeps_what_changed():
    truth = true_sequence(frames=12)
    rng = np.random.default_rng(9)
    noisy = truth + rng.normal(0, 0.004, truth.shape)  # the model's frame-to-frame jitter
    noisy[6:, 10:20, 10:30] += 0.5  # an object appears at frame 6 and stays
    steps = {}
    for smoothing in (0.0, 0.7):
        aligner = TemporalAligner(smoothing=smoothing)
        out = np.stack([aligner.align(f.astype(np.float32)) for f in noisy])
        steps[smoothing] = np.abs(np.diff(out[:6], axis=0)).mean()
        # the new object is not blended with what was there before it
        own = noisy[6, 10:20, 10:30] * aligner.fits[6].scale + aligner.fits[6].shift
        np.testing.assert_allclose(out[6, 10:20, 10:30], own, atol=1e-5)
        if smoothing:
            assert 0.85 < aligner.fits[6].smoothed < 0.97
    assert steps[0.7] < 0.6 * steps[0.0]
    with pytest.raises(ValueError, match="smoothing"):
        TemporalAligner(smoothing=1.0)
