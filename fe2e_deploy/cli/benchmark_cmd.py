"""``fe2e-deploy benchmark``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..benchmark import format_table, run_benchmark, write_plot, write_report
from ..infer import read_image
from ..model_files import ModelFiles
from ..outputs import find_images
from ..pipeline import parse_resolution
from ..scenes import synthetic_scene
from .app import app, user_errors


@app.command("benchmark")
def benchmark(
    engine: list[Path] = typer.Option(
        None, help="Engine to time, repeatable: a .plan, .pt2, .onnx/export folder, stripped folder or model folder."
    ),
    reference: Path = typer.Option(
        None,
        help="Model folder (official files) to time the official path on (BF16 DiT, CFG batch 2) and as "
        "the FP32 accuracy reference. Default: none (no speedup vs reference).",
    ),
    resolution: str = typer.Option("1024x768", help="Processing resolution WIDTHxHEIGHT."),
    image: Path = typer.Option(
        None, help="Image to run on (a file, or a folder's first image); default: a synthetic scene."
    ),
    runs: int = typer.Option(10, help="Timed runs per engine."),
    warmup: int = typer.Option(2, help="Untimed warm-up runs per engine (compilation, CUDA graph capture)."),
    device: str = typer.Option("cpu", help="cpu or cuda (CUDA events per stage on a GPU)."),
    dtype: str = typer.Option("bf16", help="DiT dtype for engines that take one (model folders): fp32 or bf16."),
    accuracy: bool = typer.Option(True, "--accuracy/--no-accuracy", help="Compare maps with the FP32 reference."),
    json_out: Path = typer.Option(None, "--json", help="Write the full report (JSON) here."),
    plot: Path = typer.Option(None, help="Write a PNG bar chart of the stage times here."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing --json/--plot files."),
) -> None:
    """Time engines per stage and end to end, next to the official reference path, in one run.

    Prints a table (median stage times, end-to-end median/p90/min, images/s, speedup over the
    reference and over the paper's 1.78 s, map error vs FP32) and writes JSON and a plot on request.
    """
    with user_errors():
        for out in (json_out, plot):
            if out is not None and out.exists() and not overwrite:
                raise FileExistsError(f"{out}: exists (pass --overwrite to replace it)")
        if not engine and reference is None:
            raise ValueError("nothing to benchmark: pass --engine and/or --reference")
        res = parse_resolution(resolution)
        if image is None:
            picture = synthetic_scene(*res)
        else:
            paths = find_images(image) if image.is_dir() else [image]
            if not paths:
                raise FileNotFoundError(f"{image}: no .jpg/.jpeg/.png images found")
            picture = read_image(paths[0])
        files = ModelFiles.from_dir(reference) if reference is not None else None
        report = run_benchmark(
            list(engine or []), picture, files, res, runs, warmup, device, dtype, accuracy, log=typer.echo
        )
        typer.echo(format_table(report))
        if json_out is not None:
            write_report(report, json_out)
            typer.echo(f"report written to {json_out}")
        if plot is not None:
            write_plot(report, plot)
            typer.echo(f"plot written to {plot}")
