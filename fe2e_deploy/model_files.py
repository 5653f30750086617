"""Where a model's official files are: explicit paths, a model folder, or the embedded demo model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .config import ModelConfig, load_model_config
from .errors import InvalidInput, MissingInput
from .tiny import FILES

#: The embedded demo model: a small FE2E trained on the project's ray-cast scenes (package data; see its MODEL_CARD.md).
DEMO_MODEL_DIR = Path(__file__).parent / "demo_model"
#: The demo model's processing size (width, height): the resolution it was trained at.
DEMO_RESOLUTION = (128, 96)


@dataclass(frozen=True)
class ModelFiles:
    config: ModelConfig
    dit: Path
    vae: Path
    prompt: Path
    lora: Path | None = None
    processing_res: tuple[int, int] | None = None  # the size the model was trained for, when it has one

    @classmethod
    def from_dir(cls, folder: str | Path, lora: bool = True) -> ModelFiles:
        """A folder laid out as ``init-tiny`` writes it (model_config.json, dit/vae.safetensors, ...)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingInput(f"{folder}: model folder not found")
        paths = {role: folder / name for role, name in FILES.items()}
        missing = [str(p) for role, p in paths.items() if role != "lora" and not p.is_file()]
        if missing:
            raise MissingInput(f"{folder}: not a model folder, missing {', '.join(missing)}")
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
        """Explicit files (all of config, DiT, VAE and prompt embedding), or the embedded demo model if none given."""
        given = {"--model-config": model_config, "--dit": dit, "--vae": vae, "--prompt-embedding": prompt}
        if not any(given.values()) and lora is None:
            return demo_model_files()
        missing = [flag for flag, value in given.items() if not value]
        if missing:
            raise InvalidInput(
                f"model files incomplete: also pass {', '.join(missing)} (or none of them for the embedded demo model)"
            )
        return cls(load_model_config(model_config), Path(dit), Path(vae), Path(prompt), Path(lora) if lora else None)


def demo_model_files() -> ModelFiles:
    """The embedded default: the demo model shipped in the package, with its LoRA and its processing size."""
    return replace(ModelFiles.from_dir(DEMO_MODEL_DIR), processing_res=DEMO_RESOLUTION)
