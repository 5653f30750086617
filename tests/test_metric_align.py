"""``--align-to``: the robust log-space scale/shift fit, the align files, and metric outputs from ``infer``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import model_file_args, scene_image
from PIL import Image
from plyfile import PlyData
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.errors import ImageError, MissingInput
from fe2e_deploy.metric_align import align_depth_map, find_align_files

runner = CliRunner()
SCALE, SHIFT = 1.7, 0.3  # log(depth) = SCALE * d + SHIFT


def relative_map(seed: int = 0, shape=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.05, 0.95, shape).astype(np.float32)


def known(d: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.exp(SCALE * d[v, u].astype(np.float64) + SHIFT)


def test_sparse_fit_recovers_scale_and_shift_despite_outliers(tmp_path):
    d = relative_map()
    rng = np.random.default_rng(1)
    u, v = rng.integers(0, 64, 60), rng.integers(0, 48, 60)
    depth = known(d, u, v)
    depth[:8] *= rng.uniform(2, 5, 8)  # 8 gross outliers
    np.save(tmp_path / "a.npy", np.stack([u, v, depth], -1))
    metric, fit = align_depth_map(d, tmp_path / "a.npy")
    assert abs(fit.scale - SCALE) / SCALE < 1e-4 and abs(fit.shift - SHIFT) / SHIFT < 1e-4
    assert (fit.points, fit.inliers) == (60, 52)
    np.testing.assert_allclose(metric, np.exp(SCALE * d.astype(np.float64) + SHIFT), rtol=1e-5)
    # the same points in a csv, at twice the map's size (u, v in pixels of the input image)
    rows = "\n".join(
        f"{2 * a + 0.5},{2 * b + 0.5},{float(c)!r}" for a, b, c in zip(u[8:], v[8:], depth[8:], strict=True)
    )
    (tmp_path / "a.csv").write_text("u,v,depth\n" + rows + "\n")
    _, fit = align_depth_map(d, tmp_path / "a.csv", image_size=(128, 96))
    assert abs(fit.scale - SCALE) / SCALE < 1e-4 and abs(fit.shift - SHIFT) / SHIFT < 1e-4
    assert fit.median_abs_rel < 1e-6


def test_dense_fit_ignores_nan_and_zero(tmp_path):
    d = relative_map(2)
    dense = np.exp(SCALE * d.astype(np.float64) + SHIFT)
    dense[:10] = np.nan
    dense[10:20] = 0.0
    np.save(tmp_path / "a.npy", dense)
    _, fit = align_depth_map(d, tmp_path / "a.npy")
    assert fit.points == 64 * 28
    assert abs(fit.scale - SCALE) / SCALE < 1e-4 and abs(fit.shift - SHIFT) / SHIFT < 1e-4


def test_bad_align_files_fail_the_image_in_one_line(tmp_path):
    d = relative_map()
    np.save(tmp_path / "few.npy", np.array([[1, 1, 2.0], [2, 2, np.nan], [3, 3, 3.0], [500, 3, 3.0], [4, 4, 1.0]]))
    (tmp_path / "header.csv").write_text("x,y,z\n1,2,3\n")
    (tmp_path / "broken.npy").write_bytes(b"not numpy")
    np.save(tmp_path / "shape.npy", np.zeros((2, 3, 4)))
    np.save(tmp_path / "reversed.npy", np.stack([np.arange(8), np.zeros(8), np.exp(-SCALE * d[0, :8])], -1))
    for name, message in (
        ("few.npy", "3 valid known depth(s), need at least 4"),
        ("header.csv", "expected the header u,v,depth"),
        ("broken.npy", "unreadable known depths"),
        ("shape.npy", "got shape (2, 3, 4)"),
        ("reversed.npy", "reverse the predicted near/far order"),
    ):
        with pytest.raises(ImageError, match=re.escape(message)) as info:
            align_depth_map(d, tmp_path / name)
        assert "\n" not in str(info.value)


def test_find_align_files_by_stem_and_sub_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "a.npy", np.zeros((1, 3)))
    (tmp_path / "sub" / "b.csv").write_text("u,v,depth\n")
    found = find_align_files(tmp_path, [Path("a.png"), Path("sub/b.jpg")])
    assert found == {Path("a.png"): tmp_path / "a.npy",
                     Path("sub/b.jpg"): tmp_path / "sub" / "b.csv"}  # fmt: skip
    with pytest.raises(MissingInput, match=r"for 1 image\(s\) \(c.png\)"):
        find_align_files(tmp_path, [Path("a.png"), Path("c.png")])
    (tmp_path / "a.csv").write_text("u,v,depth\n")
    with pytest.raises(MissingInput, match="both"):
        find_align_files(tmp_path, [Path("a.png")])
    with pytest.raises(MissingInput, match="folder not found"):
        find_align_files(tmp_path / "nope", [])


def test_infer_writes_metric_depth_and_the_fit(tmp_path, tiny_dir):
    images, align = tmp_path / "images", tmp_path / "align"
    images.mkdir()
    align.mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        scene_image(64, 48, seed=seed).save(images / f"{name}.png")
    args = ["infer", str(images), "--processing-res", "64x48", "--no-progress", *model_file_args(tiny_dir)]
    relative = tmp_path / "relative"
    assert runner.invoke(app, [*args, "-o", str(relative), "--outputs", "depth_npy"]).exit_code == 0
    d = np.load(relative / "depth_npy/a_depth.npy")
    rng = np.random.default_rng(0)
    u, v = rng.integers(0, 64, 30), rng.integers(0, 48, 30)
    np.save(align / "a.npy", np.stack([u, v, known(d, u, v)], -1))
    np.save(align / "b.npy", np.array([[1.0, 1.0, 2.0]]))  # too few points: b fails alone
    out = tmp_path / "out"
    kinds = "depth_npy,depth_png16,depth_colored,pointcloud"
    result = runner.invoke(app, [*args, "-o", str(out), "--outputs", kinds, "--align-to", str(align)])
    assert result.exit_code == 1, result.output
    assert "b.png" in result.output and "need at least 4" in result.output and "1 image(s) written" in result.output
    assert not list(out.glob("*/b_*"))  # nothing of b written
    fit = json.loads((out / "alignment/a_alignment.json").read_text())
    assert fit["points"] == 30 and fit["source"].endswith("a.npy") and fit["median_abs_rel"] < 1e-6
    assert abs(fit["scale"] - SCALE) / SCALE < 1e-4 and abs(fit["shift"] - SHIFT) / SHIFT < 1e-4
    metric = np.load(out / "depth_npy/a_depth.npy")
    np.testing.assert_allclose(metric, np.exp(SCALE * d.astype(np.float64) + SHIFT), rtol=1e-5)
    png16 = np.asarray(Image.open(out / "depth_png16/a_depth.png"))
    assert np.array_equal(png16, np.round(metric.astype(np.float64) * 1000).clip(0, 65535).astype(np.uint16))
    ply = PlyData.read(str(out / "pointcloud/a_points.ply"))
    assert np.array_equal(ply["vertex"].data["z"], metric.ravel()) and any("metric" in c for c in ply.comments)
    # the preview stays that of FE2E's relative depth
    assert _preview_of(d, out)


def _preview_of(d: np.ndarray, out) -> bool:
    from fe2e_deploy.files.outputs import png_pixels

    image = np.asarray(Image.open(out / "depth_colored/a_depth_colored.png"))
    return np.array_equal(image, png_pixels("depth_colored", d, np.zeros((*d.shape, 3), np.float32)))


def test_infer_refuses_a_run_with_a_missing_align_file_before_loading(tmp_path):
    images, align = tmp_path / "images", tmp_path / "align"
    images.mkdir()
    align.mkdir()
    scene_image(64, 48).save(images / "a.png")
    result = runner.invoke(app, ["infer", str(images), "-o", str(tmp_path / "out"), "--align-to", str(align)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "no .npy/.csv of known depths for 1 image(s) (a.png)" in result.output
    assert not (tmp_path / "out" / "depth_npy").exists()
    result = runner.invoke(app, ["infer", str(images), "-o", str(tmp_path / "out"), "--outputs", "alignment"])
    assert result.exit_code == 2 and "written by --align-to" in result.output
