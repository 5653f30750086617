"""``--outputs depth_exr,normals_exr``: float32 OpenEXR equal to the .npy maps; a one-line error without OpenEXR."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import model_file_args, scene_image
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.errors import InvalidInput
from fe2e_deploy.files.exr import read_exr, write_exr
from fe2e_deploy.files.outputs import OutputOptions

runner = CliRunner()
pytest.importorskip("OpenEXR")


def test_exr_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    depth = rng.uniform(0, 1, (5, 7)).astype(np.float32)
    normals = rng.normal(size=(5, 7, 3)).astype(np.float32)
    write_exr(tmp_path / "d.exr", depth)
    write_exr(tmp_path / "n.exr", normals)
    assert np.array_equal(read_exr(tmp_path / "d.exr"), depth)
    assert np.array_equal(read_exr(tmp_path / "n.exr"), normals)


def test_infer_writes_exr_equal_to_npy(tmp_path, tiny_dir):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    scene_image(64, 48, seed=1).save(images / "sub" / "a.png")
    out = tmp_path / "out"
    kinds = "depth_npy,normals_npy,depth_exr,normals_exr"
    args = ["infer", str(images), "-o", str(out), "--processing-res", "64x48", "--no-progress", "--outputs", kinds]
    result = runner.invoke(app, [*args, *model_file_args(tiny_dir)])
    assert result.exit_code == 0, result.output
    assert np.array_equal(read_exr(out / "depth_exr/sub/a_depth.exr"), np.load(out / "depth_npy/sub/a_depth.npy"))
    normals = read_exr(out / "normals_exr/sub/a_normals.exr")
    assert normals.dtype == np.float32 and np.array_equal(normals, np.load(out / "normals_npy/sub/a_normals.npy"))
    assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporaries left


def test_exr_without_openexr_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "OpenEXR" else real(name, *a))
    with pytest.raises(InvalidInput, match=r"pip install 'fe2e-deploy\[exr\]'"):
        OutputOptions(("depth_npy", "normals_exr"))
    OutputOptions(("depth_npy", "pointcloud"))  # other outputs need no OpenEXR
    scene_image(64, 48).save(tmp_path / "a.png")
    result = runner.invoke(app, ["infer", str(tmp_path), "-o", str(tmp_path / "o"), "--outputs", "depth_exr"])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "--outputs depth_exr needs the OpenEXR package: pip install 'fe2e-deploy[exr]'" in result.output
