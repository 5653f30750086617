"""``fe2e-deploy merge-lora``."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options
from .app import app, user_errors
from .options import Overwrite, Progress, number


@app.command("merge-lora")
def merge_lora_command(
    dit: Path = typer.Option(..., help="Base DiT checkpoint in the official format (.safetensors or .index.json)."),
    lora: Path = typer.Option(..., help="FE2E's kohya LoRA (.safetensors) or a peft adapter folder (train-lora)."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Merged checkpoint to write (official names and dtypes; an FP8-stored base: BF16)."
    ),
    model_config: str = typer.Option(
        "step1x-edit", help="Model config: a preset (step1x-edit, tiny) or a model_config.json with official names."
    ),
    multiplier: float = typer.Option(
        1.0, **number(-1e3, 1e3), help="LoRA strength: W + multiplier * (alpha / rank) * up @ down."
    ),
    max_shard_size: str = typer.Option(
        None, help="Split the output into shards of at most this size (e.g. 5GB) with a .index.json."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be merged; write nothing."),
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Merge a LoRA into the DiT weights, one tensor at a time (memory stays far below the checkpoint size).

    Later stages (strip, infer --dit) read the merged file like the original checkpoint. A sharded
    output is written whole or not at all.
    """
    with user_errors():
        from ..config import load_model_config  # noqa: PLC0415
        from ..lora import check_multiplier  # noqa: PLC0415
        from ..merge import merge_lora, parse_size  # noqa: PLC0415

        check_multiplier(multiplier)  # before reading any file
        if not dry_run:
            options.output_file(out, overwrite)  # a folder, or a place nothing can be written, fails first
        config = load_model_config(model_config)
        report = merge_lora(
            dit,
            lora,
            out,
            config,
            multiplier=multiplier,
            max_shard_size=parse_size(max_shard_size) if max_shard_size else None,
            dry_run=dry_run,
            overwrite=overwrite,
            progress=progress,
        )
    for item in report.merged if dry_run else []:
        for source, rank, alpha in zip(item.sources, item.ranks, item.alphas, strict=True):
            typer.echo(f"{item.weight} {list(item.shape)} <- {source}: rank {rank}, alpha {alpha:g}")
    if dry_run:
        typer.echo(f"dry run: {len(report.merged)} weight(s) would be merged (x{multiplier:g}); nothing written")
    else:
        files = ", ".join(str(p) for p in report.files)
        typer.echo(f"merged {len(report.merged)} weight(s) (x{multiplier:g}) into {files}")
