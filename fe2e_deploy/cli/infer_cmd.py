"""``fe2e-deploy infer``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..resolution import MAX_PROCESSING_PIXELS
from . import options
from .app import app, fail, user_errors
from .options import (
    ENGINE_HELP,
    Device,
    DitOption,
    Dtype,
    LoraOption,
    MaxProcessingPixels,
    ModelConfigOption,
    Overwrite,
    ProcessingRes,
    Progress,
    PromptOption,
    VaeOption,
)


@app.command("infer")
def infer(
    images_dir: Path = typer.Argument(..., help="Folder of .jpg/.jpeg/.png images, searched recursively."),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Output folder (sub-folders mirror the input)."),
    engine: Path = typer.Option(None, help=ENGINE_HELP + " Exclusive with the model file options."),
    model_config: ModelConfigOption = None,
    dit: DitOption = None,
    vae: VaeOption = None,
    prompt_embedding: PromptOption = None,
    lora: LoraOption = None,
    dtype: Dtype = None,
    device: Device = "auto",
    processing_res: ProcessingRes = None,
    max_processing_pixels: MaxProcessingPixels = MAX_PROCESSING_PIXELS,
    cfg_batch: bool = typer.Option(
        False, "--cfg-batch", help="Run the official batch of 2 (cond + uncond, both empty prompts) instead of 1."
    ),
    batch_size: int = typer.Option(1, help="Images per engine call (engines run them as one batch where they can)."),
    outputs: str = typer.Option(
        "all",
        help="What to write, comma-separated: depth_npy, depth_png16, depth_colored, normals_npy, normals_png "
        "(default all; skipping the ones you do not need saves most of the host time).",
    ),
    output_res: str = typer.Option(
        "input", help="Resolution of the maps: input (each image's size) or processing (the size the model ran at)."
    ),
    png_compression: int = typer.Option(
        1, help="zlib level 0-9 of the PNGs: smaller files or faster writing, the same pixels (old default: 6)."
    ),
    npy_dtype: str = typer.Option("float32", help="Dtype of the .npy maps: float32 (exact) or float16 (half size)."),
    writers: int = typer.Option(
        None, help="Threads encoding and writing outputs beside the engine (default: cores - 1, at most 4)."
    ),
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Predict depth and surface normals for every image in IMAGES_DIR.

    With no model options, runs the embedded demo model (trained on synthetic scenes) at its training size, 128x96.
    Writes depth_npy/, depth_png16/ (16-bit), depth_colored/, normals_npy/ and normals_png/ at
    each input's resolution (--outputs, --output-res choose). Images are decoded and outputs
    written by threads beside the engine. Images that cannot be read or processed are reported and
    skipped (exit code 1 at the end).
    """
    with user_errors():
        from ..engines import load_engine  # noqa: PLC0415  (heavy imports only when the command runs)
        from ..engines.eager import EagerEngine  # noqa: PLC0415
        from ..files.outputs import OUTPUT_KINDS, OutputOptions  # noqa: PLC0415
        from ..infer import check_infer_paths, run_infer  # noqa: PLC0415
        from ..model_files import ModelFiles  # noqa: PLC0415

        res = options.processing_res(processing_res, max_processing_pixels)  # before anything is loaded
        kinds = tuple(OUTPUT_KINDS) if outputs == "all" else tuple(k.strip() for k in outputs.split(",") if k.strip())
        written = OutputOptions(kinds, output_res, png_compression, npy_dtype)
        device = options.device(device)
        images = check_infer_paths(images_dir, output_dir)  # before loading a model: a bad folder fails at once
        if engine is not None:
            if any(v is not None for v in (model_config, dit, vae, prompt_embedding, lora)):
                raise ValueError(
                    "--engine cannot be combined with --model-config/--dit/--vae/--prompt-embedding/--lora"
                )
            runner = load_engine(engine, device=device, dtype=dtype, processing_res=res, progress=progress)
        else:
            files = ModelFiles.resolve(model_config, dit, vae, prompt_embedding, lora)
            res = res or files.processing_res  # the demo model runs at the size it was trained at
            runner = EagerEngine.from_model_files(files, dtype, device, res, cfg_batch, progress=progress)
        runner.max_processing_pixels = max_processing_pixels
        report = run_infer(
            runner,
            images_dir,
            output_dir,
            overwrite=overwrite,
            progress=progress,
            batch_size=batch_size,
            outputs=written,
            writers=writers,
            images=images,
        )
    for path, reason in report.skipped:
        typer.echo(f"skipped {path}: {reason}")
    for path, reason in report.failed:
        typer.secho(f"failed {path}: {reason}", err=True, fg=typer.colors.RED)
    typer.echo(report.summary())
    if report.failed:
        raise fail(f"{len(report.failed)} image(s) failed (see above)", code=1)
