"""``fe2e-deploy train-lora``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..resolution import parse_resolution
from . import options
from .app import app, user_errors
from .options import (
    SEED_RANGE,
    Device,
    DitOption,
    ModelConfigOption,
    Overwrite,
    PromptOption,
    VaeOption,
    choice,
    number,
)


@app.command("train-lora")
def train_lora_command(
    data_dir: Path = typer.Argument(
        ..., help="Training folder: rgb/, depth/, normals/ and optional mask/ (docs/train_lora.md)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: peft adapter, checkpoints/, loss.jsonl."),
    model_config: ModelConfigOption = None,
    dit: DitOption = None,
    vae: VaeOption = None,
    prompt_embedding: PromptOption = None,
    rank: int = typer.Option(64, **number(1, 4096), help="LoRA rank (FE2E: 64)."),
    alpha: float = typer.Option(
        32.0, **number(1e-6, 1e6), help="LoRA alpha (FE2E: 32); the update is scaled by alpha / rank."
    ),
    target_modules: list[str] = typer.Option(
        None,
        help="Regex for the end of diffusers module names (e.g. 'attn.to_(q|k|v)'), repeatable "
        "(default: FE2E's, every block Linear).",
    ),
    lr: float = typer.Option(1e-4, **number(1e-12, 10.0), help="AdamW learning rate (FE2E: 1e-4)."),
    steps: int = typer.Option(
        1000, **number(1, 1_000_000_000), help="Optimizer steps in total (a resumed run continues to this number)."
    ),
    batch_size: int = typer.Option(1, **number(1, 4096), help="Images per micro-batch."),
    grad_accum: int = typer.Option(1, **number(1, 4096), help="Micro-batches per optimizer step."),
    mixed_precision: str = typer.Option(
        "no", **choice("no", "bf16"), help="no (FP32) or bf16 (BF16 base weights and autocast; GPU)."
    ),
    gradient_checkpointing: bool = typer.Option(
        False, "--gradient-checkpointing", help="Recompute block activations in the backward pass (less memory)."
    ),
    seed: int = typer.Option(0, **SEED_RANGE, help="Seed of the data order and the LoRA initialisation."),
    save_every: int = typer.Option(
        0, **number(0, 1_000_000_000), help="Write a resumable checkpoint every N steps (0: never)."
    ),
    resume: str = typer.Option(None, help="'latest' (in --out/checkpoints) or a checkpoint folder to continue from."),
    resolution: str = typer.Option("1024x768", help="Training resolution WIDTHxHEIGHT (multiples of 16)."),
    kohya: bool = typer.Option(False, "--kohya", help="Also write lora.safetensors in FE2E's kohya format."),
    cache_latents: bool = typer.Option(
        False, "--cache-latents", help="Encode each sample with the VAE once and keep it in memory (small datasets)."
    ),
    depth_scale: float = typer.Option(
        1000.0, **number(1e-9, 1e9), help="16-bit depth PNGs: metres = value / depth-scale (KITTI: 256)."
    ),
    device: Device = "auto",
    overwrite: Overwrite = False,
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar with the loss."),
) -> None:
    """Fine-tune a LoRA on the DiT with FE2E's consistent-velocity objective (z0 = 0, t = 1).

    The left half of the velocity learns -(depth latent), the right half +(normal latent); base
    weights stay frozen. The adapter folder loads into merge-lora. With no model options, trains on
    the embedded demo model.
    """
    with user_errors():
        from ..model_files import ModelFiles  # noqa: PLC0415
        from ..train.loop import TrainOptions, train_lora  # noqa: PLC0415

        opts = TrainOptions(
            rank=rank,
            alpha=alpha,
            target_modules=list(target_modules) if target_modules else None,
            lr=lr,
            steps=steps,
            batch_size=batch_size,
            grad_accum=grad_accum,
            mixed_precision=mixed_precision,
            gradient_checkpointing=gradient_checkpointing,
            seed=seed,
            save_every=save_every,
            resolution=parse_resolution(resolution),
            kohya=kohya,
            device=options.device(device),
            cache_latents=cache_latents,
            depth_scale=depth_scale,
        )
        opts.validate()  # before any model file is read (or the demo model written)
        files = ModelFiles.resolve(model_config, dit, vae, prompt_embedding, None)
        report = train_lora(files, data_dir, out, opts, resume, overwrite, progress)
    losses = report.losses
    if losses:
        typer.echo(f"steps {report.start_step + 1}-{report.steps}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    typer.echo(f"adapter written to {out}")
