"""``batch``'s Ray actors and tasks: each worker opens the engine once, predicts and writes where it computes.

- :func:`decode_images` (tasks, ``files`` format): read and decode a batch of images for the workers.
- :class:`PredictWorker` (``files``): predicts decoded images and writes ``infer``'s files of each.
- :class:`ShardWorker` (``parquet``, ``webdataset``): each call is one whole shard; it reads its images
  itself (a reader thread ahead of the engine, nothing decoded goes through Ray's object store), writes
  the shard and then its manifest (:func:`~fe2e_deploy.cluster.shards.open_shard`).

Every call returns one row per image to the driver: its source, a status (``written``, ``completed``,
``failed`` with a reason, or :data:`ENGINE_ERROR` / :data:`WRITE_ERROR`, which stop the job) and a
reason. Errors are answered in rows, not raised: Ray would show the worker's traceback, not the reason.
"""

from __future__ import annotations

import io
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath

import numpy as np

from ..engines.options import EngineOptions
from ..errors import ImageError, UserError, describe
from ..files.images import READ_ERRORS, read_image, unreadable_image
from ..files.outputs import Extras, OutputOptions, output_paths, write_prediction
from .shards import OpenShard, Sample, ShardOptions, open_shard
from .stores import ImageSource, OutputStore

#: The status of the rows of a worker whose engine could not be opened: the job stops with its reason.
ENGINE_ERROR = "engine-error"
#: The status of the rows of a batch or shard whose outputs could not be written: the job stops with its reason.
WRITE_ERROR = "write-error"


def read_source(path: str, filesystem) -> np.ndarray:
    """One image file (local, or through ``filesystem``) as an 8-bit RGB array; raises READ_ERRORS."""
    if filesystem is None:
        return np.asarray(read_image(Path(path)))
    with filesystem.open_input_file(str(path)) as f:
        return np.asarray(read_image(io.BytesIO(f.readall())))


def decode_images(batch: dict[str, np.ndarray], source: ImageSource) -> dict[str, np.ndarray]:
    """A Ray task: read and decode a batch of images (``source`` column) into 8-bit RGB arrays.

    An unreadable file gets an ``error`` (and a 1x1 placeholder image, never predicted) instead of
    failing the task, so the job reports it and goes on.
    """
    filesystem = source.filesystem()
    images, errors = [], []
    for path in batch["source"]:
        try:
            images.append(read_source(path, filesystem))
            errors.append("")
        except READ_ERRORS as exc:
            images.append(np.zeros((1, 1, 3), np.uint8))
            errors.append(unreadable_image(exc, None if filesystem else Path(path)))
    out = dict(batch)
    out["image"] = _object_array(images)  # images of different sizes: one object per row
    out["error"] = np.array(errors, dtype=object)
    return out


def _object_array(items: list) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def write_error(exc: OSError) -> str:
    """One line for an error writing an output, naming the output (a failed rename names its temporary first)."""
    if getattr(exc, "filename2", None) and exc.errno is not None:
        exc = OSError(exc.errno, exc.strerror, exc.filename2)
    return describe(exc)


def _rows(sources: Iterable[str], status: list[str], reasons: list[str]) -> dict[str, np.ndarray]:
    """One row per image for the driver: its source, status (written/completed/failed/...) and reason."""
    return {
        "source": np.array(list(sources), dtype=object),
        "status": np.array(status, dtype=object),
        "reason": np.array(reasons, dtype=object),
    }


class EngineWorker:
    """A Ray actor's engine, opened once (``engine`` None: the embedded demo model, as ``infer`` opens it without
    model options); an engine that cannot be opened is answered on every call."""

    def __init__(self, engine: str | None, store: OutputStore, options: EngineOptions, threads: int | None) -> None:
        import torch  # noqa: PLC0415

        from ..web_demo import open_demo_engine  # noqa: PLC0415  (load_engine, or the demo model for None)

        if threads:
            torch.set_num_threads(threads)
        self.store = store
        self.engine_error = ""  # a missing or corrupt engine: every batch answers it, the driver stops the job
        try:
            self.engine = open_demo_engine(engine, options)
        except UserError as exc:  # not raised: Ray would show the worker's traceback, not the reason
            self.engine_error = str(exc) or type(exc).__name__


