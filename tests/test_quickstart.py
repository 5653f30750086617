"""quickstart: the whole chain on the embedded demo model, reproducing the reference pipeline's maps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import scene_image
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.config import load_model_config
from fe2e_deploy.model_files import DEMO_MODEL_DIR
from fe2e_deploy.reference import FE2EPipeline

pytestmark = pytest.mark.slow

runner = CliRunner()


def test_quickstart_chain_matches_the_reference_and_reuses_stages(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    scene_image(64, 48, seed=1).save(images / "sub" / "a.png")
    work, out = tmp_path / "work", tmp_path / "out"
    args = ["quickstart", str(images), "-o", str(out), "--work-dir", str(work), "--processing-res", "64x48"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    for command in ("merge-lora", "strip", "export", "--check", "infer"):
        assert f"{command}" in result.output
    assert "init-tiny" not in result.output  # the trained demo model, not random weights
    assert "engine: onnxruntime-fp32-cpu" in result.output and "1 image(s) written" in result.output
    assert json.loads((work / "demo" / "export" / "check.json").read_text())["passed"]

    model = DEMO_MODEL_DIR
    reference = FE2EPipeline.from_files(
        load_model_config(model / "model_config.json"),
        model / "dit.safetensors",
        model / "vae.safetensors",
        model / "empty_prompt.npz",
        model / "lora.safetensors",
    )
    want = reference(scene_image(64, 48, seed=1), (64, 48))
    depth = np.load(out / "depth_npy" / "sub" / "a_depth.npy")
    normals = np.load(out / "normals_npy" / "sub" / "a_normals.npy")
    np.testing.assert_allclose(depth, want.depth, atol=2e-4, rtol=0)
    np.testing.assert_allclose(normals, want.normals, atol=2e-3, rtol=0)

    again = runner.invoke(app, [*args, "--no-progress"])
    assert again.exit_code == 0, again.output
    assert again.output.count("reusing") == 3 and "1 skipped" in again.output


def test_quickstart_with_a_seed_starts_from_random_weights(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    scene_image(64, 48, seed=1).save(images / "a.png")
    args = ["quickstart", str(images), "-o", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")]
    result = runner.invoke(app, [*args, "--seed", "3", "--processing-res", "32x32", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "fe2e-deploy init-tiny" in result.output
    assert (tmp_path / "work" / "tiny-seed3" / "model" / "lora.safetensors").is_file()
    assert "reusing" not in result.output
    # the demo model in the same work folder reuses nothing of the random one
    demo_args = ["quickstart", str(images), "-o", str(tmp_path / "out2"), "--work-dir", str(tmp_path / "work")]
    demo = runner.invoke(app, [*demo_args, "--processing-res", "32x32", "--no-progress"])
    assert demo.exit_code == 0, demo.output
    assert "reusing" not in demo.output and "init-tiny" not in demo.output


def test_quickstart_without_images_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["quickstart", str(tmp_path / "empty"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no readable" in result.output
