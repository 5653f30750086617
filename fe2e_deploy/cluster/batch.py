"""``batch``: ``infer`` over a Ray cluster, as a Ray Data job (files in, the same output files out).

Follow an image: the driver lists the images (:func:`list_images`: a local folder or any pyarrow
filesystem URI) and plans their outputs with ``infer``'s own :func:`~fe2e_deploy.infer.plan_outputs`
(the same names; images whose outputs all exist are skipped: the job resumes). Ray tasks read and
decode the files (:func:`decode_images`); an actor pool of :class:`PredictWorker` (one engine per
worker, opened once) pre-processes, predicts and writes each image's files with ``infer``'s
:func:`~fe2e_deploy.files.outputs.write_prediction` (atomically), and returns one status row per
image to the driver, which shows progress and sums up like ``infer``.

Faults: Ray Data restarts a worker whose process dies and runs its batch again on a live worker
(actor pools default to ``max_restarts=-1, max_task_retries=-1``); files are replaced atomically, so a
batch that ran twice still leaves one complete set of files per image, and only the run that finished
reports it. An image that cannot be read or processed is reported failed, not fatal. A write error
(disk full) stops the job, as in ``infer``.

The maps are written by the workers, where they are computed (shipping full-size maps to the driver
would cost ~16 bytes per pixel through the object store): OUT must be a folder every worker can
write, e.g. a shared file system on a multi-node cluster.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np

from ..engines.options import EngineOptions
from ..errors import ImageError, InvalidInput, MissingInput, UserError
from ..files.images import IMAGE_SUFFIXES, READ_ERRORS, read_image, unreadable_image
from ..files.outputs import OutputOptions, output_paths, write_prediction
from .ray_setup import connect, import_ray, torch_threads

#: The status of the rows of a worker whose engine could not be opened: the job stops with its reason.
ENGINE_ERROR = "engine-error"

#: The most images in one block of the input list (see :func:`input_blocks`).
IMAGES_PER_BLOCK = 64

#: CPUs of one decoding task: decoding is short; a small share keeps it from starving the workers.
DECODE_CPUS = 0.25


@dataclass
class BatchReport:
    """What the job did with each image (an image is in exactly one list), as ``infer``'s report."""

    written: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)  # some outputs existed: all rewritten
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    workers: int = 0
    total_seconds: float = 0.0
    ray_start_seconds: float = 0.0  # starting a local Ray (0 when joining a running cluster)

    @property
    def predicted(self) -> int:
        return len(self.written) + len(self.completed)

    def summary(self) -> str:
        completed = f"{len(self.completed)} completed (some outputs were missing), " if self.completed else ""
        job = self.total_seconds - self.ray_start_seconds
        rate = self.predicted / job if job > 0 else 0.0
        start = f", {self.ray_start_seconds:.1f} s of it starting Ray" if self.ray_start_seconds else ""
        return (
            f"{len(self.written)} image(s) written, {completed}{len(self.skipped)} skipped (all outputs exist), "
            f"{len(self.failed)} failed; {self.total_seconds:.1f} s with {self.workers} worker(s){start}; "
            f"{rate:.2f} images/s after the start"
        )


@dataclass(frozen=True)
class ImageSource:
    """Where the images are: a local folder, or a folder behind a pyarrow filesystem URI (``s3://...``)."""

    root: str  # the folder (a local path, or the filesystem's path for a URI)
    uri: str | None = None  # the URI given, when not local

    def filesystem(self):
        """The pyarrow filesystem that reads ``root`` (None: a local folder, read with plain file calls)."""
        if self.uri is None:
            return None
        from pyarrow import fs  # noqa: PLC0415

        return fs.FileSystem.from_uri(self.uri)[0]


def is_uri(text: str) -> bool:
    return "://" in text


