"""FLUX VAE checkpoint (official ``AutoEncoder`` names) -> diffusers ``AutoencoderKL``."""

from __future__ import annotations

import torch

from ..config import VAEConfig
from ..models.vae import build_vae
from .layout import CheckpointLayout, TensorRule, parameter_shapes

_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "conv_shortcut"}


def _params(official: str, target: str, kind: str = "copy") -> list[TensorRule]:
    return [TensorRule(f"{official}.{p}", (f"{target}.{p}",), kind) for p in ("weight", "bias")]


def _resnet(official: str, target: str, has_shortcut: bool) -> list[TensorRule]:
    rules = []
    for o, t in _RESNET.items():
        if o != "nin_shortcut" or has_shortcut:
            rules += _params(f"{official}.{o}", f"{target}.{t}")
    return rules


def _mid(side: str, channels: int) -> list[TensorRule]:
    o, t = f"{side}.mid", f"{side}.mid_block"
    rules = _resnet(f"{o}.block_1", f"{t}.resnets.0", False) + _resnet(f"{o}.block_2", f"{t}.resnets.1", False)
    rules += _params(f"{o}.attn_1.norm", f"{t}.attentions.0.group_norm")
    for a, b in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0")):
        rules.append(TensorRule(f"{o}.attn_1.{a}.weight", (f"{t}.attentions.0.{b}.weight",), "conv1x1"))
        rules.append(TensorRule(f"{o}.attn_1.{a}.bias", (f"{t}.attentions.0.{b}.bias",)))
    return rules


def vae_layout(config: VAEConfig) -> CheckpointLayout:
    with torch.device("meta"):
        model = build_vae(config)
    chans = config.block_out_channels
    levels = len(chans)
    rules = _params("encoder.conv_in", "encoder.conv_in")
    block_in = config.ch
    for i in range(levels):
        for j in range(config.num_res_blocks):
            o, t = f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}"
            rules += _resnet(o, t, block_in != chans[i])
            block_in = chans[i]
        if i != levels - 1:
            rules += _params(f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv")
    rules += _mid("encoder", block_in)
    rules += _params("encoder.norm_out", "encoder.conv_norm_out") + _params("encoder.conv_out", "encoder.conv_out")

    rules += _params("decoder.conv_in", "decoder.conv_in")
    rules += _mid("decoder", chans[-1])
    block_in = chans[-1]
    for i in reversed(range(levels)):
        k = levels - 1 - i  # diffusers orders decoder blocks from the lowest resolution up
        for j in range(config.num_res_blocks + 1):
            o, t = f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{k}.resnets.{j}"
            rules += _resnet(o, t, block_in != chans[i])
            block_in = chans[i]
        if i != 0:
            rules += _params(f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{k}.upsamplers.0.conv")
    rules += _params("decoder.norm_out", "decoder.conv_norm_out") + _params("decoder.conv_out", "decoder.conv_out")
    return CheckpointLayout({r.official: r for r in rules}, parameter_shapes(model))
