"""Where a model's official files are: explicit paths, a model folder, or the embedded tiny demo."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig, load_model_config
from .tiny import FILES, write_tiny_model

DEMO_SEED = 0
#: The demo model's processing size (width, height): the resolution it was trained at.
DEMO_RESOLUTION = (128, 96)


@dataclass(frozen=True)
class ModelFiles:
    config: ModelConfig
    dit: Path
    vae: Path
    prompt: Path
    lora: Path | None = None

    @classmethod
    def from_dir(cls, folder: str | Path, lora: bool = True) -> ModelFiles:
        """A folder laid out as ``init-tiny`` writes it (model_config.json, dit/vae.safetensors, ...)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: model folder not found")
        paths = {role: folder / name for role, name in FILES.items()}
        missing = [str(p) for role, p in paths.items() if role != "lora" and not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{folder}: not a model folder, missing {', '.join(missing)}")
        lora_path = paths["lora"] if lora and paths["lora"].is_file() else None
        return cls(load_model_config(paths["config"]), paths["dit"], paths["vae"], paths["prompt"], lora_path)

    @classmethod
    def resolve(
        cls,
        model_config: str | None,
        dit: Path | None,
        vae: Path | None,
        prompt: Path | None,
        lora: Path | None,
    ) -> ModelFiles:
        """Explicit files (all of config, DiT, VAE and prompt embedding), or the tiny demo if none is given."""
        given = {"--model-config": model_config, "--dit": dit, "--vae": vae, "--prompt-embedding": prompt}
        if not any(given.values()) and lora is None:
            return demo_model_files()
        missing = [flag for flag, value in given.items() if not value]
        if missing:
            raise ValueError(
                f"model files incomplete: also pass {', '.join(missing)} (or none of them for the tiny demo)"
            )
        return cls(load_model_config(model_config), Path(dit), Path(vae), Path(prompt), Path(lora) if lora else None)


def demo_model_files(seed: int = DEMO_SEED) -> ModelFiles:
    """The embedded default: the ``tiny`` config with seeded random weights (and its LoRA)."""
    folder = Path(tempfile.gettempdir()) / f"fe2e-deploy-tiny-seed{seed}"
    if not (folder / FILES["lora"]).is_file():
        write_tiny_model(folder, seed=seed, overwrite=True)
    return ModelFiles.from_dir(folder)
