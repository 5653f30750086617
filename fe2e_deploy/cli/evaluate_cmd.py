"""``fe2e-deploy evaluate`` and ``fe2e-deploy compare``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..evaluation.kinds import DATASET_KINDS
from . import options
from .app import app, user_errors
from .options import ENGINE_HELP, Device, Overwrite, ProcessingRes, Progress


@app.command("evaluate")
def evaluate(
    engine: Path = typer.Option(..., help=ENGINE_HELP),
    dataset: Path = typer.Option(..., help="Dataset folder, laid out as in docs/evaluation.md."),
    task: str = typer.Option(..., help="What to score: depth or normals."),
    alignment: str = typer.Option(
        "log", help="Depth alignment to the GT: log (FE2E), depth or disparity (Marigold), none (metric)."
    ),
    dataset_kind: str = typer.Option(
        "generic", help=f"Depth range, PNG depth scale and crops of: {', '.join(DATASET_KINDS)}."
    ),
    depth_scale: float = typer.Option(None, help="Divisor of 16-bit depth PNGs to metres (default 1000; kitti 256)."),
    processing_res: ProcessingRes = None,
    device: Device = "auto",
    dtype: str = typer.Option(None, help="DiT precision of a model or stripped folder: fp32 or bf16."),
    json_out: Path = typer.Option(None, "--json", help="Also write the report (per-image metrics too) as JSON."),
    overwrite: Overwrite = False,
    max_images: int = typer.Option(None, help="Evaluate only the first N images (sorted by path)."),
    progress: Progress = True,
) -> None:
    """Score an engine's depth or normals against a dataset's ground truth.

    Depth: AbsRel, SqRel, RMSE, RMSE-log, delta1-3 per image after alignment, averaged over images.

    Normals: angular error in degrees (mean, median, RMSE, % under 5/7.5/11.25/22.5/30), all pixels pooled.
    """
    with user_errors():
        from ..engines import load_engine  # noqa: PLC0415
        from ..evaluation.datasets import open_dataset  # noqa: PLC0415
        from ..evaluation.metrics import check_alignment  # noqa: PLC0415
        from ..evaluation.run import check_writable, evaluate_engine, metrics_table, write_json  # noqa: PLC0415

        res = options.processing_res(processing_res)
        if task == "depth":
            check_alignment(alignment)
        if json_out is not None:
            check_writable(json_out, overwrite)
        data = open_dataset(dataset, task, dataset_kind, depth_scale, max_images)
        runner = load_engine(engine, device=options.device(device), dtype=dtype, processing_res=res)
        report = evaluate_engine(runner, data, task, alignment, progress=progress)
        if json_out is not None:
            write_json(json_out, report, overwrite)
    title = f"{task} on {dataset} ({report['num_images']} images"
    title += f", alignment {alignment})" if task == "depth" else ")"
    typer.echo(title)
    typer.echo(metrics_table(report))
    if report["skipped"]:
        typer.echo(f"skipped {len(report['skipped'])} image(s) without valid ground truth")
    if json_out is not None:
        typer.echo(f"report: {json_out}")


@app.command("compare")
def compare(
    images_dir: Path = typer.Argument(..., help="Folder of .jpg/.jpeg/.png images, searched recursively."),
    engine: list[Path] = typer.Option(..., help="Give twice: the reference engine A, then engine B."),
    dtype: list[str] = typer.Option(
        None, help="DiT precision of model/stripped folders: once for both engines, or twice (A, B)."
    ),
    device: Device = "auto",
    processing_res: ProcessingRes = None,
    json_out: Path = typer.Option(None, "--json", help="Also write the report (per-image values too) as JSON."),
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """How closely engine B reproduces engine A, on every image of IMAGES_DIR.

    Depth AbsRel after log-space alignment, depth relative L2, mean normal angle difference (degrees).
    """
    with user_errors():
        from ..engines import load_engine  # noqa: PLC0415
        from ..evaluation.run import (  # noqa: PLC0415
            COMPARE_METRICS,
            check_writable,
            compare_engines,
            format_table,
            write_json,  # noqa: PLC0415
        )
        from ..files.images import find_images  # noqa: PLC0415

        if len(engine) != 2:
            raise ValueError(f"give --engine exactly twice (A then B), got {len(engine)}")
        dtype = list(dtype or [None])
        if len(dtype) not in (1, 2):
            raise ValueError(f"give --dtype once or twice, got {len(dtype)}")
        res = options.processing_res(processing_res)
        if json_out is not None:
            check_writable(json_out, overwrite)
        if not find_images(images_dir):
            raise FileNotFoundError(f"{images_dir}: no .jpg/.jpeg/.png images found")
        dtypes = dtype * 2 if len(dtype) == 1 else dtype
        device = options.device(device)
        a, b = (load_engine(e, device=device, dtype=d, processing_res=res) for e, d in zip(engine, dtypes, strict=True))
        report = compare_engines(a, b, images_dir, progress=progress)
        if json_out is not None:
            write_json(json_out, report, overwrite)
    typer.echo(f"{b.name} ({engine[1]}) against {a.name} ({engine[0]}) on {report['num_images']} images")
    typer.echo("mean over images:")
    typer.echo(format_table(report["overall"], COMPARE_METRICS, 6))
    typer.echo("worst image:")
    typer.echo(format_table(report["worst"], COMPARE_METRICS, 6))
    if json_out is not None:
        typer.echo(f"report: {json_out}")
