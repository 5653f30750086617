"""``fe2e-deploy calibrate``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..artifacts.scales import DEFAULT_EXCLUDE
from ..resolution import MAX_PROCESSING_PIXELS
from . import options
from .app import app, fail, user_errors, writing
from .options import Device, MaxProcessingPixels, Overwrite, ProcessingRes, Progress, number


@app.command("calibrate")
def calibrate(
    stripped: Path = typer.Argument(..., help="Stripped model folder (from `fe2e-deploy strip`)."),
    out: Path = typer.Option(Path("calibration/fp8_scales.json"), "--out", "-o", help="Scales file to write (JSON)."),
    images: Path = typer.Option(
        None,
        help="Folder of calibration images, searched recursively (default: the 8 built-in synthetic scenes, "
        "the same as calibration/images/).",
    ),
    processing_res: ProcessingRes = None,
    max_processing_pixels: MaxProcessingPixels = MAX_PROCESSING_PIXELS,
    exclude: list[str] = typer.Option(
        None,
        help="Glob over Linear names kept out of FP8 (repeatable), replacing the defaults "
        f"({', '.join(DEFAULT_EXCLUDE)}).",
    ),
    max_images: int = typer.Option(None, **number(1), help="Use at most N images (sorted by path)."),
    device: Device = "auto",
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Record per-tensor FP8 (E4M3) scales of the DiT's linear inputs and weights (max calibration).

    Feed the file to `export --precision fp8 --scales FILE` for an FP8 Q/DQ graph (build-trt --precision fp8).
    Images that cannot be read are skipped and reported: the scales come from the others (listed in
    the file under "unreadable_images") and the exit code is 1.
    """
    with user_errors():  # options, output, stripped folder and images are checked before the model is loaded
        from ..artifacts.scales import write_scales  # noqa: PLC0415
        from ..artifacts.stripped import read_stripped_meta  # noqa: PLC0415
        from ..quantize.calibrate import calibrate_fp8  # noqa: PLC0415

        device = options.device(device)
        res = options.processing_res(processing_res, max_processing_pixels)
        options.output_file(out, overwrite)
        read_stripped_meta(stripped)
        document = calibrate_fp8(
            stripped,
            images=images,
            processing_res=res,
            exclude=tuple(exclude) if exclude else DEFAULT_EXCLUDE,
            max_images=max_images,
            progress=progress,
            device=device,
            max_processing_pixels=max_processing_pixels,
        )
        with writing(out):
            write_scales(document, out, overwrite)
    typer.echo(
        f"FP8 scales of {len(document.layers)} linear layer(s) from {document.num_images} image(s) "
        f"({', '.join(document.resolutions)}) written to {out}; kept out of FP8: "
        f"{', '.join(document.excluded) or 'none'}"
    )
    unreadable = document.unreadable_images
    for item in unreadable:
        typer.secho(f"skipped {item.reason}", err=True, fg=typer.colors.RED)
    if unreadable:
        raise fail(
            f"{len(unreadable)} image(s) could not be read (see above); scales from the other {document.num_images}",
            1,
        )
