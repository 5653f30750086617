"""train-lora: the loss falls on analytic scenes, resume continues exactly, the LoRA round-trips via merge-lora."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.merge import merge_lora
from fe2e_deploy.model_files import ModelFiles
from fe2e_deploy.models.vae import encode_mean
from fe2e_deploy.reference import FE2EPipeline
from fe2e_deploy.scenes import synthetic_sample
from fe2e_deploy.train.data import TrainDataset, log_normalise_depth, write_sample
from fe2e_deploy.train.loop import TrainOptions, train_lora

runner = CliRunner()
RES = (64, 48)


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train") / "data"
    for i in range(4):
        s = synthetic_sample(*RES, seed=i)
        write_sample(root, f"scene{i}", s.rgb, s.depth, s.normals)
    return root


def options(**kw) -> TrainOptions:
    base = dict(rank=8, alpha=8.0, lr=1e-2, steps=40, batch_size=2, resolution=RES, seed=0, cache_latents=True)
    return TrainOptions(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny_dir, dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "lora"
    report = train_lora(
        ModelFiles.from_dir(tiny_dir, lora=False), dataset_dir, out, options(kohya=True, save_every=10), progress=False
    )
    return out, report


def test_log_normalised_depth_target():
    depth = np.exp(np.linspace(0, 3, 100)).reshape(10, 10)
    y = log_normalise_depth(depth, np.ones_like(depth, bool))
    assert y.min() == -1 and y.max() == 1 and abs(np.median(y)) < 0.05  # P2 -> -1, P98 -> 1 (clipped beyond)
    assert np.all(np.diff(y.ravel()) >= 0)  # monotonic in depth
    assert torch.equal(torch.from_numpy(y).bfloat16().float(), torch.from_numpy(y))  # BF16-rounded


def test_dataset_reads_the_layout(dataset_dir):
    ds = TrainDataset(dataset_dir, RES)
    sample = ds[0]
    assert len(ds) == 4 and sample.rgb.shape == (3, 48, 64) and sample.depth.shape == (3, 48, 64)
    assert sample.valid.all() and torch.allclose(sample.normals.norm(dim=0), torch.ones(48, 64), atol=1e-5)


def test_loss_falls_clearly(trained):
    out, report = trained
    losses = report.losses
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"loss: first 5 steps {first:.4f}, last 5 steps {last:.4f}")
    assert last < 0.3 * first
    lines = [json.loads(x) for x in (out / "loss.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 41))


def test_trained_lora_moves_inference_latents_to_the_targets(trained, tiny_dir, tiny_config, dataset_dir, tmp_path):
    """Through the inference path (depth = -v left, normals = v right) the merged LoRA predicts the latents of
    the depth and normal targets. (Pixels are not compared: the tiny VAE is random, not an autoencoder.)"""
    out, _ = trained
    merged = tmp_path / "merged.safetensors"
    merge_lora(tiny_dir / "dit.safetensors", out, merged, tiny_config, progress=False)
    files = (tiny_dir / "vae.safetensors", tiny_dir / "empty_prompt.npz")
    base = FE2EPipeline.from_files(tiny_config, tiny_dir / "dit.safetensors", *files)
    tuned = FE2EPipeline.from_files(tiny_config, merged, *files)
    sample = TrainDataset(dataset_dir, RES)[0]
    with torch.no_grad():
        ref = encode_mean(base.vae, sample.rgb[None])
        z_depth, z_normals = encode_mean(base.vae, sample.depth[None]), encode_mean(base.vae, sample.normals[None])
    errors = {}
    for name, pipe in (("base", base), ("tuned", tuned)):
        depth, normals = pipe.predict_latents(ref)
        errors[name] = (float((depth - z_depth).pow(2).mean()), float((normals - z_normals).pow(2).mean()))
    print(f"latent MSE (depth, normals): {errors}")
    assert errors["tuned"][0] < 0.3 * errors["base"][0] and errors["tuned"][1] < 0.3 * errors["base"][1]


def test_kohya_and_peft_outputs_merge_to_the_same_weights(trained, tiny_dir, tiny_config, tmp_path):
    out, _ = trained
    a, b = tmp_path / "peft.safetensors", tmp_path / "kohya.safetensors"
    merge_lora(tiny_dir / "dit.safetensors", out, a, tiny_config, progress=False)
    merge_lora(tiny_dir / "dit.safetensors", out / "lora.safetensors", b, tiny_config, progress=False)
    wa, wb = load_file(a), load_file(b)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert any(not torch.equal(wa[k], load_file(tiny_dir / "dit.safetensors")[k]) for k in wa)


def test_resume_continues_from_the_same_step(tiny_dir, dataset_dir, trained, tmp_path):
    """A run resumed from the step-30 checkpoint repeats the straight run's last 10 steps and final adapter."""
    straight_dir, straight = trained
    out = tmp_path / "resumed"
    shutil.copytree(straight_dir, out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-2:] == ["step-000030", "step-000040"]
    shutil.rmtree(out / "checkpoints" / "step-000040")  # as if the run had stopped after step 30
    files = ModelFiles.from_dir(tiny_dir, lora=False)
    second = train_lora(files, dataset_dir, out, options(save_every=10), resume="latest", progress=False)
    assert second.start_step == 30 and len(second.losses) == 10
    np.testing.assert_allclose(second.losses, straight.losses[30:], rtol=1e-4, atol=1e-6)
    lines = [json.loads(x)["step"] for x in (out / "loss.jsonl").read_text().splitlines()]
    assert lines == list(range(1, 41))
    want, got = (load_file(d / "adapter_model.safetensors") for d in (straight_dir, out))
    assert want.keys() == got.keys() and all(torch.allclose(want[k], got[k], atol=1e-5) for k in want)


