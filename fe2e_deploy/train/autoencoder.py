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

import math
import time
from collections.abc import Callable

import torch
from diffusers import AutoencoderKL

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


def cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


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
    returns the steps run.

    ``time_budget`` (seconds) stops early, after the step that crosses it (the schedule stays the one
    of ``steps``, so an early stop ends at a higher learning rate; the caller records the steps run).
    """
    vae.train().requires_grad_(True)  # the loaders return frozen modules
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = time.perf_counter()
    done = 0
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup=max(1, steps // 20))
        loss = reconstruction_loss(vae, *batches(step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        done = step + 1
        elapsed = time.perf_counter() - start
        if done % 25 == 0 or done == steps:
            log({"stage": stage, "step": done, "loss": float(loss.detach()), "seconds": round(elapsed, 1)})
        if time_budget is not None and elapsed > time_budget:
            log({"stage": stage, "stopped_at": done, "reason": f"time budget {time_budget:.0f} s"})
            break
    vae.eval()
    return done


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, images: torch.Tensor, batch: int = 32) -> tuple[float, float]:
    """(shift, scale) such that ``(mean - shift) * scale`` has mean 0 and standard deviation 1 over ``images``."""
    latents = torch.cat([encode_raw(vae, images[i : i + batch]) for i in range(0, len(images), batch)])
    return float(latents.mean()), float(1.0 / latents.std().clamp_min(1e-6))
