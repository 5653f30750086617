"""The embedded demo model (trained on the ray-cast scenes), the scene generator's geometry, the training parts."""

from __future__ import annotations

import json
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from fe2e_deploy.config import load_model_config
from fe2e_deploy.errors import InvalidInput
from fe2e_deploy.evaluation.metrics import angular_error, evaluate_depth
from fe2e_deploy.loading import load_dit, load_vae
from fe2e_deploy.model_files import DEMO_MODEL_DIR, DEMO_RESOLUTION, ModelFiles, demo_model_files
from fe2e_deploy.models.vae import build_vae
from fe2e_deploy.reference import FE2EPipeline
from fe2e_deploy.scenes import random_sample, render_sample
from fe2e_deploy.tiny import FILES, write_tiny_model
from fe2e_deploy.train.autoencoder import reconstruction_loss, train_autoencoder
from fe2e_deploy.train.demo_model import (
    DEMO_CONFIG,
    EVAL_FIRST_SEED,
    Recipe,
    demo_config,
    save_model_folder,
    scene_tensors,
)

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_files_are_package_data_in_the_official_formats_under_20_mb():
    files = demo_model_files()
    shipped = [p for p in DEMO_MODEL_DIR.iterdir() if p.is_file()]
    assert {f.name for f in shipped} >= set(FILES.values()) | {"MODEL_CARD.md"}
    assert sum(p.stat().st_size for p in shipped) <= 20 * 2**20
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["fe2e_deploy"]
    for path in shipped:
        assert any(fnmatch(f"demo_model/{path.name}", p) for p in patterns), path.name
    # the architecture of DEMO_CONFIG; the VAE's latent shift and scale are the trained ones
    assert files.config.dit == DEMO_CONFIG.dit and files.config.connector == DEMO_CONFIG.connector
    assert files.config.vae.ch_mult == DEMO_CONFIG.vae.ch_mult and files.processing_res == DEMO_RESOLUTION


def test_demo_model_predicts_depth_and_normals_on_held_out_scenes():
    """Four held-out rooms (seeds training never used), against the issue's targets (measured: depth 3.7x
    better than a constant, normals 13.4 deg mean; the 60-scene scores are in the model card)."""
    files = demo_model_files()
    pipe = FE2EPipeline.from_files(files.config, files.dit, files.vae, files.prompt, files.lora)
    ours, flat, angles = [], [], []
    for seed in range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + 4):
        scene = random_sample(seed, *DEMO_RESOLUTION, kind="room")
        valid = scene.depth > 0
        pred = pipe(scene.rgb, DEMO_RESOLUTION)
        ours.append(evaluate_depth(pred.depth, scene.depth, valid, "log", 0.0, np.inf)["abs_rel"])
        flat.append(evaluate_depth(np.full_like(pred.depth, 0.5), scene.depth, valid, "log", 0.0, np.inf)["abs_rel"])
        angles.append(angular_error(pred.normals[valid], scene.normals[valid]))
    assert np.mean(ours) < np.mean(flat) / 3, (ours, flat)
    assert np.concatenate(angles).mean() < 20.0


def test_scene_depth_and_normals_are_exact_on_planes():
    """Back-projected neighbours on one plane are perpendicular to its normal: depth and normals agree exactly."""
    width, height = 96, 72
    for sample in (random_sample(7, width, height, kind="room"), render_sample(0, width, height)):
        hit = sample.depth > 0
        assert hit.mean() > 0.5
        np.testing.assert_allclose(np.linalg.norm(sample.normals[hit], axis=-1), 1.0, atol=1e-5)
        yy, xx = np.mgrid[0:height, 0:width].astype(float)
        f = sample.focal
        rays = np.stack([(xx + 0.5 - width / 2) / f, (yy + 0.5 - height / 2) / f, np.ones_like(xx)], -1)
        points = rays * sample.depth[..., None]
        same = hit[:, 1:] & hit[:, :-1] & (np.abs(sample.normals[:, 1:] - sample.normals[:, :-1]).max(-1) < 1e-6)
        same &= np.abs(np.diff(sample.depth, axis=1)) < 0.05 * sample.depth[:, 1:]  # not two parallel surfaces
        step = points[:, 1:] - points[:, :-1]
        cosine = np.abs(np.sum(step * sample.normals[:, 1:], -1)) / np.linalg.norm(step, axis=-1).clip(1e-12)
        assert same.sum() > 1000 and cosine[same].max() < 1e-3
        assert (np.sum(sample.normals * rays, -1)[hit] < 0).all()  # facing the camera


