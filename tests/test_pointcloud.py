"""``--outputs pointcloud``: back-projection, intrinsics precedence, subsampling, and the PLY infer writes."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from conftest import model_file_args, scene_image
from PIL import Image
from plyfile import PlyData
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.errors import InvalidInput
from fe2e_deploy.files.pointcloud import (
    DEFAULT_FOV,
    CameraOptions,
    Intrinsics,
    exif_focal_35mm,
    parse_intrinsics,
    ply_bytes,
    point_cloud,
    resolve_intrinsics,
)

runner = CliRunner()


def photo_with_focal(path, focal_35mm: int | None, size=(64, 48)) -> None:
    exif = Image.Exif()
    if focal_35mm is not None:
        exif.get_ifd(0x8769)[0xA405] = focal_35mm
    scene_image(*size, seed=3).save(path, exif=exif.tobytes())


def test_intrinsics_precedence(tmp_path):
    photo_with_focal(tmp_path / "p.jpg", 28)
    focal = exif_focal_35mm(tmp_path / "p.jpg")
    assert focal == 28.0
    given = resolve_intrinsics(CameraOptions((100.0, 90.0, 30.0, 20.0), fov=50), 64, 48, focal)
    assert (given.fx, given.fy, given.cx, given.cy, given.source) == (100.0, 90.0, 30.0, 20.0, "--intrinsics")
    fov = resolve_intrinsics(CameraOptions(fov=90), 64, 48, focal)
    assert fov.fx == pytest.approx(32.0) and (fov.cx, fov.cy) == (31.5, 23.5) and "--fov" in fov.source
    exif = resolve_intrinsics(CameraOptions(), 64, 48, focal)
    assert exif.fx == pytest.approx(28 * math.hypot(64, 48) / math.hypot(36, 24)) and "EXIF" in exif.source
    default = resolve_intrinsics(CameraOptions(), 64, 48, None)
    assert default.fx == pytest.approx(32 / math.tan(math.radians(DEFAULT_FOV / 2))) and "default" in default.source
    photo_with_focal(tmp_path / "q.jpg", None)
    assert exif_focal_35mm(tmp_path / "q.jpg") is None
    assert exif_focal_35mm(tmp_path / "missing.jpg") is None


def test_bad_camera_options_are_one_line_errors():
    for text in ("1,2,3", "a,b,c,d", "1,2,3,4,5"):
        with pytest.raises(InvalidInput, match="fx,fy,cx,cy"):
            parse_intrinsics(text)
    with pytest.raises(InvalidInput, match="> 0"):
        CameraOptions((0.0, 1.0, 1.0, 1.0))
    with pytest.raises(InvalidInput, match="between 0 and 180"):
        CameraOptions(fov=180)
    with pytest.raises(InvalidInput, match=">= 1"):
        CameraOptions(max_points=0)


def test_back_projection_is_the_pinhole_model():
    rng = np.random.default_rng(0)
    z = rng.uniform(1, 3, (6, 8)).astype(np.float32)
    z[0, 0] = np.nan  # invalid pixels are left out
    z[1, 2] = 0.0
    normals = rng.normal(size=(6, 8, 3)).astype(np.float32)
    colors = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    camera = Intrinsics(5.0, 4.0, 3.5, 2.5, "test")
    points = point_cloud(z, normals, colors, camera)
    assert len(points) == 46
    rows, cols = np.nonzero(np.isfinite(z) & (z > 0))
    np.testing.assert_allclose(points["x"], (cols - 3.5) * z[rows, cols] / 5.0, rtol=1e-6)
    np.testing.assert_allclose(points["y"], (rows - 2.5) * z[rows, cols] / 4.0, rtol=1e-6)
    assert np.array_equal(points["z"], z[rows, cols])
    assert np.array_equal(np.stack([points[c] for c in ("nx", "ny", "nz")], -1), normals[rows, cols])
    assert np.array_equal(np.stack([points[c] for c in ("red", "green", "blue")], -1), colors[rows, cols])
    some = point_cloud(z, normals, colors, camera, max_points=10)
    again = point_cloud(z, normals, colors, camera, max_points=10)
    assert len(some) == 10 and np.array_equal(some, again)  # deterministic
    assert set(some["z"].tolist()) <= set(points["z"].tolist())
    ply = PlyData.read(io.BytesIO(ply_bytes(some, ["a comment"])))
    assert ply.header.startswith("ply\nformat binary_little_endian 1.0\ncomment a comment")
    assert np.array_equal(ply["vertex"].data, some)


def test_infer_writes_point_clouds_with_the_normals_of_normals_npy(tmp_path, tiny_dir):
    images = tmp_path / "images"
    images.mkdir()
    scene_image(64, 48, seed=1).save(images / "a.png")
    photo_with_focal(images / "b.jpg", 35)
    out = tmp_path / "out"
    args = ["infer", str(images), "-o", str(out), "--processing-res", "64x48", "--no-progress"]
    kinds = "depth_npy,normals_npy,pointcloud"
    result = runner.invoke(app, [*args, *model_file_args(tiny_dir), "--outputs", kinds])
    assert result.exit_code == 0, result.output
    assert "60 deg horizontal" in result.output  # the note: no --intrinsics/--fov
    for name, source in (("a", "default 60 deg"), ("b", "EXIF FocalLengthIn35mmFilm 35 mm")):
        ply = PlyData.read(str(out / f"pointcloud/{name}_points.ply"))
        assert any(source in c for c in ply.comments) and any("relative depth" in c for c in ply.comments)
        vertex = ply["vertex"].data
        depth = np.load(out / f"depth_npy/{name}_depth.npy")
        normals = np.load(out / f"normals_npy/{name}_normals.npy")
        assert len(vertex) == depth.size == 64 * 48  # every pixel, row-major
        assert np.array_equal(np.stack([vertex[c] for c in ("nx", "ny", "nz")], -1), normals.reshape(-1, 3))
        np.testing.assert_allclose(vertex["z"], np.exp(depth.astype(np.float64)).ravel(), rtol=1e-6)
        rgb = np.asarray(Image.open(images / f"{name}{'.png' if name == 'a' else '.jpg'}").convert("RGB"))
        assert np.array_equal(np.stack([vertex[c] for c in ("red", "green", "blue")], -1), rgb.reshape(-1, 3))
    # --intrinsics wins over EXIF; --max-points subsamples; --overwrite needed to replace
    again = runner.invoke(app, [*args, *model_file_args(tiny_dir), "--outputs", kinds, "--max-points", "100"])
    assert again.exit_code == 0 and "2 skipped" in again.output
    extra = ["--outputs", "pointcloud", "--max-points", "100", "--intrinsics", "50,50,31.5,23.5", "--overwrite"]
    result = runner.invoke(app, [*args, *model_file_args(tiny_dir), *extra])
    assert result.exit_code == 0, result.output
    ply = PlyData.read(str(out / "pointcloud/b_points.ply"))
    assert len(ply["vertex"].data) == 100 and any("from --intrinsics" in c for c in ply.comments)


def test_infer_refuses_bad_camera_options_in_one_line(tmp_path, tiny_dir):
    images = tmp_path / "images"
    images.mkdir()
    scene_image(64, 48).save(images / "a.png")
    for extra in (["--intrinsics", "1,2"], ["--fov", "0"], ["--max-points", "-3"]):
        result = runner.invoke(
            app, ["infer", str(images), "-o", str(tmp_path / "o"), "--outputs", "pointcloud", *extra]
        )
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and result.output.startswith("error: ")
