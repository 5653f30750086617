"""FE2E's consistent-velocity objective at t = 1 with the fixed start z0 = 0.

The DiT sees [z0 = 0 tokens, RGB reference tokens] under the empty prompt and predicts a velocity
over both halves. Inference reads depth = -v (left half, one Euler step from t = 1 to 0) and
normals = v (right half), so training pulls the left half towards -z_D and the right half towards
+z_N, where z_D / z_N are the VAE latents of the log-normalised depth and the normals. MSE over
the tokens whose 16x16 pixel patch is mostly valid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.packing import pack
from ..models.vae import encode_mean
from ..reference import FE2EPipeline

PATCH = 16  # pixels per token side: 8x VAE downsampling x 2x2 packing


@torch.no_grad()
def velocity_targets(pipe: FE2EPipeline, rgb, depth, normals, valid) -> tuple[torch.Tensor, ...]:
    """Batch ``[B, 3, H, W]`` (+ valid ``[B, H, W]``) -> (reference latent, target velocity ``[B, 2N, 64]``,
    token weights ``[B, 2N, 1]``)."""
    ref_latent = encode_mean(pipe.vae, rgb).float()
    z_depth = encode_mean(pipe.vae, depth).float()
    z_normals = encode_mean(pipe.vae, normals).float()
    target = torch.cat([-pack(z_depth), pack(z_normals)], dim=1)
    fraction = F.avg_pool2d(valid[:, None].float(), PATCH).flatten(1)  # [B, N] row-major, as pack
    weight = (fraction > 0.5).float()
    return ref_latent, target, torch.cat([weight, weight], dim=1)[..., None]


def velocity_loss(pipe: FE2EPipeline, ref_latent, target, weight) -> torch.Tensor:
    """Masked MSE between the predicted and the target velocity."""
    v = pipe.velocity(ref_latent).float()
    per_token = ((v - target) ** 2).mean(dim=-1, keepdim=True)
    return (per_token * weight).sum() / weight.sum().clamp_min(1.0)
