"""``fe2e-deploy serve``: depth and normals over HTTP with Ray Serve (the ``ray`` extra)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import typer

from ..errors import InvalidInput
from ..resolution import MAX_PROCESSING_PIXELS, parse_resolution
from .app import app, user_errors
from .options import ENGINE_HELP, Dtype, MaxProcessingPixels, ProcessingRes


@app.command("serve")
def serve(
    engine: Path = typer.Option(..., help=ENGINE_HELP + " Each replica opens it once."),
    replicas: int = typer.Option(1, help="Replicas (Ray actors), each with its own copy of the engine."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="HTTP port."),
    max_batch_size: int = typer.Option(8, help="Most requests one engine call takes (dynamic batching)."),
    batch_wait_ms: float = typer.Option(10.0, help="How long a request waits for others to batch with (ms)."),
    max_body_mb: float = typer.Option(50.0, help="Largest request body (MB); larger ones are answered 413."),
    address: str = typer.Option(None, help="Ray cluster: auto or HOST:PORT; default: a local one."),
    gpus_per_replica: float = typer.Option(0.0, help="GPUs per replica (0: CPU)."),
    cpus_per_replica: float = typer.Option(1.0, help="CPUs per replica (torch threads on a CPU replica)."),
    dtype: Dtype = None,
    processing_res: ProcessingRes = None,
    max_processing_pixels: MaxProcessingPixels = MAX_PROCESSING_PIXELS,
) -> None:
    """Serve POST /predict (the image file as the body) and GET /healthz until interrupted (Ctrl-C).

    /predict query parameters: format=npz (default: depth [H, W] and normals [H, W, 3], float32),
    npy or png; map=depth|normals (npy, png) or depth_colored (png); output_res=input|processing.
    Requests that arrive together are batched into one engine call. A bad image or request is
    answered 4xx with a one-line JSON reason. Needs: pip install 'fe2e-deploy[ray]'.
    """
    with user_errors():
        if replicas < 1 or max_batch_size < 1 or max_body_mb <= 0 or batch_wait_ms < 0:
            raise InvalidInput("--replicas and --max-batch-size must be >= 1, --max-body-mb > 0, --batch-wait-ms >= 0")
        from ..cluster.ray_setup import torch_threads  # noqa: PLC0415
        from ..cluster.serve import ServeOptions, start_serve, stop_serve  # noqa: PLC0415
        from ..engines import engine_kind  # noqa: PLC0415
        from ..engines.options import EngineOptions  # noqa: PLC0415

        engine_kind(engine)  # a missing or unsupported engine fails here, before Ray starts
        settings = ServeOptions(
            engine=str(engine.absolute()),
            engine_options=EngineOptions(
                device="cuda" if gpus_per_replica > 0 else "cpu",
                dtype=dtype,
                processing_res=parse_resolution(processing_res) if processing_res else None,
                max_processing_pixels=max_processing_pixels,
            ),
            max_batch_size=max_batch_size,
            batch_wait_s=batch_wait_ms / 1000,
            max_body_bytes=int(max_body_mb * 2**20),
            threads=torch_threads(cpus_per_replica, gpus_per_replica),
        )
        url = start_serve(
            settings,
            replicas=replicas,
            host=host,
            port=port,
            address=address,
            cpus_per_replica=cpus_per_replica,
            gpus_per_replica=gpus_per_replica,
        )
    typer.echo(f"serving {engine} on {url}: POST {url}/predict, GET {url}/healthz (Ctrl-C or SIGTERM stops)")
    # A shell starts background jobs with SIGINT ignored, and service managers stop with SIGTERM: both stop here.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, _interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        stop_serve()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
