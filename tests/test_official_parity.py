"""Our models (diffusers classes + converted names) against the official math on the same files.

FP32 on CPU; tolerance 1e-5 (relative to the output scale), as DESIGN asks of FP32 paths.
"""

from __future__ import annotations

import numpy as np
import torch
from official_reference import OfficialAutoEncoder, OfficialStep1XEdit
from safetensors.torch import load_file

from fe2e_deploy.loading import load_dit, load_vae
from fe2e_deploy.lora import read_kohya_lora
from fe2e_deploy.models.packing import latent_ids, pack, unpack
from fe2e_deploy.reference import CFG_SCALE

TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def official_dit(config, state):
    model = OfficialStep1XEdit(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


def dit_inputs(config, prompt, h=6, w=8, batch=1):
    ref = torch.randn(batch, 16, h, w)
    img = torch.cat([torch.zeros_like(pack(ref)), pack(ref)], dim=1)
    ids = latent_ids(h, w)
    embeds = torch.from_numpy(prompt["embeds"])[None].expand(batch, -1, -1)
    mask = torch.from_numpy(prompt["masks"])[None].expand(batch, -1)
    return img, torch.cat([ids, ids]), torch.zeros(embeds.shape[1], 3), torch.ones(batch), embeds, mask


@torch.no_grad()
def test_dit_matches_official_math(tiny_dir, tiny_config):
    ours = load_dit(tiny_config, tiny_dir / "dit.safetensors", torch.float32, progress=False)
    theirs = official_dit(tiny_config, load_file(tiny_dir / "dit.safetensors"))
    prompt = np.load(tiny_dir / "empty_prompt.npz")
    args = dit_inputs(tiny_config, prompt, batch=2)
    a, b = ours(*args), theirs(*args)
    assert a.shape == (2, 2 * 12, 64)
    assert rel_err(a, b) < TOL


@torch.no_grad()
def test_dit_with_lora_matches_official_merge(tiny_dir, tiny_config):
    """Unmerged peft LoRA on our model == official weights merged as W + alpha/rank * up @ down."""
    from fe2e_deploy.lora import apply_lora_unmerged

    pairs = read_kohya_lora(tiny_dir / "lora.safetensors", tiny_config)
    state = load_file(tiny_dir / "dit.safetensors")
    for module, pair in pairs.items():
        state[module + ".weight"] = state[module + ".weight"] + pair.scale * (pair.up @ pair.down)
    ours = load_dit(tiny_config, tiny_dir / "dit.safetensors", torch.float32, progress=False)
    apply_lora_unmerged(ours, pairs)
    args = dit_inputs(tiny_config, np.load(tiny_dir / "empty_prompt.npz"))
    without = load_dit(tiny_config, tiny_dir / "dit.safetensors", torch.float32, progress=False)(*args)
    a, b = ours(*args), official_dit(tiny_config, state)(*args)
    assert rel_err(a, b) < TOL
    assert rel_err(without, b) > 1e-2  # the LoRA really changes the prediction


@torch.no_grad()
def test_vae_matches_official_math(tiny_dir, tiny_config):
    ours = load_vae(tiny_config, tiny_dir / "vae.safetensors", progress=False)
    theirs = OfficialAutoEncoder(tiny_config)
    theirs.load_state_dict(load_file(tiny_dir / "vae.safetensors"), strict=True)
    x = torch.rand(1, 3, 48, 64) * 2 - 1
    from fe2e_deploy.models.vae import decode, encode_mean

    z = encode_mean(ours, x)
    assert z.shape == (1, 16, 6, 8)
    assert rel_err(z, theirs.encode_mean(x)) < TOL
    assert rel_err(decode(ours, z), theirs.decode(z)) < TOL


@torch.no_grad()
def test_pipeline_latents_match_official_single_step(tiny_dir, tiny_config, tiny_pipeline):
    """The official denoise loop (batch 2, CFG 6, one Euler step) on official modules vs ours."""
    pairs = read_kohya_lora(tiny_dir / "lora.safetensors", tiny_config)
    state = load_file(tiny_dir / "dit.safetensors")
    for module, pair in pairs.items():
        state[module + ".weight"] = state[module + ".weight"] + pair.scale * (pair.up @ pair.down)
    theirs = official_dit(tiny_config, state)
    ref = torch.randn(1, 16, 6, 8)
    prompt = np.load(tiny_dir / "empty_prompt.npz")
    img, img_ids, txt_ids, _, embeds, mask = dit_inputs(tiny_config, prompt, batch=2)
    img = torch.cat([torch.zeros(1, 12, 64), pack(ref)], dim=1).repeat(2, 1, 1)
    pred = theirs(img, img_ids, txt_ids, torch.ones(2), embeds, mask)
    cond, uncond = pred[:1], pred[1:]
    guided = uncond + CFG_SCALE * (cond - uncond)
    depth_official = unpack((img[:1] + (0.0 - 1.0) * guided)[:, :12], 6, 8)
    normal_official = unpack(cond[:, 12:], 6, 8)

    depth, normal = tiny_pipeline.predict_latents(ref)
    assert rel_err(depth, depth_official) < TOL and rel_err(normal, normal_official) < TOL
