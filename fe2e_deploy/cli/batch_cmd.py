"""``fe2e-deploy batch``: ``infer`` as a Ray Data job over a cluster (the ``ray`` extra)."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InvalidInput
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
    choice,
    number,
)


@app.command("batch")
def batch(
    images: str = typer.Argument(
        ..., help="Images: a local folder, or any pyarrow filesystem URI the cluster can read (s3://, gs://, hdfs://)."
    ),
    output_dir: str = typer.Option(
        ...,
        "--output-dir",
        "-o",
        help="Where the maps go, written by the workers: a folder all workers' nodes share, or a pyarrow "
        "filesystem URI (s3://bucket/prefix; S3-compatible servers: "
        "s3://bucket/prefix?endpoint_override=HOST:PORT&scheme=http). Each output appears complete or not at all.",
    ),
    engine: Path = typer.Option(
        None,
        help=ENGINE_HELP + " Every worker opens it once: a path all nodes can read. Default: the embedded demo "
        "model (at its training size, 128x96), as infer without model options.",
    ),
    address: str = typer.Option(
        None, help="Ray cluster to run on: auto (the one this machine belongs to) or HOST:PORT; default: a local one."
    ),
    workers: int = typer.Option(
        1, **number(1, 1024), help="Engine workers (Ray actors), each with its own copy of the engine."
    ),
    gpus_per_worker: float = typer.Option(
        0.0, **number(0.0, 64.0), help="GPUs per worker (0: the workers run on CPUs)."
    ),
    cpus_per_worker: float = typer.Option(
        None,
        **number(0.01, 1024.0),
        help="CPUs per worker (default: 1 beside a GPU; else 3/4 of the cluster's CPUs shared by the workers).",
    ),
    batch_size: BatchSize = 1,
    dtype: Dtype = None,
    processing_res: ProcessingRes = None,
    max_processing_pixels: MaxProcessingPixels = MAX_PROCESSING_PIXELS,
    outputs: OutputsOption = "all",
    output_res: OutputResOption = "input",
    png_compression: PngCompression = 1,
    npy_dtype: NpyDtype = "float32",
    output_format: str = typer.Option(
        "files",
        **choice("files", "parquet", "webdataset"),
        help="files: infer's layout, one file per map (--outputs, --npy-dtype). parquet: shard files of one row per "
        "image (key, source, height, width, depth float16 and normals as raw bytes). webdataset: tar shards with "
        "KEY.depth.npy, KEY.normals.npy, KEY.json (and KEY.depth.png, KEY.normals.png with --previews). Shards "
        "are listed in _manifests/ as they finish; a rerun skips the images listed there.",
    ),
    shard_size: int = typer.Option(
        None,
        **number(1, 1_000_000),
        help="Images per shard, >= 1 (parquet, webdataset only; default 64: ~400 MB at 1024x768). A shard is what "
        "a rerun resumes from and what a failed worker redoes.",
    ),
    normals_dtype: str = typer.Option(
        None,
        **choice("float16", "uint8"),
        help="Normals in shards: float16 (default), or uint8 holding (n + 1) / 2 * 255 as infer's normals PNG.",
    ),
    previews: bool = typer.Option(
        False, "--previews", help="Shards also hold 8-bit PNG previews of each image's depth (colour) and normals."
    ),
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Predict every image under IMAGES on a Ray cluster and write the maps to --output-dir.

    A pool of --workers engine workers predicts and writes them: infer's files, or shards
    (--output-format), each complete or not at all, in a folder or an object store. Resumable:
    finished images are skipped (--overwrite predicts them again; for shards it deletes the old ones
    first). A worker that dies is restarted and its images run again; unreadable images are reported
    and skipped (exit code 1 at the end); a write error stops the job (exit code 2). Videos in IMAGES are
    refused before any work (run them through infer). Without
    --address a local Ray starts on 127.0.0.1 and ends with the command, even if it is killed.
    Needs: pip install 'fe2e-deploy\\[ray]'.
    """
    with user_errors():
        from ..cluster.batch import run_batch  # noqa: PLC0415
        from ..cluster.shards import DEFAULT_SHARD_SIZE, OUTPUT_FORMATS, ShardOptions  # noqa: PLC0415
        from ..engines.options import EngineOptions  # noqa: PLC0415

        if output_format not in OUTPUT_FORMATS:
            raise InvalidInput(f"--output-format {output_format!r}: choose one of {', '.join(OUTPUT_FORMATS)}")
        shards = None
        if output_format == "files":  # the shards' options are refused, not dropped
            given = {"--shard-size": shard_size, "--normals-dtype": normals_dtype, "--previews": previews or None}
            named = [flag for flag, value in given.items() if value is not None]
            if named:
                raise InvalidInput(f"{', '.join(named)}: only with --output-format parquet or webdataset (shards)")
        else:
            if outputs != "all":
                raise InvalidInput(
                    "--outputs: only with --output-format files (shards hold depth and normals; see --previews)"
                )
            shards = ShardOptions(
                output_format,
                shard_size=DEFAULT_SHARD_SIZE if shard_size is None else shard_size,
                normals_dtype=normals_dtype or "float16",
                previews=previews,
                png_compression=png_compression,
            )

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
            shards=shards,
            overwrite=overwrite,
            progress=progress,
        )
    for note in report.notes:
        typer.echo(f"note: {note}", err=True)
    report_images(report)
