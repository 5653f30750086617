"""build --backend aoti: the compiled .pt2 engine reproduces the reference; sidecar checks; FP8 build."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import scene_image, strip_tiny
from typer.testing import CliRunner

from fe2e_deploy.build_aoti import build_aoti
from fe2e_deploy.cli import app
from fe2e_deploy.engines import load_engine
from fe2e_deploy.engines.aoti import AOTIEngine
from fe2e_deploy.engines.stripped import StrippedEngine
from fe2e_deploy.quantize.calibrate import calibrate_fp8, write_scales
from fe2e_deploy.sidecar import sidecar_path

runner = CliRunner()


@pytest.fixture(scope="module")
def stripped(tiny_dir, tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("aoti") / "stripped"
    return strip_tiny(tiny_dir, tiny_config, out)


@pytest.fixture(scope="module")
def package(stripped, tmp_path_factory):
    out = tmp_path_factory.mktemp("aoti") / "fe2e_64x48.pt2"
    result = runner.invoke(
        app, ["build", str(stripped), "-o", str(out), "--precision", "fp32", "--resolution", "64x48"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_fp32_package_reproduces_the_reference(package, tiny_pipeline, stripped):
    """FP32 compiled vs the reference pipeline: depth 2e-4, normals 2e-3 (as the other FP32 engines)."""
    engine = load_engine(package)
    assert isinstance(engine, AOTIEngine) and engine.name == "aoti-fp32"
    image = scene_image(80, 60, seed=4)  # another size: resized to 64x48 and back
    got, want = engine.predict(image), tiny_pipeline(image, (64, 48))
    assert got.depth.shape == (60, 80)
    np.testing.assert_allclose(got.depth, want.depth, atol=2e-4, rtol=0)
    np.testing.assert_allclose(got.normals, want.normals, atol=2e-3, rtol=0)
    eager = StrippedEngine(stripped, processing_res=(64, 48)).predict(image)
    np.testing.assert_allclose(got.depth, eager.depth, atol=1e-4, rtol=0)


def test_sidecar_and_mismatches(package, tmp_path):
    sidecar = json.loads(sidecar_path(package).read_text())
    assert sidecar["resolution"] == "64x48" and sidecar["device"]["kind"] == "cpu"
    assert sidecar["torch"] == torch.__version__ and sidecar["package_bytes"] == package.stat().st_size
    with pytest.raises(ValueError, match="built for 64x48"):
        AOTIEngine(package, processing_res=(32, 32))
    copy = tmp_path / "copy.pt2"
    copy.write_bytes(package.read_bytes())
    with pytest.raises(FileNotFoundError, match="missing sidecar"):
        AOTIEngine(copy)
    sidecar_path(copy).write_text(json.dumps({**sidecar, "device": {"kind": "cuda", "name": "NVIDIA H100"}}))
    with pytest.raises(ValueError, match="built for NVIDIA H100"):
        AOTIEngine(copy)
    sidecar_path(copy).write_text(json.dumps({**sidecar, "torch": "2.0.0"}))
    with pytest.raises(ValueError, match="torch 2.0.0"):
        AOTIEngine(copy)
    sidecar_path(copy).write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        AOTIEngine(copy)


def test_fp8_package_vs_bf16(stripped, tmp_path):
    """An FP8 build (fake quantisation on CPU) runs; its difference to the stripped BF16 model is reported."""
    scales = write_scales(calibrate_fp8(stripped, None, (32, 32), max_images=2, progress=False), tmp_path / "s.json")
    out = tmp_path / "fp8.pt2"
    build_aoti(stripped, out, (32, 32), "fp8", scales)
    image = scene_image(32, 32, seed=5)
    fp8 = load_engine(out).predict(image)
    bf16 = StrippedEngine(stripped, processing_res=(32, 32))
    bf16.model.dit.cast_weights(torch.bfloat16)
    ref = bf16.predict(image)
    depth_rel = np.linalg.norm(fp8.depth - ref.depth) / np.linalg.norm(ref.depth)
    angle = np.degrees(np.arccos(np.clip((fp8.normals * ref.normals).sum(-1), -1, 1))).mean()
    print(f"FP8 (.pt2, fake quant) vs BF16: depth relative L2 {depth_rel:.4f}, normals mean angle {angle:.2f} deg")
    assert 0 < depth_rel < 0.2 and 0 < angle < 20


def test_build_errors(stripped, package, tmp_path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_aoti(stripped, package, (64, 48), "fp32")
    with pytest.raises(ValueError, match="needs --scales"):
        build_aoti(stripped, tmp_path / "x.pt2", (64, 48), "fp8")
    with pytest.raises(ValueError, match=".pt2"):
        build_aoti(stripped, tmp_path / "x.bin", (64, 48), "fp32")
    result = runner.invoke(app, ["build", str(stripped), "-o", str(tmp_path / "y.pt2"), "--backend", "tensorrt"])
    assert result.exit_code == 2 and "build-trt" in result.output
    text = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--out", "--backend", "--precision", "--scales", "--resolution", "--batch", "--device"):
        assert option in text
