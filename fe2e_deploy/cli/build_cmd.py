"""``fe2e-deploy build``: an AOTInductor engine folder."""

from __future__ import annotations

from pathlib import Path

import typer

from ..precision import PRECISIONS
from ..resolution import parse_resolution
from . import options
from .app import app, user_errors
from .options import Device, Overwrite, choice, number


@app.command("build")
def build(
    stripped: Path = typer.Argument(..., help="Stripped model folder (from `fe2e-deploy strip`); the engine reads it."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Engine folder to write: one fe2e_WxH.pt2 per resolution and aoti_engine.json, e.g. engines/aoti.",
    ),
    precision: str = typer.Option("bf16", **choice(*PRECISIONS), help=f"{', '.join(PRECISIONS)} (fp8 needs --scales)."),
    scales: Path = typer.Option(None, help="FP8 scales from `fe2e-deploy calibrate` (with --precision fp8)."),
    resolution: list[str] = typer.Option(
        None,
        help="Processing resolution WIDTHxHEIGHT, repeatable (static, one package each). Default: FE2E's three "
        "(1024x768, 1216x352, 864x576).",
    ),
    batch: int = typer.Option(
        1, **number(1, 4096), help="Static batch size: images of one resolution run this many at a time."
    ),
    fp8_gemm: str = typer.Option(
        "auto",
        **choice("auto", "scaled_mm", "dequantized"),
        help="FP8 only: auto (torch._scaled_mm FP8 GEMMs on CUDA GPUs with compute capability >= 8.9, the "
        "dequantised product elsewhere), scaled_mm (the FP8 GEMM calls on any device, the CPU too) or dequantized.",
    ),
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Compile the stripped model's fused graph ahead of time (torch.export + AOTInductor) for `infer --engine`.

    The packages hold no weights: the engine loads them from the stripped folder (which must stay in
    place, or be passed to the engine). They run only on the device kind (and GPU model) and torch
    version they were built with. FP8 linears use torch._scaled_mm on CUDA GPUs with compute
    capability >= 8.9, exact fake quantisation elsewhere. Compiling takes minutes per resolution at
    full size (about 25 s for the tiny model on 2 CPU cores). TensorRT plans: `fe2e-deploy build-trt`.
    """
    with user_errors():  # the library checks the options, output, stripped folder and scales before loading
        from ..compile.aoti_build import build_aoti  # noqa: PLC0415
        from ..config import FE2E_RESOLUTIONS  # noqa: PLC0415

        device = options.device(device)
        options.output_dir(out)
        description = build_aoti(
            stripped,
            out,
            resolutions=[parse_resolution(r) for r in resolution] if resolution else FE2E_RESOLUTIONS,
            precision=precision,
            scales=scales,
            batch=batch,
            device=device,
            fp8_gemm=fp8_gemm,
            overwrite=overwrite,
        )
    total = sum(description.package_bytes.values())
    typer.echo(
        f"{description.precision} AOTInductor engine for {', '.join(description.packages)} (batch {batch}, "
        f"{description.device.name}) written to {out}: {total / 2**20:.1f} MiB of code, weights read from "
        f"{description.stripped.path}"
    )
