"""2x2 token packing of latents (FLUX's ``b c (h ph) (w pw) -> b (h w) (c ph pw)``) and position ids."""

from __future__ import annotations

import torch


def pack(latent: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, (H/2)(W/2), C*4]``, i.e. ``b c (h ph) (w pw) -> b (h w) (c ph pw)``."""
    b, c, h, w = latent.shape
    return latent.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`pack` for a latent of ``height x width``."""
    b, _, d = tokens.shape
    c = d // 4
    return tokens.view(b, height // 2, width // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def latent_ids(height: int, width: int) -> torch.Tensor:
    """Position ids (0, row, col) of the packed tokens of a ``height x width`` latent: ``[N, 3]``."""
    rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
