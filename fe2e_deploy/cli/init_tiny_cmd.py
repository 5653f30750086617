"""``fe2e-deploy init-tiny``."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, user_errors
from .options import SEED_RANGE, Overwrite


@app.command("init-tiny")
def init_tiny(
    out_dir: Path = typer.Argument(..., help="Folder to write the tiny model into (created if missing)."),
    seed: int = typer.Option(
        0, **SEED_RANGE, help="Seed of the random weights (0 to 2**63-1); one seed writes identical files."
    ),
    overwrite: Overwrite = False,
) -> None:
    """Write a tiny FE2E with seeded random weights in the official file formats.

    Files: model_config.json, dit.safetensors (connector included), vae.safetensors,
    empty_prompt.npz (embeds, masks) and lora.safetensors (kohya format).
    """
    with user_errors():
        from ..tiny import write_tiny_model  # noqa: PLC0415

        paths = write_tiny_model(out_dir, seed=seed, overwrite=overwrite)
    for role, path in paths.items():
        typer.echo(f"{role:>7}: {path}")
