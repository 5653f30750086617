"""The domain-randomised training generator and the held-out second renderer: exact geometry, determinism,
and the rule that the held-out renderer never feeds training (issue 24)."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from fe2e_deploy.evaluation.heldout_renderer import (
    Surface,
    render_heldout,
    sd_ball,
    sd_ground,
    trace,
    write_heldout_set,
)
from fe2e_deploy.randomised_scenes import (
    KINDS,
    box,
    cast,
    cone,
    cylinder,
    plane,
    randomised_sample,
    rotation,
    sphere,
    torus,
)
from fe2e_deploy.scenes import random_sample
from fe2e_deploy.train.demo_model import GENERATORS, Recipe, constant_baselines, mixed_sample, render_set

ROOT = Path(__file__).resolve().parents[1]
ORIGIN = np.zeros((1, 3))


def _ray(*direction) -> np.ndarray:
    return np.array([direction], float)


def _one(hit, direction) -> tuple[float, np.ndarray]:
    t, n = hit(ORIGIN, _ray(*direction))
    return float(t[0]), n[0] / np.linalg.norm(n[0])


def test_plane_sphere_and_box_hits_are_exact():
    t, n = _one(plane((0, 0, 4), (0, 0, -1)), (0, 0, 1))
    assert t == pytest.approx(4, abs=1e-12) and np.allclose(n, (0, 0, -1))
    t, n = _one(sphere((0, 0, 5), 1.0), (0, 0, 1))
    assert t == pytest.approx(4, abs=1e-12) and np.allclose(n, (0, 0, -1))
    # a box turned 45 deg about y: the centre ray meets its front edge at z = 5 - sqrt(2)
    t, _ = _one(box((0, 0, 5), (1, 1, 1), rotation(yaw=np.pi / 4)), (0, 0, 1))
    assert t == pytest.approx(5 - np.sqrt(2), abs=1e-12)
    t, n = _one(box((0, 0, 5), (1, 1, 1), rotation(yaw=np.pi / 4)), (0.1, 0, 1))  # the right-hand front face
    assert np.allclose(n, (np.sqrt(0.5), 0, -np.sqrt(0.5)))
    assert np.isinf(_one(box((0, 0, 5), (1, 1, 1)), (1, 0, 1))[0])  # misses


def test_cylinder_and_cone_hits_are_exact():
    # upright cylinder (axis y) of radius 0.5 at z = 4: the side at z = 3.5, the normal towards the camera
    t, n = _one(cylinder((0, 0, 4), 1.0, 0.5), (0, 0, 1))
    assert t == pytest.approx(3.5, abs=1e-12) and np.allclose(n, (0, 0, -1))
    # a ray from below through the bottom cap (y = +1 in OpenCV's y-down world)
    t, n = cylinder((0, 0, 4), 1.0, 0.5)(np.array([[0.0, 3.0, 4.0]]), _ray(0, -1, 0))
    assert t[0] == pytest.approx(2.0, abs=1e-12) and np.allclose(n[0], (0, 1, 0))
    # a frustum, radius 0.2 at y = -1 and 0.6 at y = +1: at y = 0 the radius is 0.4; its slope makes the
    # normal tilt by atan(0.2): (0, -k r, -r) with k = 0.2
    t, n = _one(cone((0, 0, 4), 1.0, 0.2, 0.6), (0, 0, 1))
    assert t == pytest.approx(3.6, abs=1e-12)
    assert np.allclose(n, np.array([0, -0.2, -1]) / np.linalg.norm([0, -0.2, -1]))
    # a cone (apex radius 0) lying along x: the centre ray meets its side at radius r(x=0) = 0.25
    t, _ = _one(cone((0, 0, 4), 1.0, 0.0, 0.5, rotation(roll=np.pi / 2)), (0, 0, 1))
    assert t == pytest.approx(3.75, abs=1e-12)


def test_torus_hit_is_exact_and_first():
    # ring in the y-z plane (axis = world x) around (0, 0, 5): the centre ray meets the near tube at 5 - R - r
    ring = torus((0, 0, 5), 1.0, 0.25, rotation(roll=np.pi / 2))
    t, n = _one(ring, (0, 0, 1))
    assert t == pytest.approx(3.75, abs=1e-10) and np.allclose(n, (0, 0, -1), atol=1e-8)
    # facing the camera (axis = z), the centre ray passes through the hole
    assert np.isinf(_one(torus((0, 0, 5), 1.0, 0.25, rotation(pitch=np.pi / 2)), (0, 0, 1))[0])
    # a grid of rays: every hit lies on the torus (quartic residual ~ 0), its normal is the gradient, and no
    # point of the ray before it is inside the tube
    flat = torus((0.3, -0.2, 4), 0.8, 0.3, rotation(yaw=0.3, pitch=0.9))
    yy, xx = np.mgrid[-1:1:41j, -1:1:41j] * 0.4
    dirs = np.stack([xx.ravel() + 0.3 / 4, yy.ravel() - 0.05, np.ones(xx.size)], -1)
    t, n = flat(ORIGIN, dirs)
    hit = np.isfinite(t)
    assert 200 < hit.sum() < len(t)
    rot = rotation(yaw=0.3, pitch=0.9)
    local = (dirs[hit] * t[hit, None] - (0.3, -0.2, 4)) @ rot
    ring_dist = np.hypot(np.hypot(local[:, 0], local[:, 2]) - 0.8, local[:, 1]) - 0.3
    assert np.abs(ring_dist).max() < 1e-9
    radial = local * np.array([1, 0, 1])
    centre = radial / np.linalg.norm(radial, axis=-1, keepdims=True) * 0.8
    expected = (local - centre) / 0.3
    assert np.allclose(n[hit] / np.linalg.norm(n[hit], axis=-1, keepdims=True), expected @ rot.T, atol=1e-7)
    for frac in np.linspace(0.05, 0.999, 40):  # nothing earlier along the ray
        p = (dirs[hit] * (t[hit, None] * frac) - (0.3, -0.2, 4)) @ rot
        assert (np.hypot(np.hypot(p[:, 0], p[:, 2]) - 0.8, p[:, 1]) > 0.3 - 1e-9).all()


def test_cast_picks_the_nearest_surface_and_faces_the_camera():
    objects = [plane((0, 0, 6), (0, 0, 1)), sphere((0, 0, 4), 1.0), box((0, 0, 8), (5, 5, 0.1))]

    class Item:
        def __init__(self, hit):
            self.hit = hit

    dirs = np.array([[0, 0, 1.0], [0.5, 0, 1.0], [0, 0, -1.0]])
    t, n, index = cast([Item(h) for h in objects], ORIGIN, dirs)
    assert t[0] == pytest.approx(3) and index[0] == 1
    assert t[1] == pytest.approx(6) and index[1] == 0 and np.allclose(n[1], (0, 0, -1))  # flipped to face
    assert np.isinf(t[2]) and index[2] == -1 and not n[2].any()


@pytest.mark.parametrize("kind", KINDS)
def test_randomised_scenes_have_exact_geometry_and_are_deterministic(kind):
    width, height = 64, 48
    for seed in range(3):
        a = randomised_sample(seed, width, height, kind=kind)
        b = randomised_sample(seed, width, height, kind=kind)
        assert np.array_equal(np.asarray(a.rgb), np.asarray(b.rgb))
        assert np.array_equal(a.depth, b.depth) and np.array_equal(a.normals, b.normals)
        assert a.rgb.size == (width, height) and a.depth.shape == (height, width)
        hit = a.depth > 0
        assert hit.mean() > 0.3
        np.testing.assert_allclose(np.linalg.norm(a.normals[hit], axis=-1), 1.0, atol=1e-5)
        assert not a.normals[~hit].any()
    assert not np.array_equal(randomised_sample(0, width, height).depth, randomised_sample(1, width, height).depth)


def test_randomised_depth_matches_the_rendered_primitives():
    """Re-cast the pixel-centre rays of a sample through the same scene: the stored depth is z of the hit."""
    from fe2e_deploy.randomised_scenes import camera_rays, randomised_scene

    scene, cam, _ = randomised_scene(5, 64, 48)
    sample = randomised_sample(5, 64, 48)
    cam_rays, world = camera_rays(64, 48, cam)
    t, normals, _ = cast(scene.objects, ORIGIN, world)
    hit = np.isfinite(t)
    assert np.allclose(sample.depth.reshape(-1)[hit], (cam_rays[hit] * t[hit, None])[:, 2], rtol=1e-6)
    n_cam = (normals @ cam.rotation)[hit]
    assert np.allclose(sample.normals.reshape(-1, 3)[hit], n_cam, atol=1e-6)
    assert (np.sum(n_cam * cam_rays[hit], -1) < 0).all()  # facing the camera


def test_heldout_renderer_plane_and_sphere_depth_are_exact():
    surfaces = [Surface(sd_ground(0.0), np.ones(3)), Surface(sd_ball((0, 1, 5), 1.0), np.ones(3))]
    eye = np.array([0.0, 1.0, 0.0])
    dirs = np.array([[0, 0, 1.0], [0, -0.5, 1.0], [0, 1.0, 0.2]])
    dirs = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    t, which = trace(surfaces, eye, dirs)
    assert t[0] == pytest.approx(4.0, abs=1e-7) and which[0] == 1  # sphere front at z = 4
    assert t[1] * dirs[1, 1] == pytest.approx(-1.0, abs=1e-7) and which[1] == 0  # the ground, 1 m below
    assert np.isinf(t[2]) and which[2] == -1  # the sky


def test_heldout_scenes_follow_the_camera_conventions_and_are_deterministic():
    for seed in range(3):  # one of each kind
        s = render_heldout(seed, 48, 36, supersample=1)
        again = render_heldout(seed, 48, 36, supersample=1)
        assert np.array_equal(s.depth, again.depth) and np.array_equal(np.asarray(s.rgb), np.asarray(again.rgb))
        hit = s.depth > 0
        assert hit.mean() > 0.4
        np.testing.assert_allclose(np.linalg.norm(s.normals[hit], axis=-1), 1.0, atol=1e-5)
        yy, xx = np.mgrid[0:36, 0:48] + 0.5
        rays = np.stack([(xx - 24) / s.focal, (yy - 18) / s.focal, np.ones_like(xx)], -1)
        assert (np.sum(s.normals * rays, -1)[hit] < 0).all()  # facing the camera


def test_heldout_set_is_in_the_evaluation_layout(tmp_path):
    names = write_heldout_set(tmp_path, 3, 32, 24)
    assert len(names) == 3
    for name in names:
        assert (tmp_path / "rgb" / f"{name}.png").is_file()
        assert np.load(tmp_path / "depth" / f"{name}.npy").shape == (24, 32)
        assert np.load(tmp_path / "normals" / f"{name}.npy").shape == (24, 32, 3)
    base = constant_baselines(tmp_path)
    assert base["images"] == 3 and base["depth_abs_rel_constant_log_aligned"] > 0.05


def test_training_never_uses_the_heldout_renderer():
    assert set(GENERATORS) == {"v1", "randomised", "mixed"} and Recipe().generator in GENERATORS
    for module in ("fe2e_deploy/train", "fe2e_deploy/randomised_scenes.py", "fe2e_deploy/scenes.py"):
        for path in [ROOT / module] if module.endswith(".py") else sorted((ROOT / module).glob("*.py")):
            tree = ast.parse(path.read_text())
            imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            assert not any("heldout" in m for m in imported), path


@pytest.mark.slow  # worker processes start by importing the package (torch): ~20 s
def test_render_set_is_the_same_in_worker_processes():
    one = render_set(10, 64, (32, 24), "randomised", processes=1)
    two = render_set(10, 64, (32, 24), "randomised", processes=2)
    for a, b in zip(one, two, strict=True):
        assert np.array_equal(a.depth, b.depth) and np.array_equal(np.asarray(a.rgb), np.asarray(b.rgb))
    with pytest.raises(ValueError, match="unknown scene generator"):
        render_set(0, 1, (32, 24), "heldout")


def test_mixed_generator_takes_every_fourth_seed_from_the_first_generator():
    for seed in range(8):
        want = (random_sample if seed % 4 == 3 else randomised_sample)(seed, 32, 24)
        got = mixed_sample(seed, 32, 24)
        assert np.array_equal(got.depth, want.depth) and np.array_equal(np.asarray(got.rgb), np.asarray(want.rgb))
