"""The deployment graphs, one resolution each: VAE encoder, stripped DiT step, VAE decoder, fused.

These modules are what ``export`` writes to ONNX and what the stripped/compiled engines run:

- :class:`VAEEncoder`  image ``[B, 3, H, W]`` in [-1, 1] -> reference latent ``[B, 16, H/8, W/8]``
- :class:`DiTStep`     reference latent -> (depth latent, normal latent), packing and the split included
- :class:`VAEDecoder`  latent -> image ``[B, 3, H, W]`` clamped to [-1, 1]
- :class:`FE2EGraph`   image -> depth ``[B, 1, H, W]`` in [0, 1] and normals ``[B, 3, H, W]`` (not yet
  unit length: ``processing.postprocess`` resizes to the input size and normalises, as the reference does)

The VAE runs in FP32 as in the official code; the DiT in its weights' dtype (see ``stripped.py``).
RoPE tables are constants of the resolution (non-persistent buffers, folded into the exported graph).
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn

from ..config import LATENT_DOWNSAMPLE
from ..errors import InvalidInput
from .packing import pack, unpack
from .stripped import StrippedDiT
from .vae import decode, encode_mean


class VAEEncoder(nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return encode_mean(self.vae, image).float()


class VAEDecoder(nn.Module):
    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return decode(self.vae, latent).float().clamp(-1, 1)


class DiTStep(nn.Module):
    """FE2E's one step at t = 1: depth latent = -v on the target half, normal latent = v on the reference half."""

    def __init__(self, dit: StrippedDiT, latent_height: int, latent_width: int):
        super().__init__()
        self.dit, self.latent_height, self.latent_width = dit, latent_height, latent_width
        cos, sin = dit.rope(latent_height, latent_width)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ref_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = pack(ref_latent.float())
        n = tokens.shape[1]
        v = self.dit(tokens, self.cos, self.sin)
        h, w = self.latent_height, self.latent_width
        return unpack(-v[:, :n], h, w), unpack(v[:, n:], h, w)


class FE2EGraph(nn.Module):
    """image -> (depth, normals) at one processing resolution; decoder run once on both latents."""

    def __init__(self, vae: AutoencoderKL, dit: StrippedDiT, width: int, height: int):
        super().__init__()
        if width % 16 or height % 16:
            raise InvalidInput(f"resolution {width}x{height}: both sides must be multiples of 16")
        self.width, self.height = width, height
        self.encoder, self.decoder = VAEEncoder(vae), VAEDecoder(vae)
        self.step = DiTStep(dit, height // LATENT_DOWNSAMPLE, width // LATENT_DOWNSAMPLE)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decode(*self.step(self.encoder(image)))

    def decode(self, depth_latent: torch.Tensor, normal_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both latents through the decoder in one batch -> (depth in [0, 1], decoded normals)."""
        b = depth_latent.shape[0]
        decoded = self.decoder(torch.cat([depth_latent, normal_latent]))
        depth = (decoded[:b] * 0.5 + 0.5).mean(dim=1, keepdim=True)
        return depth, decoded[b:]
