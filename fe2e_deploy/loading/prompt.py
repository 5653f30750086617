"""The cached empty-prompt embedding (``no_info.npz``: ``embeds`` [L, C], ``masks`` [L])."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError


@dataclass(frozen=True)
class PromptEmbedding:
    embeds: torch.Tensor  # [L, C] float32
    mask: torch.Tensor  # [L] int64, 1 = valid token

    @property
    def length(self) -> int:
        return self.embeds.shape[0]


def load_prompt_embedding(path: str | Path, in_channels: int) -> PromptEmbedding:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: prompt embedding file not found")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"embeds", "masks"} - set(data.files)
            if missing:
                raise CheckpointError(f"{path}: missing array(s) {sorted(missing)}; found {sorted(data.files)}")
            embeds, masks = np.asarray(data["embeds"]), np.asarray(data["masks"])
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable .npz file ({exc})") from exc
    if embeds.ndim == 3 and embeds.shape[0] == 1:
        embeds = embeds[0]
    if masks.ndim == 2 and masks.shape[0] == 1:
        masks = masks[0]
    if embeds.ndim != 2 or embeds.shape[1] != in_channels:
        raise CheckpointError(f"{path}: 'embeds' has shape {list(embeds.shape)}, expected [L, {in_channels}]")
    if masks.shape != (embeds.shape[0],):
        raise CheckpointError(f"{path}: 'masks' has shape {list(masks.shape)}, expected [{embeds.shape[0]}]")
    if not np.isfinite(embeds).all():
        raise CheckpointError(f"{path}: 'embeds' contains NaN or Inf")
    if masks.sum() == 0:
        raise CheckpointError(f"{path}: 'masks' marks no valid token")
    return PromptEmbedding(torch.from_numpy(embeds.astype(np.float32)), torch.from_numpy(masks.astype(np.int64)))
