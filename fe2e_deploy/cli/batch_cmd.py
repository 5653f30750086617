"""``fe2e-deploy batch``: ``infer`` as a Ray Data job over a cluster (the ``ray`` extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..resolution import MAX_PROCESSING_PIXELS, parse_resolution
from . import options
from .app import app, report_images, user_errors
from .options import (
    ENGINE_HELP,
    BatchSize,
    Dtype,
    MaxProcessingPixels,
    NpyDtype,
    OutputResOption,
    OutputsOption,
    Overwrite,
    PngCompression,
    ProcessingRes,
    Progress,
)


@app.command("batch")
def batch(
    images: str = typer.Argument(
        ..., help="Images: a local folder, or any pyarrow filesystem URI the cluster can read (s3://, gs://, hdfs://)."
    ),
    output_dir: Path = typer.Option(
        ..., "--output-dir", "-o", help="Output folder, the same layout as infer's (shared by all workers' nodes)."
    ),
    engine: Path = typer.Option(..., help=ENGINE_HELP + " Every worker opens it once: a path all nodes can read."),
    address: str = typer.Option(
        None, help="Ray cluster to run on: auto (the one this machine belongs to) or HOST:PORT; default: a local one."
    ),
    workers: int = typer.Option(1, help="Engine workers (Ray actors), each with its own copy of the engine."),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per worker (0: the workers run on CPUs)."),
    cpus_per_worker: float = typer.Option(
        None, help="CPUs per worker (default: 1 beside a GPU; else 3/4 of the cluster's CPUs shared by the workers)."
    ),
    batch_size: BatchSize = 1,
    dtype: Dtype = None,
    processing_res: ProcessingRes = None,
    max_processing_pixels: MaxProcessingPixels = MAX_PROCESSING_PIXELS,
    outputs: OutputsOption = "all",
    output_res: OutputResOption = "input",
    png_compression: PngCompression = 1,
    npy_dtype: NpyDtype = "float32",
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Predict every image under IMAGES on a Ray cluster and write infer's files to --output-dir.

    Ray tasks decode the images; a pool of --workers engine workers predicts and writes them
    (atomically). Resumable: images whose outputs all exist are skipped (--overwrite replaces
    them). A worker that dies is restarted and its images run again; unreadable images are reported
    and skipped (exit code 1 at the end). Needs: pip install 'fe2e-deploy[ray]'.
    """
    with user_errors():
        from ..cluster.batch import run_batch  # noqa: PLC0415
        from ..engines.options import EngineOptions  # noqa: PLC0415

        settings = EngineOptions(  # each worker opens the engine on its own device (cuda with GPUs, else cpu)
            dtype=dtype,
            processing_res=parse_resolution(processing_res) if processing_res else None,
            max_processing_pixels=max_processing_pixels,
            batch_size=batch_size,
        )
        report = run_batch(
            engine,
            images,
            output_dir,
            address=address,
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            options=settings,
            outputs=options.output_options(outputs, output_res, png_compression, npy_dtype),
            overwrite=overwrite,
            progress=progress,
        )
    report_images(report)
