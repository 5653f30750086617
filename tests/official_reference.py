"""The official Step1X-Edit DiT and FLUX VAE math, written with the official module names.

Loaded with plain ``load_state_dict(strict=True)`` from the official-format files, these modules
are an independent check of our name conversion onto diffusers' classes: same files, same
inputs, outputs must agree in FP32. Formulas follow the official ``modules/layers.py`` and
``modules/autoencoder.py`` (FLUX): (shift, scale, gate) modulation, qk-RMSNorm with ``.scale``,
RoPE as 2x2 rotation matrices, tanh-GELU MLPs, final adaLN as (shift, scale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fe2e_deploy.config import ModelConfig
from fe2e_deploy.models.connector import Qwen2Connector


def rope(pos: torch.Tensor, dim: int, theta: int) -> torch.Tensor:
    scale = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    omega = 1.0 / (theta**scale)
    out = torch.einsum("...n,d->...nd", pos.double(), omega)
    out = torch.stack([torch.cos(out), -torch.sin(out), torch.sin(out), torch.cos(out)], dim=-1)
    return out.reshape(*out.shape[:-1], 2, 2).float()


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    x_ = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * x_[..., 0] + freqs[..., 1] * x_[..., 1]
    return out.reshape(*x.shape).type_as(x)


def attention(q, k, v, pe):
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    x = F.scaled_dot_product_attention(q, k, v)
    b, h, length, d = x.shape
    return x.transpose(1, 2).reshape(b, length, h * d)


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        rrms = torch.rsqrt(torch.mean(x.float() ** 2, dim=-1, keepdim=True) + 1e-6)
        return (x.float() * rrms * self.scale.float()).to(x.dtype)


class QKNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.query_norm, self.key_norm = RMSNorm(dim), RMSNorm(dim)


class SelfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.norm = QKNorm(dim // heads)
        self.proj = nn.Linear(dim, dim)

    def qkv_heads(self, x):
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        return self.norm.query_norm(q), self.norm.key_norm(k), v


class Modulation(nn.Module):
    def __init__(self, dim, double):
        super().__init__()
        self.mult = 6 if double else 3
        self.lin = nn.Linear(dim, self.mult * dim)

    def forward(self, vec):
        return self.lin(F.silu(vec))[:, None, :].chunk(self.mult, dim=-1)


def layer_norm(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def mlp(dim, hidden):
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))


class DoubleStreamBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.img_mod, self.txt_mod = Modulation(dim, True), Modulation(dim, True)
        self.img_attn, self.txt_attn = SelfAttention(dim, heads), SelfAttention(dim, heads)
        self.img_mlp, self.txt_mlp = mlp(dim, 4 * dim), mlp(dim, 4 * dim)

    def forward(self, img, txt, vec, pe):
        i_shift1, i_scale1, i_gate1, i_shift2, i_scale2, i_gate2 = self.img_mod(vec)
        t_shift1, t_scale1, t_gate1, t_shift2, t_scale2, t_gate2 = self.txt_mod(vec)
        iq, ik, iv = self.img_attn.qkv_heads((1 + i_scale1) * layer_norm(img) + i_shift1)
        tq, tk, tv = self.txt_attn.qkv_heads((1 + t_scale1) * layer_norm(txt) + t_shift1)
        attn = attention(torch.cat([tq, iq], 2), torch.cat([tk, ik], 2), torch.cat([tv, iv], 2), pe)
        txt_attn, img_attn = attn[:, : txt.shape[1]], attn[:, txt.shape[1] :]
        img = img + i_gate1 * self.img_attn.proj(img_attn)
        img = img + i_gate2 * self.img_mlp((1 + i_scale2) * layer_norm(img) + i_shift2)
        txt = txt + t_gate1 * self.txt_attn.proj(txt_attn)
        txt = txt + t_gate2 * self.txt_mlp((1 + t_scale2) * layer_norm(txt) + t_shift2)
        return img, txt


class SingleStreamBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.linear1 = nn.Linear(dim, dim * 3 + 4 * dim)
        self.linear2 = nn.Linear(dim + 4 * dim, dim)
        self.norm = QKNorm(dim // heads)
        self.modulation = Modulation(dim, False)

    def forward(self, x, vec, pe):
        shift, scale, gate = self.modulation(vec)
        qkv, hidden = torch.split(self.linear1((1 + scale) * layer_norm(x) + shift), [3 * self.dim, 4 * self.dim], -1)
        b, length, _ = x.shape
        q, k, v = qkv.view(b, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attn = attention(self.norm.query_norm(q), self.norm.key_norm(k), v, pe)
        return x + gate * self.linear2(torch.cat([attn, F.gelu(hidden, approximate="tanh")], 2))


class MLPEmbedder(nn.Module):
    def __init__(self, in_dim, dim):
        super().__init__()
        self.in_layer, self.out_layer = nn.Linear(in_dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        return self.out_layer(F.silu(self.in_layer(x)))


class LastLayer(nn.Module):
    def __init__(self, dim, out):
        super().__init__()
        self.linear = nn.Linear(dim, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        return self.linear((1 + scale[:, None]) * layer_norm(x) + shift[:, None])


def timestep_embedding(t, dim=256, max_period=10000, time_factor=1000.0):
    t = time_factor * t
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class OfficialStep1XEdit(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        d = config.dit
        self.axes_dim, self.theta = d.axes_dim, d.theta
        self.img_in = nn.Linear(d.in_channels, d.hidden_size)
        self.time_in = MLPEmbedder(256, d.hidden_size)
        self.vector_in = MLPEmbedder(d.vec_in_dim, d.hidden_size)
        self.txt_in = nn.Linear(d.context_in_dim, d.hidden_size)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(d.hidden_size, d.num_heads) for _ in range(d.depth))
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(d.hidden_size, d.num_heads) for _ in range(d.depth_single_blocks)
        )
        self.final_layer = LastLayer(d.hidden_size, d.out_channels)
        self.connector = Qwen2Connector(config.connector)

    def forward(self, img, img_ids, txt_ids, t, embeds, mask):
        txt, y = self.connector(embeds, t, mask)
        img = self.img_in(img)
        vec = self.time_in(timestep_embedding(t)) + self.vector_in(y)
        txt = self.txt_in(txt)
        ids = torch.cat([txt_ids, img_ids], dim=0)
        pe = torch.cat([rope(ids[..., i], self.axes_dim[i], self.theta) for i in range(3)], dim=-3)[None, None]
        for block in self.double_blocks:
            img, txt = block(img, txt, vec, pe)
        x = torch.cat([txt, img], 1)
        for block in self.single_blocks:
            x = block(x, vec, pe)
        return self.final_layer(x[:, txt.shape[1] :], vec)


# ---- FLUX VAE ------------------------------------------------------------------------------


def group_norm(c):
    return nn.GroupNorm(32, c, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (m(h).reshape(b, 1, c, hh * ww).transpose(2, 3) for m in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Mid(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z):
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks):
                level.block.append(ResnetBlock(cin, ch * m))
                cin = ch * m
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(cin)
            self.down.append(level)
        self.mid = Mid(cin)
        self.norm_out, self.conv_out = group_norm(cin), nn.Conv2d(cin, 2 * z, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z):
        super().__init__()
        cin = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z, cin, 3, padding=1)
        self.mid = Mid(cin)
        self.up = nn.ModuleList()
        for i in reversed(range(len(ch_mult))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                level.block.append(ResnetBlock(cin, ch * ch_mult[i]))
                cin = ch * ch_mult[i]
            if i != 0:
                level.upsample = Upsample(cin)
            self.up.insert(0, level)
        self.norm_out, self.conv_out = group_norm(cin), nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class OfficialAutoEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        v = config.vae
        self.scale, self.shift = v.scale_factor, v.shift_factor
        self.encoder = Encoder(v.ch, v.ch_mult, v.num_res_blocks, v.z_channels)
        self.decoder = Decoder(v.ch, v.ch_mult, v.num_res_blocks, v.z_channels)

    def encode_mean(self, x):
        mean, _logvar = self.encoder(x).chunk(2, dim=1)
        return self.scale * (mean - self.shift)

    def decode(self, z):
        return self.decoder(z / self.scale + self.shift)
