"""``fe2e-deploy build-trt``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..artifacts.tensorrt import TRT_PRECISIONS
from . import options
from .app import app, fail, user_errors
from .options import Overwrite, choice, number


@app.command("build-trt")
def build_trt(
    onnx_graph: Path = typer.Argument(..., help="A fused graph of an export folder, e.g. export/fe2e_1024x768.onnx."),
    out: Path = typer.Option(..., "--out", "-o", help="Plan file to write, e.g. engines/fe2e.plan (+ .json sidecar)."),
    precision: str = typer.Option(
        "bf16",
        **choice(*TRT_PRECISIONS),
        help=f"{' or '.join(TRT_PRECISIONS)}; must match the graph (strongly typed: export --dtype bf16 / fp8).",
    ),
    opt_level: int = typer.Option(
        3, **number(0, 5), help="TensorRT builder optimization level, 0-5 (higher: slower build)."
    ),
    timing_cache: Path = typer.Option(None, help="Timing cache file: read if present, written after the build."),
    weight_streaming: bool = typer.Option(
        False, "--weight-streaming", help="Build a weight-streaming engine (weights may exceed GPU memory)."
    ),
    max_batch: int = typer.Option(
        4, **number(1, 4096), help="Largest batch of the optimization profile (dynamic-batch exports only)."
    ),
    opt_batch: int = typer.Option(
        None,
        **number(1, 4096),
        help="Batch the dynamic profile is tuned for (default: --max-batch; dynamic-batch exports only).",
    ),
    workspace_gib: float = typer.Option(
        None, **number(0.001, 4096.0), help="Builder workspace limit in GiB (default: TensorRT's)."
    ),
    overwrite: Overwrite = False,
) -> None:
    r"""Build a TensorRT (>= 10) strongly typed engine from an exported fused graph.

    Needs the optional extra, pip install 'fe2e-deploy\[tensorrt]', and an NVIDIA GPU; without
    TensorRT the command says so and exits 3. The plan is tied to this GPU and TensorRT version.
    """
    # The backslash keeps Typer's rich markup from eating "[tensorrt]" as a style tag.
    with user_errors():  # the library checks the graph (manifest, structure, weights.bin size) before TensorRT
        from ..artifacts.tensorrt import TensorRTUnavailable  # noqa: PLC0415
        from ..compile.tensorrt_build import build_trt_engine  # noqa: PLC0415

        options.output_file(out, overwrite)
        options.output_file(timing_cache)  # read if present, written after the build
        try:
            sidecar = build_trt_engine(
                onnx_graph,
                out,
                precision=precision,
                opt_level=opt_level,
                timing_cache=timing_cache,
                weight_streaming=weight_streaming,
                max_batch=max_batch,
                opt_batch=opt_batch,
                workspace_gib=workspace_gib,
                overwrite=overwrite,
            )
        except TensorRTUnavailable as exc:
            raise fail(str(exc), code=3) from None
    typer.echo(
        f"TensorRT {sidecar.tensorrt} {precision} engine for {sidecar.resolution} ({sidecar.batch.describe()}) "
        f"written to {out} in {sidecar.build_seconds} s on {sidecar.gpu.name}"
    )
