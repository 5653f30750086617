"""Strict, streamed loading of the official files: errors name the file and the tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from fe2e_deploy.loading import CheckpointError, load_dit, load_prompt_embedding, load_vae
from fe2e_deploy.lora import read_kohya_lora


def test_tiny_files_load_completely(tiny_dir, tiny_config):
    dit = load_dit(tiny_config, tiny_dir / "dit.safetensors", torch.bfloat16, progress=False)
    assert all(not p.is_meta and p.dtype == torch.bfloat16 for p in dit.parameters())
    vae = load_vae(tiny_config, tiny_dir / "vae.safetensors", progress=False)
    assert all(not p.is_meta and p.dtype == torch.float32 for p in vae.parameters())
    prompt = load_prompt_embedding(tiny_dir / "empty_prompt.npz", tiny_config.connector.in_channels)
    assert prompt.embeds.shape == (32, 48) and int(prompt.mask.sum()) == 8


def test_tiny_weights_are_not_degenerate(tiny_dir):
    state = load_file(tiny_dir / "dit.safetensors")
    for name in (
        "double_blocks.0.img_mod.lin.weight",
        "single_blocks.1.modulation.lin.weight",
        "final_layer.linear.weight",
        "final_layer.adaLN_modulation.1.weight",
    ):
        assert state[name].abs().mean() > 1e-3, name


def test_init_tiny_is_seeded(tmp_path):
    from fe2e_deploy.tiny import write_tiny_model

    a = write_tiny_model(tmp_path / "a", seed=3)
    b = write_tiny_model(tmp_path / "b", seed=3)
    c = write_tiny_model(tmp_path / "c", seed=4)
    sa, sb, sc = (load_file(x["dit"]) for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["img_in.weight"], sc["img_in.weight"])
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_tiny_model(tmp_path / "a", seed=3)


def _rewrite(src, dst, edit):
    state = load_file(src)
    edit(state)
    save_file(state, dst)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.pop("double_blocks.1.txt_attn.qkv.bias"),
            r"missing tensor\(s\): double_blocks.1.txt_attn.qkv.bias",
        ),
        (lambda s: s.update({"guidance_in.in_layer.weight": torch.zeros(2, 2)}), "unexpected tensor.*guidance_in"),
        (
            lambda s: s.update({"img_in.weight": torch.zeros(64, 63)}),
            r"img_in.weight has shape \[64, 63\], expected \[64, 64\]",
        ),
        (lambda s: s.update({"img_in.bias": torch.zeros(64, dtype=torch.int32)}), "img_in.bias has dtype torch.int32"),
    ],
)
def test_mismatching_dit_checkpoint_names_the_tensor(tiny_dir, tiny_config, tmp_path, edit, message):
    bad = tmp_path / "bad.safetensors"
    _rewrite(tiny_dir / "dit.safetensors", bad, edit)
    with pytest.raises(CheckpointError, match=message):
        load_dit(tiny_config, bad, torch.float32, progress=False)


def test_vae_checkpoint_given_as_dit_is_an_error(tiny_dir, tiny_config):
    with pytest.raises(CheckpointError, match="does not match the DiT checkpoint"):
        load_dit(tiny_config, tiny_dir / "vae.safetensors", torch.float32, progress=False)


def test_corrupt_truncated_and_missing_files(tiny_dir, tiny_config, tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="garbage.safetensors: not a readable safetensors file"):
        load_dit(tiny_config, garbage, torch.float32, progress=False)
    truncated = tmp_path / "truncated.safetensors"
    data = (tiny_dir / "vae.safetensors").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated.safetensors"):
        load_vae(tiny_config, truncated, progress=False)
    with pytest.raises(CheckpointError, match="file not found"):
        load_vae(tiny_config, tmp_path / "absent.safetensors", progress=False)


def test_prompt_embedding_errors(tmp_path):
    def npz(name, **arrays):
        path = tmp_path / name
        np.savez(path, **arrays)
        return path

    ok = npz("ok.npz", embeds=np.zeros((1, 5, 48), np.float32), masks=np.ones((1, 5), np.int64))
    assert load_prompt_embedding(ok, 48).embeds.shape == (5, 48)  # a leading batch of 1 is accepted
    with pytest.raises(CheckpointError, match=r"missing array\(s\) \['masks'\]"):
        load_prompt_embedding(npz("a.npz", embeds=np.zeros((5, 48))), 48)
    with pytest.raises(CheckpointError, match=r"'embeds' has shape \[5, 40\], expected \[L, 48\]"):
        load_prompt_embedding(npz("b.npz", embeds=np.zeros((5, 40)), masks=np.ones(5)), 48)
    with pytest.raises(CheckpointError, match="'masks' has shape"):
        load_prompt_embedding(npz("c.npz", embeds=np.zeros((5, 48)), masks=np.ones(4)), 48)
    with pytest.raises(CheckpointError, match="no valid token"):
        load_prompt_embedding(npz("d.npz", embeds=np.zeros((5, 48)), masks=np.zeros(5)), 48)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04broken")
    with pytest.raises(CheckpointError, match="corrupt.npz: not a readable .npz"):
        load_prompt_embedding(corrupt, 48)


def test_kohya_lora_reading_and_errors(tiny_dir, tiny_config, tmp_path):
    pairs = read_kohya_lora(tiny_dir / "lora.safetensors", tiny_config)
    assert len(pairs) == 2 * 10 + 2 * 3  # 10 linears per double block, 3 per single block
    pair = pairs["double_blocks.0.img_attn.qkv"]
    assert pair.rank == 4 and pair.alpha == 2.0 and pair.up.shape == (192, 4)

    bad = tmp_path / "bad.safetensors"
    _rewrite(
        tiny_dir / "lora.safetensors",
        bad,
        lambda s: s.update(
            {
                "lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight": torch.zeros(4, 64),
                "lora_unet_double_blocks_7_img_attn_qkv.lora_up.weight": torch.zeros(192, 4),
            }
        ),
    )
    with pytest.raises(CheckpointError, match="lora_unet_double_blocks_7_img_attn_qkv.*matches no Linear"):
        read_kohya_lora(bad, tiny_config)
    _rewrite(
        tiny_dir / "lora.safetensors",
        bad,
        lambda s: s.update({"lora_unet_single_blocks_0_linear2.lora_up.weight": torch.zeros(64, 3)}),
    )
    with pytest.raises(CheckpointError, match="single_blocks_0_linear2.*not a rank-r pair"):
        read_kohya_lora(bad, tiny_config)
    with pytest.raises(CheckpointError, match="not a kohya LoRA tensor"):
        read_kohya_lora(tiny_dir / "dit.safetensors", tiny_config)
