"""``serve``: depth and normals over HTTP, as a Ray Serve app with dynamic batching and replicas.

Follow a request: ``POST /predict`` (the image file as the body; ``format=npz|npy|png|ply``, ``map=``,
``output_res=`` as query parameters, checked first by :func:`~.responses.check_request`; ``format=ply`` also
takes ``fov=``, ``intrinsics=fx,fy,cx,cy`` and ``max_points=``, at most ``ServeOptions.max_points``, the
default) is admitted
if the replica holds fewer than ``max_ongoing_requests`` (else 503 with ``Retry-After``), read up to
the body limit (else 413) within ``body_timeout_s`` (else 408), refused if it is a video (415), its image size
checked from the
header (over ``max_image_pixels``: 413), decoded and pre-processed in a thread (an unreadable image:
400; a size the engine cannot run: 422), then waits at most ``batch_wait_s`` in
:meth:`FE2EService.predict_batch` (Ray Serve's ``@serve.batch``) for other requests to the same
replica, so up to ``max_batch_size`` images go through the engine in one call (grouped by size, as in
``infer``). The maps are post-processed and encoded (:func:`~.responses.encode_prediction`) in a
thread; past ``request_timeout_s`` after its body, a request is answered 503. ``GET /healthz``
answers 200 with the engine and how many engine calls and images this replica ran. Every error is
one line of JSON ``{"error": ...}``.

Each replica opens the engine once. HTTP binds ``host`` (default 127.0.0.1: this machine only); each
replica's internal gRPC server binds the node's address (:func:`bind_replica_server_to_node`), so a
local cluster listens on 127.0.0.1 only. Stopping (:func:`stop_serve`) lets requests in progress
finish (at most ``drain_timeout_s``) before Ray stops.
"""

# No "from __future__ import annotations": FastAPI reads the handlers' annotations as objects (Request).

import asyncio
import io
import ipaddress
import re
import threading
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.config import BackpressureConfig
from starlette.exceptions import HTTPException

from ..engines.base import Prepared
from ..engines.options import EngineOptions
from ..errors import ImageError, InvalidInput, describe, is_user_error
from ..files.images import READ_ERRORS, ImageTooLarge, read_image, unreadable_image
from .fate import ClusterGuard, guard_if_starting
from .ray_setup import check_listen_address, connect, signals_to_driver_only
from .responses import MAX_POINTS, RequestFailed, camera_options, check_not_video, check_request, encode_prediction

#: The app's name in Ray Serve (``serve.get_app_handle(APP_NAME)``).
APP_NAME = "fe2e"

#: Largest input image by default: 6048x4032 = 24.4 MP, the largest FE2E's resize rule brings down to 864x576
#: (larger ones are processed at their size). Its npz answer (16 bytes per pixel) is 390 MB.
MAX_IMAGE_PIXELS = 6048 * 4032

#: Requests a replica takes beyond ``max_ongoing_requests`` (Ray Serve's own limit): /healthz and the 503 answers
#: to /predict requests over the limit, so that they are answered at once instead of queued.
HEADROOM = 8

#: ``Retry-After`` (seconds) of a 503.
RETRY_AFTER_S = 1

#: Whether :func:`start_serve` connected this process to Ray (then :func:`stop_serve` disconnects it).
_own_ray = False
#: The watchdog of the local cluster :func:`start_serve` started (:mod:`~fe2e_deploy.cluster.fate`).
_guard: ClusterGuard | None = None

api = FastAPI(title="fe2e-deploy", description="FE2E depth and surface normals")


def error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer: one line of JSON ``{"error": message}``."""
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own errors (404 no such path, 405 wrong method) in the same shape as the app's."""
    return error(f"{request.method} {request.url.path}: {exc.detail}", exc.status_code, exc.headers)


@api.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    reasons = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return error(f"invalid request: {reasons}", 422)


