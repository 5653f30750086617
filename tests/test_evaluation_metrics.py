"""Depth and normal metrics on synthetic scenes whose depth and normals are known analytically."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from fe2e_deploy.evaluation.datasets import open_dataset
from fe2e_deploy.evaluation.metrics import (
    LOG_DEPTH_MAX,
    NORMAL_METRICS,
    PooledAngularErrors,
    align_depth,
    angular_error,
    depth_metrics,
    depth_valid_mask,
    evaluate_depth,
    mean_metrics,
    normal_metrics,
    normal_valid_mask,
    normalize,
)
from fe2e_deploy.evaluation.run import compare_predictions, evaluate_engine
from fe2e_deploy.processing import Prediction

W, H, FOCAL = 64, 48, 50.0


def rays(width: int = W, height: int = H) -> np.ndarray:
    """Pinhole rays ``(x/z, y/z, 1)`` through the pixel centres, camera looking along +z."""
    v, u = np.mgrid[0:height, 0:width] + 0.5
    return np.stack([(u - width / 2) / FOCAL, (v - height / 2) / FOCAL, np.ones((height, width))], axis=-1)


def tilted_plane(normal=(0.2, -0.3, -1.0), distance: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """The plane ``n . X + distance = 0``: depth Z = -distance / (n . ray), normal n (facing the camera)."""
    n = np.asarray(normal, dtype=np.float64) / np.linalg.norm(normal)
    r = rays()
    depth = -distance / (r @ n)
    assert (depth > 0).all()
    return depth, np.broadcast_to(n, r.shape).copy()


def sphere_and_wall(center=(0.1, -0.05, 3.0), radius: float = 1.0, wall: float = 6.0):
    """A sphere in front of the wall z = ``wall``: first ray hit, outward sphere normals, wall normal (0, 0, -1)."""
    r, c = rays(), np.asarray(center)
    a, b, k = np.sum(r * r, axis=-1), r @ c, c @ c - radius**2
    disc = b * b - a * k
    hit = disc > 0
    t = (b - np.sqrt(np.where(hit, disc, 0.0))) / a  # z of the hit, since ray z = 1
    depth = np.where(hit, t, wall)
    sphere_n = (t[..., None] * r - c) / radius
    normals = np.where(hit[..., None], sphere_n, np.array([0.0, 0.0, -1.0]))
    assert 0.1 < hit.mean() < 0.9
    return depth, normals


SCENES = {"plane": tilted_plane, "sphere": sphere_and_wall}


def rotate(normals: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate each unit vector by ``degrees`` about an axis perpendicular to it."""
    ref = np.where(np.abs(normals[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    axis = normalize(np.cross(normals, ref))
    th = math.radians(degrees)
    return normals * math.cos(th) + np.cross(axis, normals) * math.sin(th)


def fe2e_output(depth: np.ndarray) -> np.ndarray:
    """What FE2E predicts: log depth mapped affinely to [0, 1], float32."""
    log = np.log(depth)
    return ((log - log.min()) / (log.max() - log.min())).astype(np.float32)


class QueueEngine:
    """Returns the given predictions in order (the dataset is iterated sorted by name)."""

    name = "queue"

    def __init__(self, predictions):
        self.predictions = list(predictions)

    def predict(self, image):
        return self.predictions.pop(0)


@pytest.mark.parametrize("scene", SCENES)
def test_perfect_prediction_scores_zero(scene):
    depth, normals = SCENES[scene]()
    valid = depth_valid_mask(depth, 1e-3, 10.0)
    m = evaluate_depth(depth, depth, valid, "none", 1e-3, 10.0)
    assert m["abs_rel"] == 0 and m["sq_rel"] == 0 and m["rmse"] == 0 and m["rmse_log"] == 0
    assert m["delta1"] == m["delta2"] == m["delta3"] == 1.0
    n = normal_metrics(angular_error(normals, normals).ravel())
    assert n["mean"] < 1e-4 and n["median"] < 1e-4 and n["a5"] == 100.0


@pytest.mark.parametrize("scene", SCENES)
def test_log_alignment_recovers_an_affine_map_of_log_depth(scene):
    depth, _ = SCENES[scene]()
    valid = depth_valid_mask(depth, 1e-3, 10.0)
    for pred in (fe2e_output(depth), (np.log(depth) - 0.3) / 4.0):
        m = evaluate_depth(pred, depth, valid, "log", 1e-3, 10.0)
        assert m["abs_rel"] < 1e-5 and m["rmse_log"] < 1e-5 and m["delta1"] == 1.0
    # log depth is not affine in depth where the depth range is wide: depth alignment cannot recover it
    if scene == "sphere":
        assert evaluate_depth(fe2e_output(depth), depth, valid, "depth", 1e-3, 10.0)["abs_rel"] > 0.01


@pytest.mark.parametrize("scene", SCENES)
def test_depth_and_disparity_alignment_recover_affine_maps(scene):
    depth, _ = SCENES[scene]()
    valid = depth_valid_mask(depth, 1e-3, 10.0)
    assert evaluate_depth(0.25 * depth - 0.4, depth, valid, "depth", 1e-3, 10.0)["abs_rel"] < 1e-9
    assert evaluate_depth(3.0 / depth + 0.2, depth, valid, "disparity", 1e-3, 10.0)["abs_rel"] < 1e-9


def test_log_alignment_clips_log_depth_at_5_like_fe2e():
    depth = np.geomspace(1.0, 300.0, W * H).reshape(H, W)
    valid = depth_valid_mask(depth, 0.6, 350.0)
    aligned = align_depth(fe2e_output(depth), depth, valid, "log")
    near = depth < math.exp(LOG_DEPTH_MAX) * 0.999
    assert np.allclose(aligned[near], depth[near], rtol=1e-5)
    assert aligned.max() == pytest.approx(math.exp(LOG_DEPTH_MAX))


def test_disparity_alignment_guards_non_positive_disparity():
    depth, _ = sphere_and_wall()
    valid = depth_valid_mask(depth, 1e-3, 10.0)
    pred = 1.0 / depth
    pred[:, :8] = -5.0  # aligned disparity <= 0 here
    aligned = align_depth(pred, depth, valid, "disparity")
    assert np.isfinite(aligned).all() and (aligned > 0).all()
    m = evaluate_depth(pred, depth, valid, "disparity", 1e-3, 10.0)
    assert all(math.isfinite(v) for v in m.values())


def test_known_scale_errors_without_alignment():
    depth, _ = sphere_and_wall()
    valid = depth_valid_mask(depth, 1e-3, 10.0)
    m = evaluate_depth(1.1 * depth, depth, valid, "none", 1e-3, 10.0)
    assert m["abs_rel"] == pytest.approx(0.1)
    assert m["sq_rel"] == pytest.approx(0.01 * depth.mean())
    assert m["rmse"] == pytest.approx(0.1 * math.sqrt(np.mean(depth**2)))
    assert m["rmse_log"] == pytest.approx(math.log(1.1))
    assert m["delta1"] == 1.0
    m = evaluate_depth(depth / 1.3, depth, valid, "none", 1e-3, 10.0)  # ratio 1.3: outside 1.25, inside 1.25^2
    assert m["abs_rel"] == pytest.approx(1 - 1 / 1.3)
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.0, 1.0, 1.0)


def test_invalid_pixels_are_excluded_and_predictions_clipped_to_the_range():
    depth, _ = tilted_plane()
    gt = depth.copy()
    gt[:10] = 0.0  # no measurement
    gt[-5:] = 50.0  # beyond max_depth
    mask = np.ones_like(gt, dtype=bool)
    mask[:, :6] = False  # masked out
    valid = depth_valid_mask(gt, 1e-3, 10.0, mask)
    assert valid.sum() == (H - 15) * (W - 6)
    pred = depth.copy()
    pred[~valid] = 123.0  # garbage where the GT is invalid
    assert evaluate_depth(pred, gt, valid, "none", 1e-3, 10.0)["abs_rel"] == 0.0
    far = evaluate_depth(np.full_like(gt, 100.0), gt, valid, "none", 1e-3, 10.0)  # clipped to 10
    assert far["abs_rel"] == pytest.approx(np.mean((10.0 - gt[valid]) / gt[valid]))


def test_normals_rotated_by_10_degrees():
    for scene in SCENES.values():
        _, normals = scene()
        errors = angular_error(rotate(normals, 10.0), normals).ravel()
        m = normal_metrics(errors)
        assert m["mean"] == pytest.approx(10.0, abs=1e-6)
        assert m["median"] == pytest.approx(10.0, abs=1e-6)
        assert m["rmse"] == pytest.approx(10.0, abs=1e-6)
        assert (m["a5"], m["a7.5"], m["a11.25"], m["a22.5"], m["a30"]) == (0.0, 0.0, 100.0, 100.0, 100.0)
        pooled = PooledAngularErrors()
        pooled.add(errors)
        p = pooled.result()
        assert p["median"] == m["median"]
        assert all(p[k] == pytest.approx(m[k], abs=1e-9) for k in NORMAL_METRICS)


def test_normals_are_normalised_and_zero_gt_is_invalid():
    _, normals = tilted_plane()
    gt = normals.copy()
    gt[:4] = 0.0
    mask = np.ones((H, W), dtype=bool)
    mask[:, -3:] = False
    valid = normal_valid_mask(gt, mask)
    assert valid.sum() == (H - 4) * (W - 3)
    errors = angular_error(3.0 * normals[valid], 0.5 * gt[valid])
    assert errors.max() < 1e-4


@pytest.mark.parametrize("count", [10001, 7778, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pooled_median_equals_numpy_for_odd_and_even_counts(count, dtype):
    """The pooled median is np.median of every pooled error (an even count averages the two middle values)."""
    errors = np.random.default_rng(count).gamma(2.0, 8.0, size=count).clip(0, 180).astype(dtype)
    pooled = PooledAngularErrors()
    for chunk in np.array_split(errors, min(7, count)):
        pooled.add(chunk)
    result = pooled.result()
    expected = float(np.median(errors.astype(np.float64)))
    assert result["median"] == expected
    if count % 2 == 0:  # the lower middle value alone (the old histogram median) would be off
        assert result["median"] != float(np.sort(errors)[count // 2 - 1])
    assert result["median"] == pytest.approx(float(np.median(errors)), rel=1e-7)  # numpy's own float32 median
    assert result["mean"] == pytest.approx(errors.astype(np.float64).mean(), rel=1e-12)
    assert pooled.result()["median"] == expected  # asking twice gives the same value


def write_generic(root, scenes, normals_fmt="npy"):
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    (root / "normals").mkdir()
    for i, (depth, normals) in enumerate(scenes):
        Image.new("RGB", (W, H), (i * 40, 90, 160)).save(root / "rgb" / f"im{i}.png")
        np.save(root / "depth" / f"im{i}.npy", depth.astype(np.float32))
        np.save(root / "normals" / f"im{i}.npy", normals.astype(np.float32))
    return root


def test_depth_is_averaged_per_image_and_normals_pooled(tmp_path):
    """Image 0 has 1/4 of the valid pixels of image 1: per-image and pooled means differ as expected."""
    depth, normals = tilted_plane()
    d0, n0 = depth.copy(), normals.copy()
    d0[: 3 * H // 4] = 0.0  # 1/4 of the pixels valid
    n0[: 3 * H // 4] = 0.0
    root = write_generic(tmp_path / "ds", [(d0, n0), (depth, normals)])

    data = open_dataset(root, "depth")
    preds = [Prediction(1.1 * depth, normals), Prediction(1.3 * depth, normals)]
    report = evaluate_engine(QueueEngine(preds), data, "depth", "none", progress=False)
    assert [m["valid_pixels"] for m in report["per_image"]] == [H * W // 4, H * W]
    assert report["metrics"]["abs_rel"] == pytest.approx((0.1 + 0.3) / 2)  # not (0.1 + 4 * 0.3) / 5
    assert report["metrics"]["delta1"] == pytest.approx(0.5)

    data = open_dataset(root, "normals")
    preds = [Prediction(depth, rotate(normals, 10.0)), Prediction(depth, rotate(normals, 20.0))]
    report = evaluate_engine(QueueEngine(preds), data, "normals", progress=False)
    m = report["metrics"]
    assert m["mean"] == pytest.approx((10 + 4 * 20) / 5, abs=1e-5)  # not (10 + 20) / 2
    assert m["median"] == pytest.approx(20.0, abs=1e-3)
    assert m["a11.25"] == pytest.approx(20.0) and m["a22.5"] == pytest.approx(100.0)
    assert [r["mean"] for r in report["per_image"]] == pytest.approx([10.0, 20.0], abs=1e-5)


def test_fe2e_like_engine_is_recovered_end_to_end(tmp_path):
    scenes = [sphere_and_wall(), tilted_plane()]
    root = write_generic(tmp_path / "ds", scenes)
    preds = [Prediction(fe2e_output(d), n.astype(np.float32)) for d, n in scenes]
    report = evaluate_engine(QueueEngine(preds), open_dataset(root, "depth"), "depth", "log", progress=False)
    assert report["metrics"]["abs_rel"] < 1e-5 and report["metrics"]["delta1"] == 1.0
    preds = [Prediction(fe2e_output(d), n.astype(np.float32)) for d, n in scenes]
    report = evaluate_engine(QueueEngine(preds), open_dataset(root, "normals"), "normals", progress=False)
    assert report["metrics"]["mean"] < 1e-3 and report["metrics"]["a5"] == 100.0


def test_predictions_are_resized_to_the_ground_truth(tmp_path):
    depth, normals = tilted_plane()
    root = write_generic(tmp_path / "ds", [(depth, normals)])
    small = Prediction(np.full((H // 2, W // 2), 0.5, np.float32), np.broadcast_to(normals[0, 0], (H // 2, W // 2, 3)))
    report = evaluate_engine(QueueEngine([small]), open_dataset(root, "normals"), "normals", progress=False)
    assert report["metrics"]["mean"] < 1e-3


def test_compare_predictions():
    depth, normals = sphere_and_wall()
    a = Prediction(fe2e_output(depth), normals.astype(np.float32))
    same = compare_predictions(a, a)
    assert same["depth_abs_rel"] < 1e-6 and same["depth_rel_l2"] == 0 and same["normals_mean_deg"] < 1e-3
    b = Prediction(0.5 * a.depth + 0.25, rotate(normals, 10.0).astype(np.float32))
    m = compare_predictions(a, b)
    assert m["depth_abs_rel"] < 1e-6  # an affine map of A's depth is aligned away
    assert m["depth_rel_l2"] == pytest.approx(np.linalg.norm(b.depth - a.depth) / np.linalg.norm(a.depth), rel=1e-6)
    assert m["normals_mean_deg"] == pytest.approx(10.0, abs=1e-3)


def test_bad_inputs():
    depth, _ = tilted_plane()
    valid = np.ones_like(depth, dtype=bool)
    with pytest.raises(ValueError, match="alignment"):
        align_depth(depth, depth, valid, "median")
    with pytest.raises(ValueError, match="no valid"):
        depth_metrics(depth, depth, np.zeros_like(valid))
    with pytest.raises(ValueError, match="average"):
        mean_metrics([])
