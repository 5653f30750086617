"""strip: the folded single-step model equals the reference pipeline; the stripped file is clean."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import scene_image, strip_tiny
from safetensors import safe_open
from typer.testing import CliRunner

from fe2e_deploy.artifacts.contract import ContractError
from fe2e_deploy.cli import app
from fe2e_deploy.config import PRESETS
from fe2e_deploy.engines import load_engine
from fe2e_deploy.engines.stripped import StrippedEngine
from fe2e_deploy.loading.stripped import load_stripped
from fe2e_deploy.models.fused import DiTStep
from fe2e_deploy.strip import is_folded, parameter_counts

runner = CliRunner()


@pytest.fixture(scope="module")
def stripped_fp32(tiny_dir, tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("stripped") / "fp32"
    strip_tiny(tiny_dir, tiny_config, out)
    return out


def test_stripped_latents_equal_the_reference_pipeline(stripped_fp32, tiny_pipeline):
    """FP32: the depth and normal latents of one step agree to 1e-4 (measured ~2e-6)."""
    model = load_stripped(stripped_fp32)
    ref = torch.randn(2, 16, 6, 8)
    with torch.no_grad():
        depth, normals = DiTStep(model.dit, 6, 8)(ref)
    depth_ref, normals_ref = tiny_pipeline.predict_latents(ref)
    assert depth_ref.abs().max() > 0.1 and normals_ref.abs().max() > 0.1  # not a trivial comparison
    torch.testing.assert_close(depth, depth_ref, atol=1e-4, rtol=0)
    torch.testing.assert_close(normals, normals_ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("size", [(64, 48), (80, 64)])
def test_stripped_maps_equal_the_reference_pipeline(stripped_fp32, tiny_pipeline, size):
    """FP32 maps at the input size: depth to 2e-4, normals to 2e-3 (measured 4e-5 and 4e-4)."""
    engine = StrippedEngine(stripped_fp32, processing_res=(64, 48))
    image = scene_image(*size, seed=3)
    got, want = engine.predict(image), tiny_pipeline(image, (64, 48))
    assert got.depth.shape == (size[1], size[0]) and got.normals.shape == (size[1], size[0], 3)
    np.testing.assert_allclose(got.depth, want.depth, atol=2e-4, rtol=0)
    np.testing.assert_allclose(got.normals, want.normals, atol=2e-3, rtol=0)


@pytest.mark.slow
def test_bf16_strip_stays_close_to_the_fp32_reference(tiny_dir, tiny_config, tiny_pipeline, tmp_path):
    """BF16 matmuls (FP32 norms/RoPE/residual): depth within 0.01, normals within 0.05 (measured 2e-3, 2e-2)."""
    strip_tiny(tiny_dir, tiny_config, tmp_path / "bf16", dtype=torch.bfloat16)
    image = scene_image(64, 48)
    got, want = StrippedEngine(tmp_path / "bf16").predict(image), tiny_pipeline(image)
    assert np.abs(got.depth - want.depth).max() < 0.01
    assert np.abs(got.normals - want.normals).max() < 0.05


def test_stripped_file_holds_no_folded_module(stripped_fp32, tiny_config):
    with safe_open(stripped_fp32 / "stripped_dit.safetensors", "pt") as fh:
        names = set(fh.keys())
        assert fh.get_tensor("txt").shape == (32, 64) and fh.get_tensor("txt").dtype == torch.float32
    assert not [n for n in names if is_folded(n)]
    assert not [n for n in names if n.startswith(("connector", "time_in", "vector_in", "txt_in", "guidance_in"))]
    assert {
        "txt",
        "target_token",
        "final_layer.modulation",
        "double_blocks.1.img_mod",
        "single_blocks.0.modulation",
    } <= names
    assert "double_blocks.0.img_attn.qkv.weight" in names and "single_blocks.1.linear1.weight" in names
    meta = json.loads((stripped_fp32 / "stripped.json").read_text())
    assert meta["format"] == "fe2e-stripped" and meta["t"] == 1.0 and meta["txt_len"] == 32
    assert meta["sources"]["lora"]["sha256"] and len(meta["sources"]["dit"]["sha256"]) == 64
    assert meta["parameters"]["official_dit"] - meta["parameters"]["stripped_dit"] == meta["parameters"]["folded"]


def test_full_size_parameter_counts_before_and_after():
    """step1x-edit on meta: 12.43 B official parameters (connector included) -> 8.61 B kept."""
    before, after = parameter_counts(PRESETS["step1x-edit"], txt_len=640)
    assert before == 12_427_800_385
    assert after == 8_609_112_128
    print(f"full-size DiT parameters: {before:,} official -> {after:,} stripped ({before - after:,} folded)")


def test_strip_refuses_to_overwrite_and_loads_strictly(stripped_fp32, tiny_dir, tiny_config, tmp_path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        strip_tiny(tiny_dir, tiny_config, stripped_fp32)
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(FileNotFoundError, match="not a stripped model folder"):
        load_stripped(broken)
    (broken / "stripped.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_stripped(broken)
    (broken / "stripped.json").write_text(json.dumps({"format": "fe2e-stripped", "format_version": 99}))
    with pytest.raises(ContractError, match="version 99, this fe2e-deploy reads version 1 .*fe2e-deploy strip"):
        load_stripped(broken)


@pytest.mark.slow
def test_strip_cli_and_infer_with_the_stripped_folder(tiny_dir, tmp_path):
    out = tmp_path / "s"
    args = ["strip", "-o", str(out), "--model-config", str(tiny_dir / "model_config.json")]
    files = ["--dit", str(tiny_dir / "dit.safetensors"), "--vae", str(tiny_dir / "vae.safetensors")]
    prompt = ["--prompt-embedding", str(tiny_dir / "empty_prompt.npz"), "--lora", str(tiny_dir / "lora.safetensors")]
    result = runner.invoke(app, [*args, *files, *prompt, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "703,489 -> 306,944" in result.output
    again = runner.invoke(app, [*args, *files, *prompt, "--no-progress"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    args[2] = str(tmp_path / "other")
    missing = runner.invoke(app, [*args, "--dit", str(tmp_path / "nope.safetensors"), *files[2:], *prompt])
    assert missing.exit_code == 2 and "nope.safetensors" in missing.output
    assert load_engine(out).name == "stripped-bf16"
    images = tmp_path / "images"
    images.mkdir()
    scene_image(64, 48).save(images / "a.png")
    result = runner.invoke(app, ["infer", str(images), "-o", str(tmp_path / "pred"), "--engine", str(out)])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "pred" / "depth_npy" / "a_depth.npy").shape == (48, 64)


def test_stripped_engine_batches_like_single_images(stripped_fp32):
    engine = StrippedEngine(stripped_fp32, processing_res=(64, 48))
    images = [scene_image(64 + 16 * i, 48, seed=i) for i in range(3)]
    batched = engine.predict_batch(images)
    for image, got in zip(images, batched, strict=True):
        want = engine.predict(image)
        assert got.depth.shape == want.depth.shape
        np.testing.assert_allclose(got.depth, want.depth, atol=1e-5)
        np.testing.assert_allclose(got.normals, want.normals, atol=1e-4)
