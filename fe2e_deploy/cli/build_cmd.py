"""``fe2e-deploy build``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..precision import PRECISIONS
from ..resolution import parse_resolution
from . import options
from .app import app, user_errors
from .options import Device, Overwrite


@app.command("build")
def build(
    stripped: Path = typer.Argument(..., help="Stripped model folder (from `fe2e-deploy strip`); the engine reads it."),
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Engine folder to write (one fe2e_WxH.pt2 per resolution + aoti_engine.json), e.g. engines/aoti; "
        "or one package FILE.pt2 (+ FILE.pt2.json) for one resolution.",
    ),
    backend: str = typer.Option("aoti", help="aoti: torch.export + AOTInductor (the only PyTorch-native backend)."),
    precision: str = typer.Option("bf16", help=f"{', '.join(PRECISIONS)} (fp8 needs --scales)."),
    scales: Path = typer.Option(None, help="FP8 scales from `fe2e-deploy calibrate` (with --precision fp8)."),
    resolution: list[str] = typer.Option(
        None,
        help="Processing resolution WIDTHxHEIGHT, repeatable (static, one package each). Default: FE2E's three "
        "(1024x768, 1216x352, 864x576) for a folder, 1024x768 for a .pt2 (which holds exactly one).",
    ),
    batch: int = typer.Option(1, help="Static batch size: images of one resolution run this many at a time."),
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Compile the stripped model's fused graph ahead of time into AOTInductor packages for `infer --engine`.

    The packages hold no weights: the engine loads them from the stripped folder (which must stay in
    place, or be passed to the engine). They run only on the device kind (and GPU model) they were
    built for. FP8 linears use torch._scaled_mm on CUDA GPUs with compute capability >= 8.9, exact
    fake quantisation elsewhere. Compiling takes minutes per resolution at full size (about 25 s for
    the tiny model on 2 CPU cores).
    """
    with user_errors():  # options, output, stripped folder and scales are checked before anything is loaded
        from ..artifacts.scales import load_scales  # noqa: PLC0415
        from ..artifacts.stripped import read_stripped_meta  # noqa: PLC0415
        from ..compile.aoti_build import build_aoti  # noqa: PLC0415

        device = options.device(device)
        if backend != "aoti":
            raise ValueError(f"backend {backend!r} not supported; use aoti (TensorRT: `fe2e-deploy build-trt`)")
        sizes = [parse_resolution(r) for r in resolution or []]
        if out.suffix == ".pt2":
            options.output_file(out, overwrite)
        else:
            options.output_dir(out)
        read_stripped_meta(stripped)
        if scales is not None:
            load_scales(scales)
        description = build_aoti(
            stripped,
            out,
            resolution=sizes or None,
            precision=precision,
            scales=scales,
            batch=batch,
            device=device,
            overwrite=overwrite,
        )
    built = description.get("resolutions") or [description["resolution"]]
    size = description["package_bytes"]
    total = sum(size.values()) if isinstance(size, dict) else size
    typer.echo(
        f"{precision} AOTInductor engine for {', '.join(built)} (batch {batch}, {description['device']['name']}) "
        f"written to {out}: {total / 2**20:.1f} MiB of code, weights read from {description['stripped']['path']}"
    )
