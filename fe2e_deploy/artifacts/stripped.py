"""Reading a stripped model folder (``strip`` writes it): DiT weights, VAE and ``stripped.json``.

The folder's format (names, format version) is defined here, where it is read; ``strip.py``
writes it. Loading is strict (names, shapes, format version) and builds the DiT on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from ..config import ModelConfig
from ..loading import load_vae
from ..loading.checkpoint import CheckpointError, load_into
from ..loading.layout import CheckpointLayout, copy_rules, parameter_shapes
from ..models.stripped import StrippedDiT
from .sidecar import check_fields, read_json

FORMAT = "fe2e-stripped"


FORMAT_VERSION = 1


WEIGHTS_FILE, VAE_FILE, META_FILE = "stripped_dit.safetensors", "vae.safetensors", "stripped.json"


#: The fields of ``stripped.json`` that readers use.
META_FIELDS = {"model_config": dict, "txt_len": int, "dtype": str, "sources": dict}
RESTRIP = "strip the model again with `fe2e-deploy strip`"


@dataclass
class StrippedModel:
    dit: StrippedDiT
    vae: AutoencoderKL
    meta: dict
    config: ModelConfig
    folder: Path | None  # None: built in memory (``strip_in_memory``)


def read_stripped_meta(folder: str | Path) -> dict:
    """``stripped.json`` of a stripped folder, its format and fields checked (cheap: no weights read).

    Commands call it before any long work, so a missing or corrupt folder fails at once.
    """
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        what = (
            "stripped model folder not found"
            if not folder.exists()
            else f"not a stripped model folder (no {META_FILE})"
        )
        raise CheckpointError(f"{folder}: {what}; run `fe2e-deploy strip` to make one")
    try:
        meta = read_json(meta_path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: not a JSON object ({RESTRIP})")
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format {meta.get('format')!r} v{meta.get('format_version')} is not "
            f"{FORMAT!r} v{FORMAT_VERSION} ({RESTRIP})"
        )
    try:
        return check_fields(meta, meta_path, META_FIELDS, RESTRIP)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


def load_stripped(folder: str | Path, device: str | torch.device = "cpu", progress: bool = False) -> StrippedModel:
    """Load a stripped folder (strictly: names, shapes, format version); the VAE in FP32."""
    folder = Path(folder)
    meta = read_stripped_meta(folder)
    meta_path = folder / META_FILE
    config = ModelConfig.from_dict(meta["model_config"], source=str(meta_path))
    with torch.device("meta"):
        dit = StrippedDiT(config, int(meta["txt_len"]))
    names = list(parameter_shapes(dit))
    layout = CheckpointLayout(copy_rules(names), parameter_shapes(dit))
    load_into(dit, layout, folder / WEIGHTS_FILE, None, device, "stripped model", progress)
    vae = load_vae(config, folder / VAE_FILE, torch.float32, device, progress)
    return StrippedModel(dit, vae, meta, config, folder)
