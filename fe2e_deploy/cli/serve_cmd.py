"""``fe2e-deploy serve``: depth and normals over HTTP with Ray Serve (the ``ray`` extra)."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import typer

from ..errors import InvalidInput
from ..resolution import MAX_PROCESSING_PIXELS, parse_resolution
from .app import app, user_errors
from .options import ENGINE_HELP, Dtype, MaxImagePixels, MaxProcessingPixels, ProcessingRes, number


@app.command("serve")
def serve(
    engine: Path = typer.Option(
        None,
        help=ENGINE_HELP + " Each replica opens it once. Default: the embedded demo model (at its training size, "
        "128x96), as infer without model options.",
    ),
    replicas: int = typer.Option(
        1, **number(1, 1024), help="Replicas (Ray actors), each with its own copy of the engine."
    ),
    host: str = typer.Option(
        "127.0.0.1", help="Interface to listen on (0.0.0.0: every interface). Ray's own servers stay on 127.0.0.1."
    ),
    port: int = typer.Option(8000, **number(1, 65535), help="HTTP port (1-65535), tried before Ray starts."),
    max_batch_size: int = typer.Option(
        8, **number(1, 4096), help="Most requests one engine call takes (dynamic batching)."
    ),
    batch_wait_ms: float = typer.Option(
        10.0, **number(0.0, 60_000.0), help="How long a request waits for others to batch with (ms)."
    ),
    max_ongoing_requests: int | None = typer.Option(
        None,
        **number(1, 1_000_000),
        help="Requests to /predict one replica holds at once (reading, waiting for a batch, in the engine, "
        "encoding; default: 2 x --max-batch-size, at least --max-batch-size); more are answered 503 with "
        "Retry-After. /healthz is answered beside them.",
    ),
    max_body_mb: float = typer.Option(
        50.0, **number(0.001, 1e5), help="Largest request body (MB); larger ones are answered 413."
    ),
    max_image_pixels: MaxImagePixels = None,
    max_points: int = typer.Option(
        100_000,
        **number(1, 100_000_000),
        help="format=ply: points of an answer when the request gives no max_points (drawn with a fixed seed, as "
        "infer --max-points and the demo), and the most a request may ask (more is answered 400).",
    ),
    body_timeout_s: float = typer.Option(
        30.0,
        **number(0.001, 86_400.0),
        help="Time a client has to send its whole body (s); a slower one is answered 408 and let go.",
    ),
    request_timeout_s: float = typer.Option(
        120.0,
        **number(0.001, 86_400.0),
        help="Time a request has once its body is in (decoding, batch, engine, encoding; s); then 503.",
    ),
    drain_timeout_s: float = typer.Option(
        30.0,
        **number(0.0, 86_400.0),
        help="On Ctrl-C or SIGTERM: how long requests in progress may take to finish (s) before Ray stops.",
    ),
    address: str = typer.Option(None, help="Ray cluster: auto or HOST:PORT; default: a local one."),
    gpus_per_replica: float = typer.Option(0.0, **number(0.0, 64.0), help="GPUs per replica (0: CPU)."),
    cpus_per_replica: float = typer.Option(
        1.0, **number(0.01, 1024.0), help="CPUs per replica (torch threads on a CPU replica)."
    ),
    dtype: Dtype = None,
    processing_res: ProcessingRes = None,
    max_processing_pixels: MaxProcessingPixels = MAX_PROCESSING_PIXELS,
) -> None:
    """Serve POST /predict (the image file as the body) and GET /healthz until Ctrl-C or SIGTERM.

    /predict query parameters: format=npz (default: depth [H, W] and normals [H, W, 3], float32),
    npy, png or ply; map=depth|normals (npy, png) or depth_colored (png); output_res=input|processing.
    format=ply: infer's point cloud (binary PLY, relative depth), with fov=DEGREES (horizontal) or
    intrinsics=fx,fy,cx,cy (pixels of the maps), else the image's EXIF focal length, else 60 deg; max_points=N
    (default and most: --max-points, 100000).
    A video body (MP4/MOV, MKV/WebM, AVI, MPEG-TS...) is answered 415: videos go through infer.
    Requests that arrive together are batched into one engine call. Every error is answered with a
    one-line JSON reason: 400/413/415/422 bad request or image (--max-image-pixels default 6048x4032),
    408 body too slow, 503 busy or too slow (with Retry-After). Ctrl-C or SIGTERM (to the process or
    its group) stops: requests in progress finish, then Ray stops; exit code 0. Needs:
    pip install 'fe2e-deploy\\[ray]'.
    """
    # Installed first: a stop during the start-up (Ray starting, replicas opening the engine) also stops cleanly.
    previous = {signum: signal.signal(signum, _interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    started = False
    try:
        with user_errors():
            check_options(
                replicas=replicas,
                max_batch_size=max_batch_size,
                max_ongoing_requests=max_ongoing_requests,
                batch_wait_ms=batch_wait_ms,
                max_body_mb=max_body_mb,
                max_image_pixels=max_image_pixels,
                max_points=max_points,
                body_timeout_s=body_timeout_s,
                request_timeout_s=request_timeout_s,
                drain_timeout_s=drain_timeout_s,
                cpus_per_replica=cpus_per_replica,
                gpus_per_replica=gpus_per_replica,
            )
            from ..cluster.ray_setup import check_listen_address  # noqa: PLC0415

            check_listen_address(host, port, try_bind=address is None)  # before anything heavy is imported
            from ..cluster.ray_setup import torch_threads  # noqa: PLC0415
            from ..cluster.serve import ServeOptions, start_serve  # noqa: PLC0415
            from ..engines import engine_kind  # noqa: PLC0415
            from ..engines.options import EngineOptions  # noqa: PLC0415

            if engine is not None:
                engine_kind(engine)  # a missing or unsupported engine fails here, before Ray starts
            settings = ServeOptions(
                engine=None if engine is None else str(engine.absolute()),
                engine_options=EngineOptions(
                    device="cuda" if gpus_per_replica > 0 else "cpu",
                    dtype=dtype,
                    processing_res=parse_resolution(processing_res) if processing_res else None,
                    max_processing_pixels=max_processing_pixels,
                ),
                max_batch_size=max_batch_size,
                batch_wait_s=batch_wait_ms / 1000,
                max_body_bytes=int(max_body_mb * 2**20),
                **({"max_image_pixels": max_image_pixels} if max_image_pixels is not None else {}),
                max_ongoing_requests=max_ongoing_requests,
                body_timeout_s=body_timeout_s,
                request_timeout_s=request_timeout_s,
                max_points=max_points,
                threads=torch_threads(cpus_per_replica, gpus_per_replica),
            )
            started = True  # from here on, a local Ray may be running: stopped below whatever happens
            url = start_serve(
                settings,
                replicas=replicas,
                host=host,
                port=port,
                address=address,
                cpus_per_replica=cpus_per_replica,
                gpus_per_replica=gpus_per_replica,
                drain_timeout_s=drain_timeout_s,
            )
        what = "the embedded demo model" if engine is None else engine
        typer.echo(f"serving {what} on {url}: POST {url}/predict, GET {url}/healthz (Ctrl-C or SIGTERM stops)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopping: requests in progress finish, then Ray stops")
    finally:
        if started:
            for signum in (signal.SIGINT, signal.SIGTERM):  # a second signal does not cut the drain short
                signal.signal(signum, signal.SIG_IGN)
            from ..cluster.serve import stop_serve  # noqa: PLC0415

            stop_serve()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check_options(**values: float | None) -> None:
    """Each option value in its range (None: the default), else an error naming the option and its value."""
    batch = values["max_batch_size"]
    rules = {  # option -> (in range, what it must be)
        "replicas": (lambda v: v >= 1, "an integer >= 1"),
        "max_batch_size": (lambda v: v >= 1, "an integer >= 1"),
        "max_ongoing_requests": (lambda v: v >= batch, f"an integer >= --max-batch-size ({batch})"),
        "batch_wait_ms": (lambda v: v >= 0, "a number >= 0"),
        "max_body_mb": (lambda v: v > 0, "a number > 0"),
        "max_image_pixels": (lambda v: v >= 1, "an integer >= 1"),
        "max_points": (lambda v: v >= 1, "an integer >= 1"),
        "body_timeout_s": (lambda v: v > 0, "a number > 0"),
        "request_timeout_s": (lambda v: v > 0, "a number > 0"),
        "drain_timeout_s": (lambda v: v >= 0, "a number >= 0"),
        "cpus_per_replica": (lambda v: v >= 0, "a number >= 0"),
        "gpus_per_replica": (lambda v: v >= 0, "a number >= 0"),
    }
    for name, value in values.items():
        ok, requirement = rules[name]
        if value is not None and not (math.isfinite(value) and ok(value)):
            raise InvalidInput(f"--{name.replace('_', '-')} {value}: must be {requirement}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