class PredictWorker(EngineWorker):
    """The ``files`` format: predicts batches of decoded images and writes each image's files."""

    def __init__(
        self,
        engine: str | None,
        store: OutputStore,
        outputs: OutputOptions,
        options: EngineOptions,
        threads: int | None = None,
    ) -> None:
        super().__init__(engine, store, options, threads)
        self.outputs = outputs

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image  # noqa: PLC0415

        count = len(batch["source"])
        if self.engine_error:
            return _rows(batch["source"], [ENGINE_ERROR] * count, [self.engine_error] * count)
        status, reasons = ["failed"] * count, list(batch["error"])
        ready, prepared = [], []
        for i in range(count):
            if reasons[i]:
                continue
            try:
                prepared.append(self.engine.prepare(Image.fromarray(batch["image"][i])))
                ready.append(i)
            except ImageError as exc:  # a size the engine lacks, too many pixels
                reasons[i] = str(exc)
        finishes = self.engine.predict_prepared(prepared, output_res=self.outputs.resolution) if prepared else []
        for i, finish in zip(ready, finishes, strict=True):
            try:
                prediction = finish()
            except ImageError as exc:  # maps with NaN or Inf: nothing written
                reasons[i] = str(exc)
                continue
            try:
                self._write(Path(batch["rel"][i]), str(batch["name"][i]), prediction, batch["image"][i])
            except OSError as exc:  # the system's or the store's: the driver stops the job with it
                return _rows(batch["source"], [WRITE_ERROR] * count, [write_error(exc)] * count)
            status[i] = "completed" if batch["completing"][i] else "written"
        return _rows(batch["source"], status, reasons)

    def _write(self, rel: Path, name: str, prediction, image: np.ndarray | None = None) -> None:
        """``infer``'s files of one image: in place in a local folder, else written aside and uploaded. ``image``
        colours a point cloud (intrinsics: the default field of view; batch has no --intrinsics/--fov)."""
        kinds = self.outputs.kinds
        extras = Extras(image=image)
        if self.store.local:
            write_prediction(output_paths(self.store.root, rel, name, kinds), prediction, self.outputs, extras)
            return
        with tempfile.TemporaryDirectory(prefix="fe2e-batch-") as folder:
            paths = output_paths(folder, rel, name, kinds)
            write_prediction(paths, prediction, self.outputs, extras)
            for path in paths.values():
                self.store.put_file(path, path.relative_to(folder).as_posix())


def read_ahead(read: Callable, items: list, ahead: int, threads: int = 1) -> Iterator:
    """``read(item)`` for each item, in order, computed by ``threads`` threads at most ``ahead`` items ahead."""
    with ThreadPoolExecutor(threads) as pool:
        pending: deque = deque()
        items = iter(items)
        for item in items:
            pending.append(pool.submit(read, item))
            if len(pending) >= ahead:
                break
        while pending:
            result = pending.popleft().result()
            for item in items:
                pending.append(pool.submit(read, item))
                break
            yield result


class ShardWorker(EngineWorker):
    """The shard formats: each call writes whole shards (one input row each), reading their images itself."""

    def __init__(
        self,
        engine: str | None,
        store: OutputStore,
        source: ImageSource,
        shards: ShardOptions,
        output_res: str,
        options: EngineOptions,
        threads: int | None = None,
    ) -> None:
        super().__init__(engine, store, options, threads)
        self.source, self.shards, self.output_res = source, shards, output_res
        self.batch_size = options.batch_size or 1

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = [
            self._shard(int(index), [str(s) for s in sources], [str(k) for k in keys])
            for index, sources, keys in zip(batch["shard"], batch["sources"], batch["keys"], strict=True)
        ]
        return {column: np.concatenate([part[column] for part in parts]) for column in ("source", "status", "reason")}

    def _prepare(self, path: str):
        """Read and pre-process one image (in the reader thread): its Prepared, or why it cannot be."""
        from PIL import Image  # noqa: PLC0415

        try:
            image = read_source(path, self._filesystem)
        except READ_ERRORS as exc:
            return unreadable_image(exc, None if self._filesystem else Path(path))
        try:
            return self.engine.prepare(Image.fromarray(image))
        except ImageError as exc:
            return str(exc)

    def _add(self, shard: OpenShard, finish: Callable, key: str, rel: str) -> str:
        """Finish one image's maps and add them to ``shard`` (in the writer thread); why not, or ""."""
        try:
            prediction = finish()
        except ImageError as exc:  # maps with NaN or Inf: not in the shard
            return str(exc)
        shard.add(Sample.of(key, rel, prediction, self.shards))
        return ""

    def _shard(self, index: int, sources: list[str], keys: list[str]) -> dict[str, np.ndarray]:
        """Write shard ``index``: a reader thread reads and prepares images ahead of the engine, a writer thread
        finishes and adds their maps behind it (in order), so on a GPU the engine runs back to back."""
        count = len(sources)
        if self.engine_error:
            return _rows(sources, [ENGINE_ERROR] * count, [self.engine_error] * count)
        self._filesystem = self.source.filesystem()
        root = PurePosixPath(self.source.root)
        status, reasons = ["failed"] * count, [""] * count
        ahead = read_ahead(self._prepare, sources, 2 * self.batch_size)
        behind: deque = deque()  # (image, its writer future), oldest first

        def settle(keep: int) -> None:
            while len(behind) > keep:
                i, future = behind.popleft()
                reasons[i] = future.result()  # raises the writer's OSError
                status[i] = "failed" if reasons[i] else "written"

        try:
            with open_shard(self.store, index, self.shards) as shard, ThreadPoolExecutor(1) as writer:
                for start in range(0, count, self.batch_size):
                    chunk = range(start, min(count, start + self.batch_size))
                    items = {i: next(ahead) for i in chunk}
                    ready = [i for i in chunk if not isinstance(items[i], str)]
                    for i in chunk:
                        if i not in ready:
                            reasons[i] = items[i]
                    finishes = self.engine.predict_prepared([items[i] for i in ready], output_res=self.output_res)
                    for i, finish in zip(ready, finishes, strict=True):
                        rel = PurePosixPath(sources[i]).relative_to(root).as_posix()
                        behind.append((i, writer.submit(self._add, shard, finish, keys[i], rel)))
                    settle(2 * self.batch_size)  # at most this many finished maps wait for the writer
                settle(0)
        except OSError as exc:  # writing the shard or its manifest: the driver stops the job with it
            return _rows(sources, [WRITE_ERROR] * count, [write_error(exc)] * count)
        finally:
            ahead.close()
        return _rows(sources, status, reasons)
