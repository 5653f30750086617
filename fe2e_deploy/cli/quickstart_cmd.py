"""``fe2e-deploy quickstart``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..processing import parse_resolution
from ..quickstart import run_quickstart
from .app import app, fail, user_errors


@app.command("quickstart")
def quickstart(
    images_dir: Path = typer.Argument(..., help="Folder of .jpg/.jpeg/.png images, searched recursively."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Output folder (as `infer` writes it)."),
    work_dir: Path = typer.Option(
        Path("build/quickstart"), help="Folder for the intermediate artifacts (model, stripped, export)."
    ),
    seed: int = typer.Option(0, help="Seed of the tiny model's random weights."),
    processing_res: str = typer.Option(
        None, help="Process (and export) at WIDTHxHEIGHT instead of FE2E's resize rule (multiples of 16)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild every stage and replace existing outputs."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Run the whole chain on the embedded tiny model: init-tiny, merge-lora, strip, export (+ check), engine, infer.

    Prints each stage as the equivalent command line with its time. Existing stage outputs in
    --work-dir are reused unless --overwrite.
    """
    with user_errors():
        res = parse_resolution(processing_res) if processing_res else None
        report = run_quickstart(images_dir, output_dir, work_dir, seed, res, overwrite, progress, log=typer.echo)
    for command, seconds in report.stages:
        typer.echo(f"{seconds:7.1f} s  {command.split(' -')[0]}")
    infer = report.infer
    typer.echo(f"engine: {report.engine}; {infer.summary()}")
    if infer.failed:
        raise fail(f"{len(infer.failed)} image(s) could not be read", code=1)
