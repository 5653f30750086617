"""``init-tiny``: a small FE2E with seeded random weights, written in the official file formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from .config import MAX_SEED, PRESETS, ModelConfig
from .errors import InvalidInput, OutputExists
from .files.atomic import atomic_write, write_json
from .load_gate import opening
from .loading.dit_layout import dit_layout, lora_target_modules
from .loading.vae_layout import vae_layout

FILES = {
    "config": "model_config.json",
    "dit": "dit.safetensors",
    "vae": "vae.safetensors",
    "prompt": "empty_prompt.npz",
    "lora": "lora.safetensors",
}
PROMPT_TOKENS = 32
PROMPT_VALID_TOKENS = 8
LORA_RANK = 4
LORA_ALPHA = 2.0


def check_seed(seed: int, name: str = "--seed") -> int:
    """``seed`` if it is an integer from 0 to :data:`MAX_SEED`, else a one-line ``ValueError`` naming ``name``."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed <= MAX_SEED:
        raise InvalidInput(f"{name} must be an integer from 0 to 2**63-1 ({MAX_SEED}), got {seed}")
    return int(seed)


def random_official_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Non-degenerate random weights: fan-in scaled matrices, norm scales near 1, small biases (on ``gen``'s device)."""
    x = torch.randn(shape, generator=gen, device=gen.device)
    if name == "connector.scale_factor":
        return torch.full(shape, -(1 - 0.09), device=gen.device)
    if len(shape) >= 2:
        return x / np.sqrt(np.prod(shape[1:]))
    if name.endswith(".bias"):
        return 0.05 * x
    return 1.0 + 0.1 * x  # LayerNorm / GroupNorm / RMSNorm scales


def random_state(shapes: dict[str, tuple[int, ...]], gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {name: random_official_tensor(name, shapes[name], gen).contiguous() for name in sorted(shapes)}


def random_kohya_lora(config: ModelConfig, gen: torch.Generator, rank: int = LORA_RANK, alpha: float = LORA_ALPHA):
    shapes = dit_layout(config).official_shapes()
    out = {}
    for module in lora_target_modules(config):
        out_f, in_f = shapes[module + ".weight"]
        stem = "lora_unet_" + module.replace(".", "_")
        out[f"{stem}.lora_down.weight"] = torch.randn(rank, in_f, generator=gen) / np.sqrt(in_f)
        out[f"{stem}.lora_up.weight"] = torch.randn(out_f, rank, generator=gen) / np.sqrt(rank)
        out[f"{stem}.alpha"] = torch.tensor(alpha)
    return out


def write_tiny_model(
    out_dir: str | Path, seed: int = 0, config: ModelConfig | None = None, overwrite: bool = False
) -> dict[str, Path]:
    """Write the five files of a random model; returns their paths by role.

    Each file is written atomically with the normal file mode (``safetensors.save_file`` alone leaves 0o600);
    without ``overwrite`` a file that another run wrote meanwhile is not replaced.
    """
    seed = check_seed(seed)
    config = config or PRESETS["tiny"]
    out_dir = Path(out_dir)
    paths = {role: out_dir / name for role, name in FILES.items()}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputExists(f"refusing to overwrite {', '.join(existing)} (pass --overwrite)")
    opening("random tiny model", out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    meta = {"format": "pt", "fe2e_deploy": "init-tiny", "seed": str(seed)}

    write_json(paths["config"], config.to_dict(), overwrite=overwrite)
    dit = random_state(dit_layout(config).official_shapes(), gen)
    atomic_write(paths["dit"], lambda p: save_file(dit, str(p), metadata=meta), overwrite)
    vae = random_state(vae_layout(config.vae).official_shapes(), gen)
    atomic_write(paths["vae"], lambda p: save_file(vae, str(p), metadata=meta), overwrite)
    embeds = torch.randn(PROMPT_TOKENS, config.connector.in_channels, generator=gen).numpy()
    masks = (np.arange(PROMPT_TOKENS) < PROMPT_VALID_TOKENS).astype(np.int64)

    def save_npz(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez(fh, embeds=embeds, masks=masks)

    atomic_write(paths["prompt"], save_npz, overwrite)
    lora = random_kohya_lora(config, gen)
    atomic_write(paths["lora"], lambda p: save_file(lora, str(p), metadata=meta), overwrite)
    return paths
