"""The stripped deployment DiT: FE2E's one step with every constant folded away.

With t = 1 and the empty prompt fixed, the connector, time/vector/txt embedders, every block's
modulation linear and the final adaLN are constants (computed once by ``fe2e_deploy.strip``).
What remains per image: the reference tokens through ``img_in``, the double and single stream
blocks over [constant text tokens, constant target tokens, reference tokens], the final linear.

Weights keep the official names (fused ``qkv`` and ``linear1``: one GEMM each). Precision policy
for deployment: the residual stream, LayerNorm, qk-RMSNorm, modulation and RoPE run in FP32;
matrix products and attention run in the weights' dtype (BF16 for deployment, FP32 for checks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig


def rope_tables(ids: torch.Tensor, axes_dim: tuple[int, ...], theta: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[S, head_dim]`` (pairs repeated) for position ids ``[S, n_axes]``, as FLUX's RoPE."""
    cos, sin = [], []
    for axis, dim in enumerate(axes_dim):
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        angles = torch.outer(ids[:, axis].double(), freqs)
        cos.append(angles.cos().repeat_interleave(2, dim=1))
        sin.append(angles.sin().repeat_interleave(2, dim=1))
    return torch.cat(cos, dim=1).float(), torch.cat(sin, dim=1).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), in FP32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x.float() * cos + rotated * sin


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), x.shape[-1:], eps=1e-6)


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.scale.float()


class QKNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.query_norm, self.key_norm = RMSNorm(dim), RMSNorm(dim)


def compute_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype a Linear multiplies in: its weight's, or an FP8 linear's ``compute_dtype`` (no dequantisation)."""
    return getattr(layer, "compute_dtype", None) or layer.weight.dtype


def linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """FP32 activations in, matmul in the weight dtype, FP32 out."""
    return layer(x.to(compute_dtype(layer))).float()


def attention(q, k, v, cos, sin, dtype) -> torch.Tensor:
    """q, k, v ``[B, H, S, D]`` (FP32) -> ``[B, S, H*D]`` FP32; RoPE in FP32, SDPA in ``dtype``."""
    q, k = apply_rope(q, cos, sin).to(dtype), apply_rope(k, cos, sin).to(dtype)
    out = F.scaled_dot_product_attention(q, k, v.to(dtype))
    return out.transpose(1, 2).flatten(2).float()


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = linear(self.qkv, x).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        return self.norm.query_norm(q), self.norm.key_norm(k), v


def mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


def run_mlp(seq: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    return linear(seq[2], seq[1](linear(seq[0], x).to(compute_dtype(seq[0]))))


class DoubleBlock(nn.Module):
    """Image and text streams with joint attention; modulation [6, H] = (shift, scale, gate) x 2."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.img_attn, self.txt_attn = Attention(dim, heads), Attention(dim, heads)
        self.img_mlp, self.txt_mlp = mlp(dim, mlp_hidden), mlp(dim, mlp_hidden)
        self.register_buffer("img_mod", torch.zeros(6, dim))
        self.register_buffer("txt_mod", torch.zeros(6, dim))

    def forward(self, img, txt, cos, sin):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod
        iq, ik, iv = self.img_attn.qkv_heads(layer_norm(img) * (1 + i_scale1) + i_shift1)
        tq, tk, tv = self.txt_attn.qkv_heads(layer_norm(txt) * (1 + t_scale1) + t_shift1)
        dtype = compute_dtype(self.img_attn.qkv)
        attn = attention(torch.cat([tq, iq], 2), torch.cat([tk, ik], 2), torch.cat([tv, iv], 2), cos, sin, dtype)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
        img = img + i_gate1 * linear(self.img_attn.proj, img_attn)
        img = img + i_gate2 * run_mlp(self.img_mlp, layer_norm(img) * (1 + i_scale2) + i_shift2)
        txt = txt + t_gate1 * linear(self.txt_attn.proj, txt_attn)
        txt = txt + t_gate2 * run_mlp(self.txt_mlp, layer_norm(txt) * (1 + t_scale2) + t_shift2)
        return img, txt


