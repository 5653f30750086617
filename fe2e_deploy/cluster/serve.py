"""``serve``: depth and normals over HTTP, as a Ray Serve app with dynamic batching and replicas.

Follow a request: ``POST /predict`` (the image file as the body; ``format=npz|npy|png``, ``map=``,
``output_res=`` as query parameters, checked first by :func:`~.responses.check_request`) is read up
to the body limit (else 413), decoded and pre-processed in a thread (an unreadable image: 400; a size
the engine cannot run: 422), then waits at most ``batch_wait_s`` in :meth:`FE2EService.predict_batch`
(Ray Serve's ``@serve.batch``) for other requests to the same replica, so up to ``max_batch_size``
images go through the engine in one call (grouped by size, as in ``infer``). The maps are
post-processed and encoded (:func:`~.responses.encode_prediction`) in a thread. ``GET /healthz``
answers 200 with the engine and how many engine calls and images this replica ran.

Each replica opens the engine once. HTTP binds ``host`` (default 127.0.0.1: this machine only).
"""

# No "from __future__ import annotations": FastAPI reads the handlers' annotations as objects (Request).

import asyncio
import io
import threading
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve

from ..engines.base import Prepared
from ..engines.options import EngineOptions
from ..errors import ImageError
from ..files.images import READ_ERRORS, read_image, unreadable_image
from .ray_setup import connect
from .responses import RequestFailed, check_request, encode_prediction

#: The app's name in Ray Serve (``serve.get_app_handle(APP_NAME)``).
APP_NAME = "fe2e"

api = FastAPI(title="fe2e-deploy", description="FE2E depth and surface normals")


@dataclass(frozen=True)
class ServeOptions:
    """How each replica runs: the engine, its device, batching and the request limits."""

    engine: str
    engine_options: EngineOptions = EngineOptions()
    max_batch_size: int = 8
    batch_wait_s: float = 0.01
    max_body_bytes: int = 50 * 2**20
    png_compression: int = 1
    threads: int | None = None  # torch threads of a CPU replica


@serve.deployment
@serve.ingress(api)
class FE2EService:
    """One replica: an engine opened once, requests batched into its calls."""

    def __init__(self, options: ServeOptions) -> None:
        import torch  # noqa: PLC0415

        from ..engines import load_engine  # noqa: PLC0415

        if options.threads:
            torch.set_num_threads(options.threads)
        self.options = options
        self.engine = load_engine(options.engine, options.engine_options)
        self.predict_batch.set_max_batch_size(options.max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(options.batch_wait_s)
        self.lock = threading.Lock()
        self.engine_calls = 0
        self.images = 0

    @api.get("/healthz")
    def healthz(self) -> dict:
        return {"status": "ok", "engine": self.engine.name, "engine_calls": self.engine_calls, "images": self.images}

    @api.post("/predict")
    async def predict(
        self, request: Request, format: str = "npz", map: str | None = None, output_res: str = "input"
    ) -> Response:
        try:
            what = check_request(format, map, output_res)
            body = await self._read_body(request)
            prepared = await asyncio.to_thread(self._prepare, body)
            prediction = await self.predict_batch((prepared, output_res))
            if isinstance(prediction, ImageError):  # maps with NaN or Inf
                raise RequestFailed(str(prediction), 500)
            content, media_type = await asyncio.to_thread(
                encode_prediction, prediction, format, what, self.options.png_compression
            )
        except RequestFailed as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        return Response(content, media_type=media_type)

    async def _read_body(self, request: Request) -> bytes:
        """The body, refused (413) past the limit before it is all read; an empty body is a 400."""
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestFailed(f"body of {int(declared)} bytes is over the limit of {limit} bytes", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestFailed(f"body is over the limit of {limit} bytes", 413)
            chunks.append(chunk)
        if not size:
            raise RequestFailed("empty body: send the image file as the request body")
        return b"".join(chunks)

    def _prepare(self, body: bytes) -> Prepared:
        try:
            image = read_image(io.BytesIO(body))
        except READ_ERRORS as exc:
            raise RequestFailed(unreadable_image(exc, None)) from None
        try:
            return self.engine.prepare(image)
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
) -> str:
    """Deploy the app (``replicas`` replicas) on the cluster at ``address`` (None: a local one) and return its
    URL. Returns once every replica has opened its engine."""
    connect(address)
    serve.start(http_options={"host": host, "port": port})
    deployment = FE2EService.options(
        num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica, "num_gpus": gpus_per_replica}
    )
    serve.run(deployment.bind(options), name=APP_NAME, route_prefix="/")
    return f"http://{host}:{port}"


def stop_serve() -> None:
    """Delete the app (other apps on a shared cluster keep running); a local Ray this process started stops."""
    serve.delete(APP_NAME)
    import ray  # noqa: PLC0415

    ray.shutdown()