def list_images(images: str | Path, output_dir: Path) -> tuple[ImageSource, list[Path]]:
    """The .jpg/.jpeg/.png files under ``images`` (a folder or a pyarrow URI), sorted, outside ``output_dir``."""
    text = str(images)
    if not is_uri(text):
        from ..infer import check_infer_paths  # noqa: PLC0415

        return ImageSource(text), check_infer_paths(Path(text), output_dir)
    from pyarrow import fs  # noqa: PLC0415

    try:
        filesystem, root = fs.FileSystem.from_uri(text)
        infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid is a ValueError, missing paths OSError
        raise MissingInput(f"{text}: cannot list images ({exc})") from None
    found = sorted(
        PurePosixPath(info.path)
        for info in infos
        if info.type == fs.FileType.File and PurePosixPath(info.path).suffix.lower() in IMAGE_SUFFIXES
    )
    if isinstance(filesystem, fs.LocalFileSystem):  # file://: outputs written inside the input are not inputs
        found = [p for p in found if not Path(p).resolve().is_relative_to(output_dir.resolve())]
    if not found:
        raise MissingInput(f"{text}: no .jpg/.jpeg/.png images found")
    return ImageSource(root, text), [Path(p) for p in found]


def decode_images(batch: dict[str, np.ndarray], source: ImageSource) -> dict[str, np.ndarray]:
    """A Ray task: read and decode a batch of images (``source`` column) into 8-bit RGB arrays.

    An unreadable file gets an ``error`` (and a 1x1 placeholder image, never predicted) instead of
    failing the task, so the job reports it and goes on.
    """
    filesystem = source.filesystem()
    images, errors = [], []
    for path in batch["source"]:
        try:
            if filesystem is None:
                image = read_image(Path(path))
            else:
                with filesystem.open_input_file(str(path)) as f:
                    image = read_image(io.BytesIO(f.readall()))
            images.append(np.asarray(image))
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


class PredictWorker:
    """One Ray actor: opens the engine once, then predicts and writes batches of decoded images."""

    def __init__(
        self,
        engine: str,
        output_dir: str,
        outputs: OutputOptions,
        options: EngineOptions,
        threads: int | None = None,
    ) -> None:
        import torch  # noqa: PLC0415

        from ..engines import load_engine  # noqa: PLC0415

        if threads:
            torch.set_num_threads(threads)
        self.output_dir, self.outputs = Path(output_dir), outputs
        self.engine_error = ""  # a missing or corrupt engine: every batch answers it, the driver stops the job
        try:
            self.engine = load_engine(engine, options)
        except UserError as exc:  # not raised: Ray would show the worker's traceback, not the reason
            self.engine_error = str(exc) or type(exc).__name__

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from PIL import Image  # noqa: PLC0415

        count = len(batch["source"])
        if self.engine_error:
            return self._rows(batch, [ENGINE_ERROR] * count, [self.engine_error] * count)
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
            paths = output_paths(self.output_dir, Path(batch["rel"][i]), str(batch["name"][i]), self.outputs.kinds)
            write_prediction(paths, prediction, self.outputs)  # atomically, folders made as needed
            status[i] = "completed" if batch["completing"][i] else "written"
        return self._rows(batch, status, reasons)

    @staticmethod
    def _rows(batch: dict[str, np.ndarray], status: list[str], reasons: list[str]) -> dict[str, np.ndarray]:
        """One row per image for the driver: its source, status (written/completed/failed) and reason."""
        return {
            "source": batch["source"],
            "status": np.array(status, dtype=object),
            "reason": np.array(reasons, dtype=object),
        }


def input_blocks(images: int, workers: int) -> int:
    """Blocks the image list is cut into: at most ``IMAGES_PER_BLOCK`` images each (a decoding task, and what a
    failure reruns, stays short), and at least 4 per worker (so decoding runs in parallel), at most one per image."""
    return max(1, min(images, max(4 * workers, math.ceil(images / IMAGES_PER_BLOCK))))


def default_worker_cpus(total_cpus: float, workers: int, gpus_per_worker: float) -> float:
    """CPUs each worker asks for: 1 beside a GPU; on CPUs, three quarters of the cluster shared by the workers
    (the rest decodes). Never all of them: a pool that takes every CPU starves the decoding tasks (a deadlock)."""
    if gpus_per_worker > 0:
        return 1.0
    return max(0.25, round(0.75 * total_cpus / workers * 4) / 4)


