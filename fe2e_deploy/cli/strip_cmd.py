"""``fe2e-deploy strip``."""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from ..model_files import ModelFiles
from ..strip import strip_model
from ..synthetic import SyntheticModel
from .app import app, user_errors

STRIP_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


@app.command("strip")
def strip(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the stripped model."),
    model_config: str = typer.Option(
        None, help="Model config: a preset (step1x-edit, tiny) or a model_config.json with official names."
    ),
    dit: Path = typer.Option(None, help="Official DiT checkpoint, ideally merged (merge-lora); connector included."),
    vae: Path = typer.Option(None, help="Official FLUX VAE checkpoint (.safetensors); copied into the output."),
    prompt_embedding: Path = typer.Option(None, help="Empty-prompt embedding (.npz with 'embeds' and 'masks')."),
    lora: Path = typer.Option(None, help="FE2E kohya LoRA to merge while stripping (skip it for merged weights)."),
    dtype: str = typer.Option("bf16", help="Dtype of the kept weights: bf16 (deployment) or fp32 (checks)."),
    synthetic_weights: str = typer.Option(
        None,
        "--synthetic-weights",
        help="Strip a model of seeded random weights instead of files: a preset (step1x-edit = 12.4 B, tiny) or a "
        "model_config.json. Writes a full-size stripped folder (17 GB in BF16) without a 25 GB checkpoint, for "
        "measuring export, build and engines at full size.",
    ),
    seed: int = typer.Option(0, help="With --synthetic-weights: the seed of the random weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a stripped model already in --out."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Fold FE2E's fixed conditioning (t = 1, empty prompt) into constants: the deployment model.

    The connector, time/vector/text embedders, every modulation linear and the final adaLN are
    evaluated once and stored as constants; the CFG duplicate is gone. Writes
    stripped_dit.safetensors, vae.safetensors and stripped.json into --out. With no model options,
    strips the embedded tiny demo (with its LoRA).
    """
    with user_errors():
        if dtype not in STRIP_DTYPES:
            raise ValueError(f"dtype {dtype!r} not supported; choose one of {', '.join(STRIP_DTYPES)}")
        if synthetic_weights is not None:
            if any(v is not None for v in (model_config, dit, vae, prompt_embedding, lora)):
                raise ValueError("--synthetic-weights replaces the model files: drop --model-config/--dit/--vae/...")
            synth = SyntheticModel.create(synthetic_weights, seed)
            sources = (synth.dit, synth.prompt(), synth.vae, out, synth.config, None)
        else:
            files = ModelFiles.resolve(model_config, dit, vae, prompt_embedding, lora)
            sources = (files.dit, files.prompt, files.vae, out, files.config, files.lora)
        report = strip_model(*sources, STRIP_DTYPES[dtype], overwrite, progress)
    typer.echo(
        f"stripped model written to {report.out_dir}: DiT parameters {report.params_before:,} -> "
        f"{report.params_after:,} ({report.folded_params:,} folded into constants)"
    )
