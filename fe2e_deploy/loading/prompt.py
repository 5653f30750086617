"""The cached empty-prompt embedding (``no_info.npz``: ``embeds`` [L, C], ``masks`` [L])."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..load_gate import opening
from .checkpoint import CheckpointError, check_readable

#: Longest accepted embedding: the real ``no_info.npz`` holds 640 tokens (Qwen2.5-VL's context for
#: Step1X-Edit); the connector's attention costs ``L**2``, so a huge file is an error, not a long wait.
MAX_TOKENS = 4096


@dataclass(frozen=True)
class PromptEmbedding:
    embeds: torch.Tensor  # [L, C] float32
    mask: torch.Tensor  # [L] int64, 1 = valid token

    @property
    def length(self) -> int:
        return self.embeds.shape[0]


def _numeric(path: Path, name: str, array: np.ndarray, kinds: str) -> np.ndarray:
    """``array`` if its dtype is of one of numpy's ``kinds`` (f float, i/u integer, b bool), else an error."""
    if array.dtype.kind not in kinds:
        raise CheckpointError(f"{path}: '{name}' has dtype {array.dtype.str}, expected numbers")
    return array


def load_prompt_embedding(path: str | Path, in_channels: int) -> PromptEmbedding:
    """The ``.npz`` at ``path``, checked: numeric arrays of the right shapes, at most ``MAX_TOKENS`` tokens,
    finite embeddings, a 0/1 mask with at least one valid token."""
    path = Path(path)
    check_readable(path, "prompt embedding file")
    opening("prompt embedding", path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = {"embeds", "masks"} - set(data.files)
            if missing:
                raise CheckpointError(f"{path}: missing array(s) {sorted(missing)}; found {sorted(data.files)}")
            embeds, masks = np.asarray(data["embeds"]), np.asarray(data["masks"])
    except PermissionError as exc:
        raise CheckpointError(
            f"{path}: permission denied (the prompt embedding file exists but cannot be read)"
        ) from exc
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable .npz file ({exc})") from exc
    embeds = _numeric(path, "embeds", embeds, "fiu")
    masks = _numeric(path, "masks", masks, "fiub")
    if embeds.ndim == 3 and embeds.shape[0] == 1:
        embeds = embeds[0]
    if masks.ndim == 2 and masks.shape[0] == 1:
        masks = masks[0]
    if embeds.ndim != 2 or embeds.shape[1] != in_channels:
        raise CheckpointError(f"{path}: 'embeds' has shape {list(embeds.shape)}, expected [L, {in_channels}]")
    if embeds.shape[0] > MAX_TOKENS:
        raise CheckpointError(
            f"{path}: {embeds.shape[0]} tokens, more than {MAX_TOKENS} (the real empty prompt has 640): "
            "not an empty-prompt embedding"
        )
    if masks.shape != (embeds.shape[0],):
        raise CheckpointError(f"{path}: 'masks' has shape {list(masks.shape)}, expected [{embeds.shape[0]}]")
    embeds = embeds.astype(np.float32)
    if not np.isfinite(embeds).all():
        raise CheckpointError(f"{path}: 'embeds' contains NaN or Inf (or values beyond float32)")
    if not np.isin(masks, (0, 1)).all():
        raise CheckpointError(f"{path}: 'masks' must hold only 0 and 1 (1 = valid token)")
    if masks.sum() == 0:
        raise CheckpointError(f"{path}: 'masks' marks no valid token")
    return PromptEmbedding(torch.from_numpy(embeds), torch.from_numpy(masks.astype(np.int64)))
