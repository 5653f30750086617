"""``fe2e-deploy strip``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InvalidInput
from . import options
from .app import app, user_errors
from .options import (
    SEED_RANGE,
    DitOption,
    LoraOption,
    ModelConfigOption,
    Overwrite,
    Progress,
    PromptOption,
    VaeOption,
    choice,
)


@app.command("strip")
def strip(
    out: Path = typer.Option(..., "--out", "-o", help="Output folder for the stripped model."),
    model_config: ModelConfigOption = None,
    dit: DitOption = None,
    vae: VaeOption = None,
    prompt_embedding: PromptOption = None,
    lora: LoraOption = None,
    dtype: str = typer.Option(
        "bf16", **choice("bf16", "fp32"), help="Dtype of the kept weights: bf16 (deployment) or fp32 (checks)."
    ),
    synthetic_weights: str = typer.Option(
        None,
        "--synthetic-weights",
        help="Strip a model of seeded random weights instead of files: a preset (step1x-edit = 12.4 B, tiny) or a "
        "model_config.json. Writes a full-size stripped folder (17 GB in BF16) without a 25 GB checkpoint, for "
        "measuring export, build and engines at full size.",
    ),
    seed: int = typer.Option(0, **SEED_RANGE, help="With --synthetic-weights: the seed of the random weights."),
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Fold FE2E's fixed conditioning (t = 1, empty prompt) into constants: the deployment model.

    The connector, time/vector/text embedders, every modulation linear and the final adaLN are
    evaluated once and stored as constants; the CFG duplicate is gone. Writes
    stripped_dit.safetensors, vae.safetensors and stripped.json into --out (the folder appears
    complete or not at all). With no model options, strips the embedded demo model (with its LoRA).
    """
    with user_errors():  # the output folder is checked before any weight is read
        from ..model_files import ModelFiles  # noqa: PLC0415
        from ..precision import DTYPE_PRECISIONS, parse_precision, torch_dtype  # noqa: PLC0415
        from ..strip import strip_model  # noqa: PLC0415
        from ..synthetic import SyntheticModel  # noqa: PLC0415

        options.output_dir(out)

        weights_dtype = torch_dtype(parse_precision(dtype, DTYPE_PRECISIONS))
        if synthetic_weights is not None:
            if any(v is not None for v in (model_config, dit, vae, prompt_embedding, lora)):
                raise InvalidInput("--synthetic-weights replaces the model files: drop --model-config/--dit/--vae/...")
            synth = SyntheticModel.create(synthetic_weights, seed)
            sources, config, lora_path = (synth.dit, synth.prompt(), synth.vae), synth.config, None
        else:
            files = ModelFiles.resolve(model_config, dit, vae, prompt_embedding, lora)
            sources, config, lora_path = (files.dit, files.prompt, files.vae), files.config, files.lora
        report = strip_model(
            *sources, out, config, lora=lora_path, dtype=weights_dtype, overwrite=overwrite, progress=progress
        )
    typer.echo(
        f"stripped model written to {report.out_dir}: DiT parameters {report.params_before:,} -> "
        f"{report.params_after:,} ({report.folded_params:,} folded into constants)"
    )
