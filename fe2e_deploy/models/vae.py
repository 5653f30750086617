"""The FLUX VAE as diffusers' ``AutoencoderKL`` (same ResNet/attention blocks, no quant convs)."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL

from ..config import VAEConfig


def build_vae(config: VAEConfig) -> AutoencoderKL:
    levels = len(config.ch_mult)
    return AutoencoderKL(
        in_channels=config.in_channels,
        out_channels=config.out_ch,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=config.block_out_channels,
        layers_per_block=config.num_res_blocks,
        act_fn="silu",
        latent_channels=config.z_channels,
        norm_num_groups=32,
        sample_size=config.resolution,
        scaling_factor=config.scale_factor,
        shift_factor=config.shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
        mid_block_add_attention=True,
    )


def encode_mean(vae: AutoencoderKL, image: torch.Tensor) -> torch.Tensor:
    """Image in [-1, 1] -> ``scale * (mean - shift)``.

    The official ``encode`` samples the posterior (mean + std * noise); a deterministic deployment
    uses its mean.
    """
    mean = vae.encode(image.to(vae.dtype)).latent_dist.mean
    return (mean - vae.config.shift_factor) * vae.config.scaling_factor


def decode(vae: AutoencoderKL, latent: torch.Tensor) -> torch.Tensor:
    """``z / scale + shift`` -> image (unclamped)."""
    z = latent.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
    return vae.decode(z).sample