@dataclass(frozen=True)
class ServeOptions:
    """How each replica runs: the engine, its device, batching and the request limits.

    ``max_ongoing_requests`` (default: twice ``max_batch_size``: one batch in the engine, the next one gathering)
    bounds the /predict requests a replica holds at once; ``body_timeout_s`` the time a client has to send its
    body, ``request_timeout_s`` the rest of a request (decoding, batch wait, engine, encoding).
    """

    engine: str | None  # None: the embedded demo model (web_demo.open_demo_engine, as infer opens it)
    engine_options: EngineOptions = EngineOptions()
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    max_body_bytes: int = 50 * 2**20
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_ongoing_requests: int | None = None
    body_timeout_s: float = 30.0
    request_timeout_s: float = 120.0
    png_compression: int = 1
    max_points: int = MAX_POINTS  # format=ply: points by default, and the most a request may ask
    threads: int | None = None  # torch threads of a CPU replica

    @property
    def ongoing_limit(self) -> int:
        return self.max_ongoing_requests or 2 * self.max_batch_size


class EngineNotOpened(RuntimeError):
    """A replica could not open the engine (a user error: a missing, truncated or unsupported file)."""


def bind_replica_server_to_node() -> None:
    """Make this replica's internal gRPC server (requests between deployments) bind the node's address.

    Ray Serve 2.60 binds it on every interface (``[::]:0``) and unpickles what it receives; with Ray's token
    auth disabled (``RAY_AUTH_MODE=disabled``) anyone who reaches the port runs code. Ray has no option for the
    address: the replica module's ``add_port_to_grpc_server`` is wrapped (in this replica's process, before Ray
    Serve starts the server, after the constructor) to bind the node address instead, 127.0.0.1 on a local
    cluster. A Ray without that hook is refused unless token auth is on (:func:`serve_security_problem`).
    """
    import ray  # noqa: PLC0415
    from ray.serve._private import replica  # noqa: PLC0415

    add = getattr(replica, "add_port_to_grpc_server", None)
    if add is None or getattr(add, "binds_node_address", False):
        if add is None and not token_auth_enabled():
            raise EngineNotOpened(
                f"Ray {ray.__version__}: cannot keep Ray Serve's replica gRPC server on the node address (tested "
                "with Ray 2.60), and Ray's token authentication is off: set RAY_AUTH_MODE=token or use Ray 2.60"
            )
        return
    node = ray.util.get_node_ip_address()
    host = f"[{node}]" if ":" in node else node

    def add_port(server, address: str) -> int:
        return add(server, re.sub(r"^\[::\]|^0\.0\.0\.0", host, address))

    add_port.binds_node_address = True
    replica.add_port_to_grpc_server = add_port


def token_auth_enabled() -> bool:
    """Ray's token authentication is on (``RAY_AUTH_MODE=token``; the default of a local cluster in Ray 2.60)."""
    try:
        from ray._private.authentication.authentication_utils import is_token_auth_enabled  # noqa: PLC0415
    except ImportError:  # a Ray without token authentication
        return False
    return bool(is_token_auth_enabled())


def cluster_exposure(node_addresses: set[str], token_auth: bool) -> str | None:
    """Why serving on these nodes is unsafe, or None: nodes on network addresses need Ray's token auth (their
    internal servers, which unpickle what they receive, listen there)."""
    exposed = sorted(a for a in node_addresses if not _is_loopback(a))
    if not exposed or token_auth:
        return None
    return (
        f"the Ray cluster's nodes listen on {', '.join(exposed)} without Ray's token authentication: anyone who "
        "reaches them can run code; start the cluster with RAY_AUTH_MODE=token (Ray >= 2.60), or use a local one"
    )


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a host name
        return address == "localhost"