def test_model_folder_round_trips_through_the_official_loaders(tmp_path):
    init = tmp_path / "init"
    write_tiny_model(init, seed=5)
    config = load_model_config(init / FILES["config"])
    dit = load_dit(config, init / FILES["dit"], torch.float32, progress=False)
    vae = load_vae(config, init / FILES["vae"], progress=False)
    save_model_folder(tmp_path / "copy", config, dit, vae, init / FILES["prompt"], init / FILES["lora"])
    again = load_dit(config, tmp_path / "copy" / FILES["dit"], torch.float32, progress=False)
    for (name, a), b in zip(dit.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert (tmp_path / "copy" / FILES["dit"]).stat().st_mode & 0o777 == 0o644


def test_wider_dit_in_bf16_files_is_read_by_the_same_loaders(tmp_path):
    """The recipe's ``dit_hidden`` / ``dit_dtype``: a wider DiT (32 channels per head) saved in BF16, the
    official checkpoints' dtype, loads back as the same weights rounded to BF16; the VAE stays FP32."""
    config = demo_config(Recipe(dit_hidden=192))
    assert (config.dit.hidden_size, config.dit.num_heads) == (192, 6) and config.vae == DEMO_CONFIG.vae
    with pytest.raises(ValueError, match="multiple of 32"):
        demo_config(Recipe(dit_hidden=100))
    init = tmp_path / "init"
    write_tiny_model(init, seed=6, config=config)
    dit = load_dit(config, init / FILES["dit"], torch.float32, progress=False)
    vae = load_vae(config, init / FILES["vae"], progress=False)
    save_model_folder(tmp_path / "bf16", config, dit, vae, init / FILES["prompt"], dit_dtype="bf16")
    with safe_open(tmp_path / "bf16" / FILES["dit"], "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118 (a safe_open handle)
    with safe_open(tmp_path / "bf16" / FILES["vae"], "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # noqa: SIM118
    again = load_dit(config, tmp_path / "bf16" / FILES["dit"], torch.float32, progress=False)
    for (name, a), b in zip(dit.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name


def test_autoencoder_training_lowers_the_reconstruction_loss():
    torch.manual_seed(0)
    vae = build_vae(DEMO_CONFIG.vae)
    data = scene_tensors([random_sample(s, 32, 32) for s in range(4)], (32, 32))
    images = torch.cat([data["rgb"], data["depth"], data["normals"]])
    with torch.no_grad():
        before = float(reconstruction_loss(vae, images))
    train_autoencoder(vae, lambda step: (images, None), steps=12, lr=2e-3, log=lambda record: None)
    with torch.no_grad():
        after = float(reconstruction_loss(vae, images))
    assert after < 0.7 * before, (before, after)


def test_reconstruction_loss_weights_each_map():
    """A map with weight 0 does not count (the demo VAE weights RGB low: the pipeline never decodes it)."""
    torch.manual_seed(0)
    vae = build_vae(DEMO_CONFIG.vae)
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        first = float(reconstruction_loss(vae, images[:1]))
        only_first = float(reconstruction_loss(vae, images, torch.tensor([1.0, 0.0, 0.0])))
        equal = float(reconstruction_loss(vae, images, torch.ones(3)))
        default = float(reconstruction_loss(vae, images))
    assert abs(only_first - first) < 1e-6 and abs(equal - default) < 1e-7
    assert abs(only_first - default) > 1e-4


def test_training_script_runs_every_stage_and_reuses_finished_ones(tmp_path, capsys):
    """``python -m fe2e_deploy.train.demo_model train`` at toy size: scenes, VAE (crops, then whole maps),
    DiT, LoRA; the model folder loads with the official loaders, and a rerun reuses the finished stages."""
    from fe2e_deploy.train.demo_model import main

    threads = torch.get_num_threads()
    out, work = tmp_path / "model", tmp_path / "work"
    args = ["train", "--out", str(out), "--work", str(work), "--resolution", "48x32", "--scenes", "6"]
    args += ["--threads", "1", "--vae-steps", "2", "--vae-batch", "2", "--vae-crop", "16", "--vae-full-steps", "2"]
    args += ["--vae-full-batch", "2", "--dit-steps", "3", "--dit-batch", "2", "--lora-steps", "2"]
    args += ["--lora-scenes", "2", "--checkpoint-every", "2"]
    try:
        main(args)
        first = capsys.readouterr().out
        report = json.loads((out / "training.json").read_text())
        assert report["vae"]["crop_steps"] == 2 and report["vae"]["full_steps"] == 2
        assert report["dit"]["steps"] == 3 and report["lora"]["steps"] == 2
        assert '"stage": "vae_full"' in first and not (work / "stage2_dit-checkpoint").exists()
        files = ModelFiles.from_dir(out)
        assert files.lora is not None and files.config.vae.shift_factor == report["vae"]["shift"]
        pipe = FE2EPipeline.from_files(files.config, files.dit, files.vae, files.prompt, files.lora)
        scene = random_sample(EVAL_FIRST_SEED, 48, 32)
        prediction = pipe(scene.rgb, (48, 32))
        assert np.isfinite(prediction.depth).all() and np.isfinite(prediction.normals).all()
        vae_before = (work / "stage1_vae" / FILES["vae"]).read_bytes()
        main(args)  # finished stages are reused: no VAE or DiT step runs again
        again = capsys.readouterr().out
        assert '"stage": "vae"' not in again and '"stage": "dit", "step"' not in again
        assert (work / "stage1_vae" / FILES["vae"]).read_bytes() == vae_before
        with pytest.raises(InvalidInput, match=r"another recipe \(scenes 6 -> 7\)"):
            main([*args, "--scenes", "7"])  # the cached scenes and stages were made from 6 scenes
        main([*args, "--threads", "2"])  # the speed alone may change
        report = json.loads((work / "training.json").read_text())
        del report["recipe"]["dit_dtype"]  # a work folder from before the field existed: it ran with the default
        (work / "training.json").write_text(json.dumps(report))
        main(args)
    finally:
        torch.set_num_threads(threads)
