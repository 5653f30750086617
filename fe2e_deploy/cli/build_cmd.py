"""``fe2e-deploy build``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..build_aoti import PRECISIONS, build_aoti
from ..pipeline import parse_resolution
from .app import app, user_errors


@app.command("build")
def build(
    stripped: Path = typer.Argument(..., help="Stripped model folder (from `fe2e-deploy strip`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Package to write, e.g. engines/fe2e_1024x768.pt2 (+ .json)."),
    backend: str = typer.Option("aoti", help="aoti: torch.export + AOTInductor (the only PyTorch-native backend)."),
    precision: str = typer.Option("bf16", help=f"{', '.join(PRECISIONS)} (fp8 needs --scales)."),
    scales: Path = typer.Option(None, help="FP8 scales from `fe2e-deploy calibrate` (with --precision fp8)."),
    resolution: str = typer.Option("1024x768", help="Processing resolution WIDTHxHEIGHT (static; one per package)."),
    batch: int = typer.Option(1, help="Static batch size."),
    device: str = typer.Option("cpu", help="cpu or cuda: the package runs only on this kind of device (and GPU)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing package."),
) -> None:
    """Compile the stripped model's fused graph ahead of time into a .pt2 engine for `infer --engine`.

    FP8 linears use torch._scaled_mm on CUDA GPUs with compute capability >= 8.9, exact fake
    quantisation elsewhere. Compiling takes minutes at full size (about 45 s for the tiny model on 2 CPU cores).
    """
    with user_errors():
        if backend != "aoti":
            raise ValueError(f"backend {backend!r} not supported; use aoti (TensorRT: `fe2e-deploy build-trt`)")
        sidecar = build_aoti(stripped, out, parse_resolution(resolution), precision, scales, batch, device, overwrite)
    typer.echo(
        f"{precision} AOTInductor package for {sidecar['resolution']} ({sidecar['device']['name']}) written to {out}: "
        f"{sidecar['package_bytes'] / 2**20:.1f} MiB in {sidecar['build_seconds']} s"
    )
