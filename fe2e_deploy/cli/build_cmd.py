"""``fe2e-deploy build``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..build_aoti import FE2E_RESOLUTIONS, PRECISIONS, build_aoti
from ..pipeline import parse_resolution
from .app import app, user_errors

DEFAULT_RESOLUTIONS = ", ".join(f"{w}x{h}" for w, h in FE2E_RESOLUTIONS)


@app.command("build")
def build(
    stripped: Path = typer.Argument(..., help="Stripped model folder (from `fe2e-deploy strip`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Package to write, e.g. engines/fe2e.pt2 (+ fe2e.pt2.json)."),
    backend: str = typer.Option("aoti", help="aoti: torch.export + AOTInductor (TensorRT: `fe2e-deploy build-trt`)."),
    precision: str = typer.Option(
        "bf16", help=f"{', '.join(PRECISIONS)}; fp8 needs --scales and a CUDA GPU with compute capability >= 8.9."
    ),
    scales: Path = typer.Option(None, help="FP8 scales from `fe2e-deploy calibrate` (with --precision fp8)."),
    resolution: list[str] = typer.Option(
        None, help=f"WIDTHxHEIGHT to compile for, repeatable; all in one package (default: {DEFAULT_RESOLUTIONS})."
    ),
    batch: int = typer.Option(1, help="Static batch size."),
    device: str = typer.Option("cpu", help="cpu or cuda: the package runs only on this kind of device (and GPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing package."),
) -> None:
    """Compile the stripped model's fused graph ahead of time into one .pt2 package for `infer --engine`.

    One static-shape model per resolution, sharing one copy of the weights; the package and its
    .json sidecar are tied to this device kind (CPU ISA or GPU) and torch version. Compiling the
    tiny model takes about 40 s per resolution on 2 CPU cores; full size takes minutes.
    """
    with user_errors():
        if backend != "aoti":
            raise ValueError(f"backend {backend!r} not supported; use aoti (TensorRT: `fe2e-deploy build-trt`)")
        resolutions = [parse_resolution(r) for r in resolution] if resolution else list(FE2E_RESOLUTIONS)
        sidecar = build_aoti(stripped, out, resolutions, precision, scales, batch, device, overwrite)
    typer.echo(
        f"{precision} AOTInductor package for {', '.join(sidecar['resolutions'])} ({sidecar['device']['name']}) "
        f"written to {out}: {sidecar['package_bytes'] / 2**20:.1f} MiB in {sidecar['build_seconds']} s"
    )
