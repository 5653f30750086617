"""``fe2e-deploy quickstart``."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options
from .app import app, fail, user_errors
from .options import SEED_RANGE, Overwrite, ProcessingRes, Progress


@app.command("quickstart")
def quickstart(
    images_dir: Path = typer.Argument(..., help="Folder of .jpg/.jpeg/.png images, searched recursively."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Output folder (as `infer` writes it)."),
    work_dir: Path = typer.Option(
        Path("build/quickstart"),
        help="Folder for the intermediate artifacts (model, stripped, export), in a sub-folder per model "
        "(demo, or tiny-seedN).",
    ),
    seed: int | None = typer.Option(
        None,
        **SEED_RANGE,
        help="Use the tiny config with these seeded random weights (init-tiny) instead of the demo model.",
    ),
    processing_res: ProcessingRes = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Run the whole chain on the embedded demo model: merge-lora, strip, export (+ check), engine, infer.

    The demo model is a small FE2E trained on synthetic scenes; it runs at its training size (128x96)
    unless --processing-res. With --seed, the chain starts with init-tiny (random weights) instead.

    Prints each stage as the equivalent command line with its time. Existing stage outputs in
    --work-dir are reused unless --overwrite (which rebuilds every stage and replaces outputs).
    """
    with user_errors():  # both folders are checked before the first stage runs
        from ..quickstart import run_quickstart  # noqa: PLC0415

        options.output_dir(output_dir)
        options.output_dir(work_dir)

        report = run_quickstart(
            images_dir,
            output_dir,
            work_dir=work_dir,
            seed=seed,
            processing_res=options.processing_res(processing_res),
            overwrite=overwrite,
            progress=progress,
            log=typer.echo,
        )
    for command, seconds in report.stages:
        typer.echo(f"{seconds:7.1f} s  {command.split(' -')[0]}")
    infer = report.infer
    typer.echo(f"engine: {report.engine}; {infer.summary()}")
    if infer.failed:
        raise fail(f"{len(infer.failed)} image(s) failed (see above)", code=1)
