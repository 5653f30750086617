"""Train the FLUX-style VAE as an autoencoder of images, depth maps and normal maps (the demo model's stage 1).

FE2E encodes all three with one frozen VAE: the RGB input, the log-normalised depth (replicated to
3 channels) and the normals in [-1, 1]. A VAE that reconstructs the two maps well bounds what the
DiT can reach, so the demo model's VAE is trained on all three kinds. The pipeline only ever uses
the posterior mean (``encode_mean``), so training does too: a deterministic autoencoder with an L1
reconstruction loss and a small L2 penalty on the latent that keeps it near unit scale. Each map has
a weight: the pipeline never decodes an RGB latent, so RGB is reconstructed only enough to keep its
latent informative, and the decoder's capacity goes to the depth and normal maps. Afterwards
:func:`latent_statistics` gives the ``shift_factor`` / ``scale_factor`` that make the DiT's latents
zero-mean and unit-variance, written into the model config as the FLUX VAE's are.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import AutoencoderKL

from .schedule import optimise

LATENT_PENALTY = 1e-4


def encode_raw(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """The posterior mean before the config's shift and scale."""
    return vae.encode(x).latent_dist.mean


def reconstruction_loss(vae: AutoencoderKL, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean over maps of each map's L1 error (``weights`` ``[B]``, default 1), plus the latent penalty."""
    z = encode_raw(vae, x)
    per_map = (vae.decode(z).sample - x).abs().flatten(1).mean(1)
    w = torch.ones_like(per_map) if weights is None else weights.to(per_map)
    return (per_map * w).sum() / w.sum() + LATENT_PENALTY * z.pow(2).mean()


def train_autoencoder(
    vae: AutoencoderKL,
    batches: Callable[[int], tuple[torch.Tensor, torch.Tensor | None]],
    steps: int,
    lr: float,
    time_budget: float | None = None,
    log: Callable[[dict], object] = print,
    stage: str = "vae",
) -> int:
    """Train ``vae`` in place on ``batches(step)`` = (maps ``[B, 3, H, W]`` in [-1, 1], weights ``[B]`` or None);
    returns the steps run (``time_budget``: see :func:`~.schedule.optimise`)."""
    losses = optimise(
        vae,
        lambda step: reconstruction_loss(vae, *batches(step)),
        steps,
        lr,
        warmup=max(1, steps // 20),
        time_budget=time_budget,
        log=log,
        stage=stage,
    )
    return len(losses)


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, images: torch.Tensor, batch: int = 32) -> tuple[float, float]:
    """(shift, scale) such that ``(mean - shift) * scale`` has mean 0 and standard deviation 1 over ``images``."""
    latents = torch.cat([encode_raw(vae, images[i : i + batch]) for i in range(0, len(images), batch)])
    return float(latents.mean()), float(1.0 / latents.std().clamp_min(1e-6))
