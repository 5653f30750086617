"""The Step1X-Edit DiT: our connector in front of diffusers' ``FluxTransformer2DModel``.

diffusers' Flux transformer computes the same math as Step1X-Edit's double/single stream blocks
(adaLN-Zero modulation, qk-RMSNorm, interleaved RoPE over (0, row, col) ids, tanh-GELU MLPs,
``t*1000`` sinusoidal time embedding with cos first); the official names are converted on load
(``fe2e_deploy.loading.dit_layout``). Step1X-Edit has no guidance embedding.
"""

from __future__ import annotations

import torch
from diffusers import FluxTransformer2DModel
from torch import nn

from ..config import POOLED_DIM, ModelConfig
from .connector import Qwen2Connector


def build_flux_transformer(config: ModelConfig) -> FluxTransformer2DModel:
    d = config.dit
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=d.in_channels,
        out_channels=d.out_channels,
        num_layers=d.depth,
        num_single_layers=d.depth_single_blocks,
        attention_head_dim=d.head_dim,
        num_attention_heads=d.num_heads,
        joint_attention_dim=d.context_in_dim,
        pooled_projection_dim=POOLED_DIM,
        guidance_embeds=False,
        axes_dims_rope=tuple(d.axes_dim),
    )


class Step1XEditDiT(nn.Module):
    """Connector + Flux transformer: one velocity prediction over packed image tokens."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.connector = Qwen2Connector(config.connector)
        self.transformer = build_flux_transformer(config)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.x_embedder.weight.dtype

    def forward(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        t: torch.Tensor,
        embeds: torch.Tensor,
        mask: torch.Tensor,
    ) -> torch.Tensor:
        """img [B, T, 64] packed tokens, img_ids [T, 3], txt_ids [L, 3], t [B], embeds [B, L, C], mask [B, L]."""
        txt, pooled = self.connector(embeds, t, mask)
        return self.transformer(
            hidden_states=img,
            encoder_hidden_states=txt,
            pooled_projections=pooled,
            timestep=t,
            img_ids=img_ids,
            txt_ids=txt_ids,
            return_dict=False,
        )[0]
