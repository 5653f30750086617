"""``fe2e-deploy demo``: a web page over one engine (Gradio, the ``demo`` extra)."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import signal
import socket
from pathlib import Path

import typer

from .app import app, fail, user_errors
from .options import ENGINE_HELP, Device, Dtype, MaxImagePixels, ProcessingRes, number

#: What the page binds by default: this machine only.
LOOPBACK = "127.0.0.1"


@app.command("demo")
def demo(
    engine: Path = typer.Option(
        None, help=ENGINE_HELP + " Opened once. Default: the embedded demo model (at its training size, 128x96)."
    ),
    host: str = typer.Option(
        LOOPBACK,
        help="Interface to listen on: an address (IPv6 too: ::1) or a host name. Default 127.0.0.1: this machine "
        "only (so are ::1 and localhost). 0.0.0.0 (every interface) lets anyone who reaches this machine upload "
        "files and run the engine: the page has no authentication (a warning says so).",
    ),
    port: int = typer.Option(7860, **number(1, 65535), help="HTTP port (1-65535)."),
    device: Device = "auto",
    dtype: Dtype = None,
    processing_res: ProcessingRes = None,
    max_image_pixels: MaxImagePixels = None,
    max_clip_frames: int = typer.Option(
        120,
        **number(1, 1_000_000),
        help="Clips: process at most this many frames (the first ones); the page says when a clip is cut.",
    ),
    max_points: int = typer.Option(
        100_000,
        **number(1, 100_000_000),
        help="Points of the point cloud (viewer and PLY download), drawn with a fixed seed.",
    ),
    max_file_mb: float = typer.Option(
        200.0, **number(0.001, 1e6), help="Largest upload (MB); larger ones are refused in the page."
    ),
    queue_size: int = typer.Option(
        8,
        **number(1, 10_000),
        help="Uploads waiting for the engine at most (one runs at a time); more are refused in the page.",
    ),
) -> None:
    """Serve a web page: drop an image (or a clip) and see its depth, normals and point cloud.

    The page shows input | depth (colour map, near = warm) with a slider, the normals, the 3D point cloud, the
    engine's name and infer's timings per stage, and offers infer's files for download (depth .npy and 16-bit
    PNG, normals .npy and PNG, PLY). The Clip tab runs infer on a video and plays the depth and normals videos.
    Every upload goes through infer's pipeline with the one engine opened at start, one at a time. Default
    --max-image-pixels: 6048x4032 = 24.4 MP. Uploads and results are kept in one private folder (0700, files
    0600) under the temporary folder, deleted when the demo stops (Ctrl-C or SIGTERM). Needs:
    pip install 'fe2e-deploy\\[demo]'.
    """
    umask = os.umask(0o077)  # every file of the demo (uploads, results, Gradio's copies) is the user's only
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a stop by SIGTERM cleans up as Ctrl-C does
    try:
        _demo(
            engine,
            host,
            port,
            device,
            dtype,
            processing_res,
            max_image_pixels,
            max_clip_frames,
            max_points,
            max_file_mb,
            queue_size,
        )
    except KeyboardInterrupt:
        typer.echo("demo stopped")
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.umask(umask)


def _demo(
    engine: Path | None,
    host: str,
    port: int,
    device: str,
    dtype: str | None,
    processing_res: str | None,
    max_image_pixels: int | None,
    max_clip_frames: int,
    max_points: int,
    max_file_mb: float,
    queue_size: int,
) -> None:
    with user_errors():
        from ..cluster.ray_setup import check_listen_address  # noqa: PLC0415  (no Ray: it is imported lazily)
        from ..errors import InvalidInput  # noqa: PLC0415
        from ..web_demo import (  # noqa: PLC0415
            MAX_IMAGE_PIXELS,
            DemoOptions,
            DemoRunner,
            launch,
            open_demo_engine,
            url_host,
        )
        from . import options  # noqa: PLC0415

        limits = DemoOptions(
            max_image_pixels=MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels,
            max_clip_frames=max_clip_frames,
            max_points=max_points,
            max_file_mb=max_file_mb,
            queue_size=queue_size,
        )
        settings = options.engine_options(device, dtype, processing_res)
        if importlib.util.find_spec("gradio") is None:  # not imported yet: GRADIO_TEMP_DIR is set first (launch)
            raise InvalidInput("the demo needs Gradio: pip install 'fe2e-deploy[demo]'")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [::1] -> ::1
        check_listen_address(host, port)  # before the engine is loaded
        if not loopback_only(host):
            typer.secho(
                f"warning: --host {host}: the page is reachable beyond this machine, without authentication",
                err=True,
                fg=typer.colors.YELLOW,
            )
        runner = DemoRunner(open_demo_engine(engine, settings), limits)
    try:
        try:
            blocks = launch(runner, host=host, port=port, block=False)
        except OSError as exc:  # the port was taken since it was checked
            raise fail(f"cannot serve on {host}:{port}: {exc}") from None
        typer.echo(f"demo of {runner.engine.name} on http://{url_host(host)}:{port} (Ctrl-C or SIGTERM stops)")
        blocks.block_thread()  # until Ctrl-C or SIGTERM, then the server closes
    finally:
        runner.close()  # the work folder: uploads, results, Gradio's copies


def loopback_only(host: str) -> bool:
    """Whether every address ``host`` names is a loopback one (``127.0.0.1``, ``::1``, ``localhost``): the page is
    not reachable beyond this machine. A name that does not resolve is not."""
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return False
    return bool(found) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in found)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
