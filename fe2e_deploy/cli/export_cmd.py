"""``fe2e-deploy export``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..config import FE2E_RESOLUTIONS, finite_number
from ..graph_io import GRAPHS
from ..resolution import parse_resolution, resolution_name
from . import options
from .app import app, fail, user_errors
from .options import Overwrite, Progress, choice, number

DEFAULT_RESOLUTIONS = ", ".join(resolution_name(r) for r in FE2E_RESOLUTIONS)


@app.command("export")
def export(
    stripped: Path = typer.Argument(..., help="Stripped model folder (from `fe2e-deploy strip`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Export folder: graphs, shared weights.bin, manifest.json."),
    resolution: list[str] = typer.Option(
        None, help=f"WIDTHxHEIGHT to export at, repeatable (default: FE2E's {DEFAULT_RESOLUTIONS})."
    ),
    graph: list[str] = typer.Option(None, help=f"Graphs to export, repeatable (default: all of {', '.join(GRAPHS)})."),
    dtype: str = typer.Option(
        None,
        **choice("bf16", "fp32"),
        help="DiT weight dtype: bf16 or fp32 (default: as stripped). The VAE stays FP32.",
    ),
    precision: str = typer.Option(
        None,
        **choice("fp8"),
        help="fp8: FP8 Q/DQ linears from --scales (compute dtype from --dtype). Default: the dtype only.",
    ),
    scales: Path = typer.Option(None, help="FP8 scales from `fe2e-deploy calibrate` (with --precision fp8)."),
    batch: int = typer.Option(1, **number(1, 4096), help="Static batch size of the graphs."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Make the batch axis dynamic (1-64)."),
    check: bool = typer.Option(
        False, "--check", help="Run every graph in ONNX Runtime on seeded inputs and compare with PyTorch."
    ),
    device: str = typer.Option(
        "cpu",
        **choice("cpu", "cuda", "auto"),
        help="ONNX Runtime device for --check: cpu, cuda (needs onnxruntime-gpu) or auto (cuda if visible).",
    ),
    tolerance: float = typer.Option(
        None, **number(0.0, 1e3), help="--check relative L2 tolerance (default 1e-3 fp32, 3e-2 bf16)."
    ),
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Export the stripped model to ONNX: VAE encoder, DiT step, VAE decoder and the fused image -> depth, normals.

    Static shapes per resolution (dynamo exporter); weights as external data shared by all graphs;
    the folder appears complete or not at all. With --check, writes check.json and exits 1 if any
    graph is off by more than the tolerance.
    """
    with user_errors():  # the library checks every input before the model is loaded
        device = options.device(device)
        if tolerance is not None:
            finite_number(tolerance, "--tolerance", positive=True)
        resolutions = tuple(parse_resolution(r) for r in resolution) if resolution else FE2E_RESOLUTIONS
        if check:  # an ONNX Runtime device that cannot run is an error before the export, not after
            from ..engines.ort_session import providers_for  # noqa: PLC0415

            providers_for(device)
        options.output_dir(out)
        from ..compile.onnx_export import export_onnx  # noqa: PLC0415

        report = export_onnx(
            stripped,
            out,
            resolutions=resolutions,
            graphs=tuple(graph) if graph else tuple(GRAPHS),
            batch=batch,
            dynamic_batch=dynamic_batch,
            dtype=dtype,
            precision=precision,
            fp8_scales=scales,
            overwrite=overwrite,
            progress=progress,
        )
        typer.echo(
            f"exported {len(report.files)} graph(s) to {out} in {report.seconds:.1f} s "
            f"(shared weights {report.weights_bytes / 2**20:.1f} MiB)"
        )
        if check:
            from ..compile.onnx_check import check_export, write_check_report  # noqa: PLC0415

            results = check_export(out, stripped, device, tolerance)
            write_check_report(out, results)
            for result in results:
                typer.echo(result.row())
            failed = [r for r in results if not r.ok]
            if failed:
                raise fail(f"{len(failed)} output(s) above tolerance", code=1)