@serve.deployment
@serve.ingress(api)
class FE2EService:
    """One replica: an engine opened once, requests batched into its calls."""

    def __init__(self, options: ServeOptions) -> None:
        bind_replica_server_to_node()
        import torch  # noqa: PLC0415

        from ..web_demo import open_demo_engine  # noqa: PLC0415  (load_engine, or the demo model for None)

        if options.threads:
            torch.set_num_threads(options.threads)
        self.options = options
        try:
            self.engine = open_demo_engine(options.engine, options.engine_options)
        except Exception as exc:
            if not is_user_error(exc):
                raise
            raise EngineNotOpened(describe(exc)) from None  # its message is what start_serve reports
        self.predict_batch.set_max_batch_size(options.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(options.batch_wait_s)
        self.lock = threading.Lock()
        self.engine_calls = 0
        self.images = 0
        self.ongoing = 0  # /predict requests in this replica (changed on its event loop only)

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {
            "status": "ok",
            "engine": self.engine.name,
            "engine_calls": self.engine_calls,
            "images": self.images,
            "ongoing": self.ongoing,
        }

    @api.post("/predict")
    async def predict(
        self,
        request: Request,
        format: str = "npz",
        map: str | None = None,
        output_res: str = "input",
        fov: float | None = None,
        intrinsics: str | None = None,
        max_points: int | None = None,
    ) -> Response:
        limit = self.options.ongoing_limit
        if self.ongoing >= limit:
            return error(
                f"busy: {limit} requests in progress (--max-ongoing-requests); retry later",
                503,
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        self.ongoing += 1
        try:
            what = check_request(format, map, output_res)
            camera = camera_options(intrinsics, fov, max_points, self.options.max_points) if format == "ply" else None
            body = await self._read_body(request)
            check_not_video(body)
            async with asyncio.timeout(self.options.request_timeout_s):
                prepared, image = await asyncio.to_thread(self._prepare, body, format == "ply")
                prediction = await self.predict_batch((prepared, output_res))
                if isinstance(prediction, ImageError):  # maps with NaN or Inf
                    raise RequestFailed(str(prediction), 500)
                content, media_type = await asyncio.to_thread(
                    encode_prediction, prediction, format, what, self.options.png_compression, image, camera, body
                )
        except RequestFailed as exc:
            return error(str(exc), exc.status)
        except TimeoutError:
            return error(
                f"not answered within {self.options.request_timeout_s:g} s (--request-timeout-s); retry later",
                503,
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        finally:
            self.ongoing -= 1
        return Response(content, media_type=media_type)

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused (413) past the limit before it is all read, or when it takes longer than
        ``body_timeout_s`` (408); an empty body is a 400."""
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestFailed(f"body of {int(declared)} bytes is over the limit of {limit} bytes", 413)
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.options.body_timeout_s):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise RequestFailed(f"body is over the limit of {limit} bytes", 413)
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestFailed(
                f"the body did not arrive within {self.options.body_timeout_s:g} s (--body-timeout-s)", 408
            ) from None
        if not size:
            raise RequestFailed("empty body: send the image file as the request body")
        return b"".join(chunks)

    def _prepare(self, body: bytes, keep_image: bool = False) -> tuple[Prepared, object]:
        """The image pre-processed, and the decoded image itself when ``keep_image`` (a point cloud's colours)."""
        limit = self.options.max_image_pixels
        try:
            image = read_image(io.BytesIO(body), max_pixels=limit)  # the size is checked before decoding
        except ImageTooLarge as exc:
            raise RequestFailed(f"{exc} (--max-image-pixels {limit})", 413) from None
        except READ_ERRORS as exc:
            raise RequestFailed(unreadable_image(exc, None)) from None
        try:
            return self.engine.prepare(image), image if keep_image else None
        except ImageError as exc:  # a size the engine was not built for, too many pixels
            raise RequestFailed(str(exc), 422) from None

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict_batch(self, requests: list[tuple[Prepared, str]]) -> list:
        """Requests that arrived together -> one engine call per output resolution asked (usually one)."""
        return await asyncio.to_thread(self._predict, requests)

    def _predict(self, requests: list[tuple[Prepared, str]]) -> list:
        results: list = [None] * len(requests)
        for output_res in sorted({res for _, res in requests}):
            indices = [i for i, (_, res) in enumerate(requests) if res == output_res]
            finishes = self.engine.predict_prepared([requests[i][0] for i in indices], output_res=output_res)
            with self.lock:
                self.engine_calls += 1
                self.images += len(indices)
            for i, finish in zip(indices, finishes, strict=True):
                try:
                    results[i] = finish()
                except ImageError as exc:  # this request's maps hold NaN or Inf: answered 500, the others not
                    results[i] = exc
        return results


def start_serve(
    options: ServeOptions,
    *,
    replicas: int = 1,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    cpus_per_replica: float = 1.0,
    gpus_per_replica: float = 0.0,
    drain_timeout_s: float = 30.0,
    proxy_location: str = "EveryNode",
) -> str:
    """Deploy the app (``replicas`` replicas) on the cluster at ``address`` (None: a local one) and return its
    URL. Returns once every replica has opened its engine.

    ``proxy_location``: Ray Serve's HTTP proxies, on every node with a replica (``EveryNode``: each node answers
    at ``host:port``, behind a load balancer) or on the head node only (``HeadOnly``).

    The address is checked first (a local cluster's port is tried). A local cluster is started so that a signal
    to this process's group reaches this process only (:func:`~.ray_setup.signals_to_driver_only`): stop it with
    :func:`stop_serve`. A cluster on network addresses without Ray's token auth is refused
    (:func:`cluster_exposure`); so is an engine a replica cannot open (one line: the replica's reason).
    """
    global _own_ray, _guard  # noqa: PLW0603
    check_listen_address(host, port, try_bind=address is None)
    _guard = guard_if_starting(address)  # a local cluster ends with this process, even by kill -9
    with signals_to_driver_only():
        _own_ray = connect(address)
    import ray  # noqa: PLC0415

    try:
        problem = cluster_exposure({node["NodeManagerAddress"] for node in ray.nodes()}, token_auth_enabled())
        if problem:
            raise InvalidInput(problem)
        serve.start(
            proxy_location=proxy_location,
            http_options={
                "host": host,
                "port": port,
                # Ray's own bound (its 408 is plain text): the app answers first, in JSON
                "request_timeout_s": options.body_timeout_s + options.request_timeout_s + 10,
            },
        )
        limit = options.ongoing_limit
        deployment = FE2EService.options(
            num_replicas=replicas,
            max_ongoing_requests=limit + HEADROOM,
            max_queued_requests=limit + HEADROOM,  # past it Ray's proxy answers 503 (plain text) itself
            backpressure_config=BackpressureConfig(retry_after_s=RETRY_AFTER_S),
            graceful_shutdown_timeout_s=drain_timeout_s,
            graceful_shutdown_wait_loop_s=0.1,
            max_constructor_retry_count=replicas,  # an engine that does not open is not retried for minutes
            ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica},
        )
        try:
            serve.run(deployment.bind(options), name=APP_NAME, route_prefix="/")
        except RuntimeError as exc:
            reason = _replica_failure()
            if reason is None:
                raise
            raise InvalidInput(f"a replica could not open the engine: {reason}") from exc
    except BaseException:
        stop_serve()
        raise
    return f"http://{host}:{port}"


def _replica_failure() -> str | None:
    """The reason a replica gave for not opening the engine (:class:`EngineNotOpened`), from the app's status."""
    try:
        deployments = serve.status().applications[APP_NAME].deployments
    except Exception:  # noqa: BLE001  (no status: the caller reports Ray's own error)
        return None
    for deployment in deployments.values():
        found = re.search(rf"{EngineNotOpened.__name__}: (.+)", deployment.message or "")
        if found:
            return found.group(1).strip()
    return None


def stop_serve() -> None:
    """Delete the app, letting requests in progress finish (the deployment's ``graceful_shutdown_timeout_s``);
    other apps on a shared cluster keep running. A local Ray :func:`start_serve` started stops (a process that
    was connected already, a test's or a notebook's, stays connected)."""
    global _own_ray, _guard  # noqa: PLW0603
    import ray  # noqa: PLC0415

    try:
        if ray.is_initialized() and APP_NAME in serve.status().applications:
            serve.delete(APP_NAME)
    finally:
        if _own_ray:
            ray.shutdown()
            _own_ray = False
        if _guard is not None:  # Ray is down (or never started): the watchdog has nothing to kill
            _guard.stop()
            _guard = None