def test_cli_partial_targets_without_the_latent_cache(tiny_dir, tiny_config, dataset_dir, tmp_path):
    """Only some parts of the fused qkv / linear1 plus the modulation linears: kohya and peft still merge alike."""
    out = tmp_path / "cli"
    args = ["train-lora", str(dataset_dir), "--out", str(out), "--model-config", str(tiny_dir / "model_config.json")]
    args += ["--dit", str(tiny_dir / "dit.safetensors"), "--vae", str(tiny_dir / "vae.safetensors")]
    args += ["--prompt-embedding", str(tiny_dir / "empty_prompt.npz"), "--resolution", "64x48", "--steps", "3"]
    args += ["--rank", "4", "--alpha", "4", "--lr", "1e-2", "--batch-size", "2", "--grad-accum", "2", "--kohya"]
    args += ["--target-modules", "attn.to_(q|v)", "--target-modules", "norm1?.linear"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "steps 1-3: loss" in result.output
    for name in ("adapter_config.json", "adapter_model.safetensors", "lora.safetensors", "loss.jsonl"):
        assert (out / name).is_file()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 4
    base = tiny_dir / "dit.safetensors"
    merge_lora(base, out, tmp_path / "a.safetensors", tiny_config, progress=False)
    merge_lora(base, out / "lora.safetensors", tmp_path / "b.safetensors", tiny_config, progress=False)
    a, b, w = (load_file(p) for p in (tmp_path / "a.safetensors", tmp_path / "b.safetensors", base))
    changed = {k.split(".", 2)[-1] for k in a if not torch.equal(a[k], w[k])}
    assert changed == {"img_attn.qkv.weight", "linear1.weight", "img_mod.lin.weight", "modulation.lin.weight"}
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    again = runner.invoke(app, [*args, "--no-progress"])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_cli_errors_and_help(dataset_dir, tmp_path):
    result = runner.invoke(app, ["train-lora", str(tmp_path / "none"), "-o", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 2 and "rgb" in result.output
    (dataset_dir.parent / "broken" / "rgb").mkdir(parents=True)
    synthetic_sample(*RES).rgb.save(dataset_dir.parent / "broken" / "rgb" / "x.png")
    result = runner.invoke(app, ["train-lora", str(dataset_dir.parent / "broken"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "depth not found" in result.output
    result = runner.invoke(app, ["train-lora", str(dataset_dir), "-o", str(tmp_path / "o"), "--resume", "latest"])
    assert result.exit_code == 2 and "no checkpoint" in result.output
    outside = ["--kohya", "--target-modules", "x_embedder", "--resolution", "64x48", "--no-progress"]
    result = runner.invoke(app, ["train-lora", str(dataset_dir), "-o", str(tmp_path / "k"), *outside])
    assert result.exit_code == 2 and "'x_embedder' has no kohya name" in result.output
    assert not (tmp_path / "k" / "adapter_model.safetensors").exists()
    text = runner.invoke(app, ["train-lora", "--help"], env={"COLUMNS": "200"}).output
    for option in (
        "--rank",
        "--alpha",
        "--target-modules",
        "--lr",
        "--steps",
        "--batch-size",
        "--grad-accum",
        "--mixed-precision",
        "--gradient-checkpointing",
        "--seed",
        "--save-every",
        "--resume",
        "--kohya",
        "--cache-latents",
        "--resolution",
    ):
        assert option in text
