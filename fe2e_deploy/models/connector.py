"""Step1X-Edit's Qwen2.5-VL connector, written with the official module and parameter names.

No library ships this module (it is HunyuanVideo's token refiner plus a pooled projection, as
Step1X-Edit uses it), so it is ours. It maps the cached empty-prompt embedding ``[L, in_channels]``
and the time ``t`` to the DiT's text tokens ``[L, hidden_size]`` and pooled vector ``[768]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import POOLED_DIM, ConnectorConfig


def sinusoidal_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10_000.0) -> torch.Tensor:
    """``[cos, sin]`` timestep features, as HunyuanVideo's and FLUX's ``timestep_embedding`` (float32)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = sinusoidal_embedding(t, self.frequency_embedding_size).to(self.mlp[0].weight.dtype)
        return self.mlp(t_freq)


class TextProjection(nn.Module):
    def __init__(self, in_channels: int, hidden_size: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, hidden_size)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class IndividualTokenRefinerBlock(nn.Module):
    def __init__(self, hidden_size: int, heads_num: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.heads_num = heads_num
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.self_attn_qkv = nn.Linear(hidden_size, hidden_size * 3)
        self.self_attn_proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        gate_msa, gate_mlp = self.adaLN_modulation(c).chunk(2, dim=1)
        b, length, _ = x.shape
        qkv = self.self_attn_qkv(self.norm1(x))
        q, k, v = qkv.view(b, length, 3, self.heads_num, -1).permute(2, 0, 3, 1, 4)  # 3 x [B, H, L, D]
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        attn = attn.transpose(1, 2).reshape(b, length, -1)
        x = x + self.self_attn_proj(attn) * gate_msa.unsqueeze(1)
        return x + self.mlp(self.norm2(x)) * gate_mlp.unsqueeze(1)


class IndividualTokenRefiner(nn.Module):
    def __init__(self, hidden_size: int, heads_num: int, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(IndividualTokenRefinerBlock(hidden_size, heads_num) for _ in range(depth))

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attn_mask = None
        if mask is not None:
            valid = mask.bool()
            attn_mask = (valid[:, None, None, :] & valid[:, None, :, None]).clone()
            attn_mask[:, :, :, 0] = True  # as the official code: no all-masked rows for padding tokens
        for block in self.blocks:
            x = block(x, c, attn_mask)
        return x


class SingleTokenRefiner(nn.Module):
    def __init__(self, in_channels: int, hidden_size: int, heads_num: int, depth: int):
        super().__init__()
        self.input_embedder = nn.Linear(in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.c_embedder = TextProjection(in_channels, hidden_size)
        self.individual_token_refiner = IndividualTokenRefiner(hidden_size, heads_num, depth)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask_f = mask.to(x.dtype).unsqueeze(-1)
        pooled = (x * mask_f).sum(dim=1) / mask_f.sum(dim=1)
        c = self.t_embedder(t) + self.c_embedder(pooled)
        return self.individual_token_refiner(self.input_embedder(x), c, mask)


class Qwen2Connector(nn.Module):
    """``forward(embeds [B,L,in], t [B], mask [B,L]) -> (txt [B,L,hidden], y [B,768])``; ``t`` in [0,1]."""

    def __init__(self, config: ConnectorConfig):
        super().__init__()
        self.config = config
        self.S = SingleTokenRefiner(config.in_channels, config.hidden_size, config.heads_num, config.depth)
        self.global_proj_out = nn.Linear(config.in_channels, POOLED_DIM)
        self.scale_factor = nn.Parameter(torch.full((1,), -(1 - 0.09)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = t * 1000
        mask_f = mask.to(x.dtype).unsqueeze(-1)
        x_mean = (x * mask_f).sum(dim=1) / mask_f.sum(dim=1) * (1 + self.scale_factor.to(x.dtype))
        return self.S(x, t, mask), self.global_proj_out(x_mean)
