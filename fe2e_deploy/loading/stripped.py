"""Loading a stripped model folder (its contract: :class:`fe2e_deploy.artifacts.stripped.StrippedMeta`).

Strict (names, shapes, format version); the DiT is built on the meta device and filled tensor by tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ..artifacts.stripped import StrippedMeta, read_stripped_meta
from ..config import ModelConfig
from ..models.stripped import StrippedDiT
from . import load_vae
from .checkpoint import load_into
from .layout import CheckpointLayout, copy_rules, parameter_shapes


@dataclass
class StrippedModel:
    dit: StrippedDiT
    vae: AutoencoderKL
    meta: StrippedMeta
    config: ModelConfig
    folder: Path | None  # None: built in memory (``strip_in_memory``)


def load_stripped(folder: str | Path, device: str | torch.device = "cpu", progress: bool = False) -> StrippedModel:
    """Load a stripped folder (strictly: names, shapes, format version); the VAE in FP32."""
    folder = Path(folder)
    meta = read_stripped_meta(folder)
    config = ModelConfig.from_dict(meta.model_config, source=str(folder / StrippedMeta.FILE))
    with torch.device("meta"):
        dit = StrippedDiT(config, meta.txt_len)
    names = list(parameter_shapes(dit))
    layout = CheckpointLayout(copy_rules(names), parameter_shapes(dit))
    load_into(dit, layout, folder / StrippedMeta.WEIGHTS, None, device, "stripped model", progress)
    vae = load_vae(config, folder / StrippedMeta.VAE, torch.float32, device, progress)
    return StrippedModel(dit, vae, meta, config, folder)
