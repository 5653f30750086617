"""``fe2e-deploy calibrate``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..artifacts.scales import write_scales
from ..processing import parse_resolution
from ..quantize.calibrate import DEFAULT_EXCLUDE, calibrate_fp8
from .app import app, user_errors


@app.command("calibrate")
def calibrate(
    stripped: Path = typer.Argument(..., help="Stripped model folder (from `fe2e-deploy strip`)."),
    out: Path = typer.Option(Path("calibration/fp8_scales.json"), "--out", "-o", help="Scales file to write (JSON)."),
    images: Path = typer.Option(
        None,
        help="Folder of calibration images, searched recursively (default: the 8 built-in synthetic scenes, "
        "the same as calibration/images/).",
    ),
    processing_res: str = typer.Option(None, help="Calibrate at WIDTHxHEIGHT instead of FE2E's resize rule."),
    exclude: list[str] = typer.Option(
        None,
        help="Glob over Linear names kept out of FP8 (repeatable), replacing the defaults "
        f"({', '.join(DEFAULT_EXCLUDE)}).",
    ),
    max_images: int = typer.Option(None, help="Use at most N images (sorted by path)."),
    device: str = typer.Option("cpu", help="Run the model on cpu or cuda (calibrating the full model needs a GPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing scales file."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Record per-tensor FP8 (E4M3) scales of the DiT's linear inputs and weights (max calibration).

    Feed the file to `export --precision fp8 --scales FILE` for an FP8 Q/DQ graph (build-trt --precision fp8).
    """
    with user_errors():
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out}: exists (pass --overwrite to replace it)")
        res = parse_resolution(processing_res) if processing_res else None
        patterns = tuple(exclude) if exclude else DEFAULT_EXCLUDE
        document = calibrate_fp8(stripped, images, res, patterns, max_images, progress, device)
        write_scales(document, out, overwrite)
    typer.echo(
        f"FP8 scales of {len(document['layers'])} linear layer(s) from {document['num_images']} image(s) "
        f"({', '.join(document['resolutions'])}) written to {out}; kept out of FP8: "
        f"{', '.join(document['excluded']) or 'none'}"
    )
