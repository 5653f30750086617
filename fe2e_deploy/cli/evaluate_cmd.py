"""``fe2e-deploy evaluate`` and ``fe2e-deploy compare``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import finite_number
from ..errors import InvalidInput, MissingInput, NotAFolder
from ..evaluation.kinds import DATASET_KINDS
from ..resolution import MAX_PROCESSING_PIXELS
from . import options
from .app import app, fail, user_errors, writing
from .options import ENGINE_HELP, Device, MaxProcessingPixels, Overwrite, ProcessingRes, Progress, choice, number


@app.command("evaluate")
def evaluate(
    engine: Path = typer.Option(..., help=ENGINE_HELP),
    dataset: Path = typer.Option(..., help="Dataset folder, laid out as in docs/evaluation.md."),
    task: str = typer.Option(..., **choice("depth", "normals"), help="What to score: depth or normals."),
    alignment: str = typer.Option(
        "log",
        **choice("log", "depth", "disparity", "none"),
        help="Depth alignment to the GT: log (FE2E), depth or disparity (Marigold), none (metric).",
    ),
    dataset_kind: str = typer.Option(
        "generic",
        **choice(*DATASET_KINDS),
        help=f"Depth range, PNG depth scale and crops of: {', '.join(DATASET_KINDS)}.",
    ),
    depth_scale: float = typer.Option(
        None, **number(1e-9, 1e9), help="Divisor of 16-bit depth PNGs to metres (default 1000; kitti 256)."
    ),
    protocol: str = typer.Option(
        "fe2e",
        **choice("fe2e", "marigold", "infer"),
        help="How predictions are made and scored: fe2e (FE2E's official evaluation, resize for resize), "
        "marigold (Marigold's, depth only) or infer (what `infer` writes). See docs/evaluation.md.",
    ),
    gpus: int = typer.Option(
        1,
        **number(1, 1024),
        help="Average depth metrics as the official evaluation does on this many GPUs (the mean of per-GPU means "
        "over contiguous shards; FE2E's published runs use 8). Normals are pooled either way.",
    ),
    split_file: Path = typer.Option(
        None,
        help="Read the benchmark's own layout from this split list (Marigold's data_split list for depth; "
        "normals default to FE2E's lists, bundled).",
    ),
    processing_res: ProcessingRes = None,
    max_processing_pixels: MaxProcessingPixels = MAX_PROCESSING_PIXELS,
    device: Device = "auto",
    dtype: str = typer.Option(
        None, **choice("fp32", "bf16"), help="DiT precision of a model or stripped folder: fp32 or bf16."
    ),
    json_out: Path = typer.Option(None, "--json", help="Also write the report (per-image metrics too) as JSON."),
    overwrite: Overwrite = False,
    max_images: int = typer.Option(None, **number(1), help="Evaluate only the first N images (sorted by path)."),
    progress: Progress = True,
) -> None:
    """Score an engine's depth or normals against a dataset's ground truth.

    Depth: AbsRel, SqRel, RMSE, RMSE-log, delta1-3 per image after alignment, averaged over images.

    Normals: angular error in degrees (mean, median, RMSE, % under 5/7.5/11.25/22.5/30), all pixels pooled.

    --protocol fe2e (default) runs FE2E's official evaluation path, resize for resize and mask for mask.

    Samples whose image or ground truth cannot be read are skipped and reported; the metrics (and
    the JSON report, which lists them under "unreadable") cover the others, and the exit code is 1.
    """
    with user_errors():  # options, output, dataset and engine path are checked before the engine is loaded
        from ..engines import engine_kind, load_engine  # noqa: PLC0415
        from ..evaluation.datasets import open_dataset  # noqa: PLC0415
        from ..evaluation.metrics import check_alignment  # noqa: PLC0415
        from ..evaluation.protocols import check_protocol  # noqa: PLC0415
        from ..evaluation.run import evaluate_engine, metrics_table, write_report  # noqa: PLC0415

        settings = options.engine_options(device, dtype, processing_res, max_processing_pixels, progress=progress)
        if depth_scale is not None:
            finite_number(depth_scale, "--depth-scale", positive=True)
        if task == "depth":
            check_alignment(alignment)
        if task in ("depth", "normals"):
            check_protocol(protocol, task)
        if gpus < 1:
            raise InvalidInput(f"--gpus must be at least 1, got {gpus}")
        options.output_file(json_out, overwrite)
        data = open_dataset(dataset, task, dataset_kind, depth_scale, max_images, split_file)
        engine_kind(engine)
        with load_engine(engine, settings) as runner:
            report = evaluate_engine(runner, data, task, alignment, progress=progress, protocol=protocol, gpus=gpus)
        if json_out is not None:
            with writing(json_out):
                write_report(json_out, report, overwrite)
    title = f"{task} on {dataset} ({report['num_images']} images, protocol {protocol}"
    title += f", alignment {alignment})" if task == "depth" else ")"
    typer.echo(title)
    typer.echo(metrics_table(report))
    if report["skipped"]:
        typer.echo(f"skipped {len(report['skipped'])} image(s) without valid ground truth")
    if json_out is not None:
        typer.echo(f"report: {json_out}")
    _report_unreadable(report["unreadable"], report["num_images"])


def _report_unreadable(unreadable: list[dict], scored: int) -> None:
    """One line per skipped unreadable image, then exit code 1 (as ``infer`` does for images it cannot read)."""
    for item in unreadable:
        typer.secho(f"skipped {item['reason']}", err=True, fg=typer.colors.RED)  # the reason names the file
    if unreadable:
        raise fail(f"{len(unreadable)} image(s) could not be read (see above); the results cover the other {scored}", 1)


@app.command("compare")
def compare(
    images_dir: Path = typer.Argument(..., help="Folder of .jpg/.jpeg/.png images, searched recursively."),
    engine: list[Path] = typer.Option(..., help="Give twice: the reference engine A, then engine B. " + ENGINE_HELP),
    dtype: list[str] = typer.Option(
        None, help="DiT precision of model/stripped folders: once for both engines, or twice (A, B)."
    ),
    device: Device = "auto",
    processing_res: ProcessingRes = None,
    max_processing_pixels: MaxProcessingPixels = MAX_PROCESSING_PIXELS,
    json_out: Path = typer.Option(None, "--json", help="Also write the report (per-image values too) as JSON."),
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """How closely engine B reproduces engine A, on every image of IMAGES_DIR.

    Depth AbsRel after log-space alignment, depth relative L2, mean normal angle difference (degrees).
    Images that cannot be read are skipped and reported (exit code 1; the JSON lists them under "unreadable").
    """
    with user_errors():  # options, output, images and engine paths are checked before an engine is loaded
        from ..engines import engine_kind, load_engine  # noqa: PLC0415
        from ..evaluation.run import COMPARE_METRICS, compare_engines, format_table, write_report  # noqa: PLC0415
        from ..files.images import find_images  # noqa: PLC0415

        if len(engine) != 2:
            raise InvalidInput(f"give --engine exactly twice (A then B), got {len(engine)}")
        dtype = list(dtype or [None])
        if len(dtype) not in (1, 2):
            raise InvalidInput(f"give --dtype once or twice, got {len(dtype)}")
        settings = [
            options.engine_options(device, d, processing_res, max_processing_pixels, progress=progress)
            for d in (dtype * 2 if len(dtype) == 1 else dtype)
        ]
        options.output_file(json_out, overwrite)
        if images_dir.is_file():
            raise NotAFolder(f"{images_dir}: is a file; give the folder that holds the images")
        if not find_images(images_dir):
            raise MissingInput(f"{images_dir}: no .jpg/.jpeg/.png images found")
        for path in engine:
            engine_kind(path)
        with load_engine(engine[0], settings[0]) as a, load_engine(engine[1], settings[1]) as b:
            report = compare_engines(a, b, images_dir, progress=progress)
        if json_out is not None:
            with writing(json_out):
                write_report(json_out, report, overwrite)
    typer.echo(f"{b.name} ({engine[1]}) against {a.name} ({engine[0]}) on {report['num_images']} images")
    typer.echo("mean over images:")
    typer.echo(format_table(report["overall"], COMPARE_METRICS, 6))
    typer.echo("worst image:")
    typer.echo(format_table(report["worst"], COMPARE_METRICS, 6))
    if json_out is not None:
        typer.echo(f"report: {json_out}")
    _report_unreadable(report["unreadable"], report["num_images"])