class SingleBlock(nn.Module):
    """Parallel attention + MLP over the joined sequence; modulation [3, H] = (shift, scale, gate)."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.linear1 = nn.Linear(dim, 3 * dim + mlp_hidden)
        self.linear2 = nn.Linear(dim + mlp_hidden, dim)
        self.norm = QKNorm(dim // heads)
        self.register_buffer("modulation", torch.zeros(3, dim))

    def forward(self, x, cos, sin):
        shift, scale, gate = self.modulation
        dtype = compute_dtype(self.linear1)
        hidden = self.linear1((layer_norm(x) * (1 + scale) + shift).to(dtype))
        qkv, mlp_in = hidden.split([3 * self.dim, hidden.shape[-1] - 3 * self.dim], dim=-1)
        q, k, v = qkv.float().unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        attn = attention(self.norm.query_norm(q), self.norm.key_norm(k), v, cos, sin, dtype)
        mlp_out = F.gelu(mlp_in, approximate="tanh")
        return x + gate * linear(self.linear2, torch.cat([attn.to(dtype), mlp_out], dim=-1))


class FinalLayer(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear = nn.Linear(dim, out)
        self.register_buffer("modulation", torch.zeros(2, dim))  # (shift, scale), the official order

    def forward(self, x):
        shift, scale = self.modulation
        return linear(self.linear, layer_norm(x) * (1 + scale) + shift)


class StrippedDiT(nn.Module):
    """``forward(ref_tokens [B, N, 64], cos, sin) -> velocity [B, 2N, 64]`` (target half first)."""

    #: Constant buffers that replace folded modules (everything else is an official weight).
    CONSTANTS = ("txt", "target_token")

    def __init__(self, config: ModelConfig, txt_len: int):
        super().__init__()
        d = config.dit
        self.config = config
        self.img_in = nn.Linear(d.in_channels, d.hidden_size)
        self.register_buffer("txt", torch.zeros(txt_len, d.hidden_size))  # txt_in(connector(empty prompt, t=1))
        self.register_buffer("target_token", torch.zeros(d.hidden_size))  # img_in(z0 = 0) = img_in.bias
        self.double_blocks = nn.ModuleList(
            DoubleBlock(d.hidden_size, d.num_heads, d.mlp_hidden_dim) for _ in range(d.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleBlock(d.hidden_size, d.num_heads, d.mlp_hidden_dim) for _ in range(d.depth_single_blocks)
        )
        self.final_layer = FinalLayer(d.hidden_size, d.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return compute_dtype(self.img_in)

    def cast_weights(self, dtype: torch.dtype) -> StrippedDiT:
        """Cast the weights (parameters) to ``dtype``; the folded constants (buffers) stay FP32."""
        for param in self.parameters():
            param.data = param.data.to(dtype)
        return self

    def rope(self, latent_height: int, latent_width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables for [text, target, reference] at a latent size (text ids 0, image ids (0, row, col))."""
        rows, cols = torch.meshgrid(torch.arange(latent_height // 2), torch.arange(latent_width // 2), indexing="ij")
        img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3)
        ids = torch.cat([torch.zeros(self.txt.shape[0], 3, dtype=img_ids.dtype), img_ids, img_ids])
        cos, sin = rope_tables(ids, self.config.dit.axes_dim, self.config.dit.theta)
        return cos.to(self.txt.device), sin.to(self.txt.device)

    def forward(self, ref_tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, _ = ref_tokens.shape
        target = self.target_token.expand(b, n, -1)
        img = torch.cat([target, linear(self.img_in, ref_tokens)], dim=1)
        # A new tensor, not a view of the buffer: under inference_mode every later block input is an inference
        # tensor, and a view of a normal buffer is not one, so the first double block would get a second
        # torch.compile graph (and use up Dynamo's recompile limit twice as fast) for the same shapes.
        txt = self.txt.expand(b, -1, -1).clone()
        for block in self.double_blocks:
            img, txt = block(img, txt, cos, sin)
        x = torch.cat([txt, img], dim=1)
        for block in self.single_blocks:
            x = block(x, cos, sin)
        return self.final_layer(x[:, txt.shape[1] :])
