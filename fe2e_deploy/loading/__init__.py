"""Loading the official files: DiT (+ connector), VAE, empty-prompt embedding."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ..config import ModelConfig
from ..models.dit import Step1XEditDiT
from ..models.vae import build_vae
from .checkpoint import CheckpointError, load_into
from .dit_layout import dit_layout
from .prompt import PromptEmbedding, load_prompt_embedding
from .vae_layout import vae_layout


def load_dit(config: ModelConfig, path: str | Path, dtype: torch.dtype, device="cpu", progress=True) -> Step1XEditDiT:
    with torch.device("meta"):
        model = Step1XEditDiT(config)
    return load_into(model, dit_layout(config), path, dtype, device, "DiT checkpoint", progress)


def load_vae(config: ModelConfig, path: str | Path, dtype=torch.float32, device="cpu", progress=True) -> AutoencoderKL:
    with torch.device("meta"):
        model = build_vae(config.vae)
    return load_into(model, vae_layout(config.vae), path, dtype, device, "VAE checkpoint", progress)


__all__ = ["CheckpointError", "PromptEmbedding", "load_dit", "load_prompt_embedding", "load_vae"]