def run_batch(
    engine: str | Path,
    images: str | Path,
    output_dir: str | Path,
    *,
    address: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    options: EngineOptions | None = None,
    outputs: OutputOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Predict every image under ``images`` on a Ray cluster and write ``infer``'s files to ``output_dir``.

    ``address``: an existing cluster ("auto" or ``HOST:PORT``); None starts a local one for the job.
    ``workers`` actors each open ``engine`` once, on ``gpus_per_worker`` GPUs (0: CPU) and
    ``cpus_per_worker`` CPUs (default :func:`default_worker_cpus`); ``options`` open the engine in each
    worker (their device is the worker's: cuda with GPUs, else cpu), ``options.batch_size`` images per engine
    call. Images whose outputs all exist are skipped unless ``overwrite``.
    """
    from tqdm import tqdm  # noqa: PLC0415

    from ..engines import engine_kind  # noqa: PLC0415
    from ..infer import InferReport, plan_outputs  # noqa: PLC0415

    options = options or EngineOptions()
    batch_size = options.batch_size or 1
    if workers < 1:
        raise InvalidInput(f"--workers must be >= 1 (got {workers})")
    if gpus_per_worker < 0 or (cpus_per_worker is not None and cpus_per_worker <= 0):
        raise InvalidInput("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")
    outputs = outputs or OutputOptions()
    engine_kind(engine)  # a missing or unsupported engine fails before Ray starts (a corrupt one in the workers)
    output_dir = Path(output_dir).absolute()
    start = time.perf_counter()
    source, found = list_images(images, output_dir)
    planned = InferReport()
    jobs = plan_outputs(found, Path(source.root), output_dir, outputs.kinds, overwrite, planned)
    report = BatchReport(skipped=[(str(p), r) for p, r in planned.skipped], workers=workers)
    report.failed = [(str(p), r) for p, r in planned.failed]
    if jobs:
        ray = import_ray()
        t0 = time.perf_counter()
        started = connect(address)
        report.ray_start_seconds = time.perf_counter() - t0 if started else 0.0
        try:
            cpus = cpus_per_worker or default_worker_cpus(
                ray.cluster_resources().get("CPU", 1.0), workers, gpus_per_worker
            )
            worker = {  # PredictWorker's arguments
                "engine": str(Path(engine).absolute()),
                "output_dir": str(output_dir),
                "outputs": outputs,
                "options": replace(options, device="cuda" if gpus_per_worker > 0 else "cpu"),
                "threads": torch_threads(cpus, gpus_per_worker),
            }
            dataset = image_dataset(ray, jobs, source, worker, workers, gpus_per_worker, cpus, batch_size)
            collect(dataset, report, tqdm(total=len(jobs), disable=not progress, desc="batch", unit="img"))
        finally:
            if started:
                ray.shutdown()
    order = {str(path): i for i, path in enumerate(found)}
    for items in (report.written, report.completed):
        items.sort(key=order.__getitem__)
    report.failed.sort(key=lambda item: order.get(item[0], -1))
    report.total_seconds = time.perf_counter() - start
    return report


def image_dataset(
    ray, jobs, source: ImageSource, worker: dict, workers: int, gpus: float, cpus: float, batch_size: int
):
    """The Ray Data pipeline: the planned images -> decoding tasks -> a pool of ``workers`` PredictWorkers
    (built with ``worker``), each on ``gpus`` GPUs and ``cpus`` CPUs; one status row per image comes out."""
    from ray.data import ActorPoolStrategy, DataContext  # noqa: PLC0415

    DataContext.get_current().enable_progress_bars = False  # ours counts images, theirs blocks
    root = Path(source.root)
    rows = [
        {
            "source": str(job.path),
            "rel": str(job.path.relative_to(root)),
            "name": job.name,
            "completing": job.completing,
        }
        for job in jobs
    ]
    return (
        ray.data.from_items(rows, override_num_blocks=input_blocks(len(rows), workers))
        .map_batches(decode_images, fn_kwargs={"source": source}, batch_size=batch_size, num_cpus=DECODE_CPUS)
        .map_batches(
            PredictWorker,
            fn_constructor_kwargs=worker,
            compute=ActorPoolStrategy(size=workers),
            batch_size=batch_size,
            num_cpus=cpus,
            num_gpus=gpus,
        )
    )


def collect(dataset, report: BatchReport, bar) -> None:
    """Run the pipeline, sorting its rows into ``report`` as they come; an engine a worker cannot open stops it."""
    with bar:
        for row in dataset.iter_rows():
            status = row["status"]
            if status == ENGINE_ERROR:
                raise InvalidInput(f"a worker could not open the engine: {row['reason']}")
            if status == "written":
                report.written.append(row["source"])
            elif status == "completed":
                report.completed.append(row["source"])
            else:
                report.failed.append((row["source"], row["reason"]))
                bar.write(f"warning: skipping {row['source']}: {row['reason']}")
            bar.update()
