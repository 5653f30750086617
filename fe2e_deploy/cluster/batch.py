"""``batch``: ``infer`` over a Ray cluster, as a Ray Data job (files or shards out, local or in an object store).

Follow an image: the driver lists the images (:func:`list_images`: a local folder or any pyarrow
filesystem URI) and plans the work, then Ray runs it on an actor pool (one engine per worker, opened
once); each worker returns one status row per image to the driver, which shows progress and sums up
like ``infer``. Where the outputs go is an :class:`~fe2e_deploy.cluster.stores.OutputStore`: a local
(or shared) folder, or an object store (``s3://bucket/prefix``); every output appears complete or not
at all.

- ``files`` (default): ``infer``'s files and names. The driver plans with ``infer``'s
  :func:`~fe2e_deploy.infer.plan_outputs` (in an object store: one listing instead of a look at each
  file); images whose outputs all exist are skipped. Ray tasks read and decode the images
  (:func:`~fe2e_deploy.cluster.workers.decode_images`); :class:`~fe2e_deploy.cluster.workers.PredictWorker`
  predicts and writes each image's files.
- ``parquet`` / ``webdataset``: shards of ``--shard-size`` images with a manifest each
  (:mod:`~fe2e_deploy.cluster.shards`). The driver reads the manifests (not the outputs), skips the
  images they list and hands each remaining shard to one :class:`~fe2e_deploy.cluster.workers.ShardWorker`
  call, which reads its images (a reader thread ahead of the engine), predicts them and writes the shard,
  then its manifest.

Faults: Ray Data restarts a worker whose process dies and runs its batch (or shard) again on a live
worker (actor pools default to ``max_restarts=-1, max_task_retries=-1``); outputs are replaced
atomically, so work done twice still leaves one complete copy, and only the run that finished reports
it. An image that cannot be read or processed is reported failed, not fatal. A write error (disk full,
no permission, a file where a folder must go) stops the job in one line (exit code 2), as in ``infer``.

The maps are written by the workers, where they are computed (shipping full-size maps to the driver
would cost ~16 bytes per pixel through the object store): OUT must be a place every worker can write
(a shared file system or an object store on a multi-node cluster). A local cluster started here dies
with this process, even by ``kill -9`` (:mod:`~fe2e_deploy.cluster.fate`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from ..engines.options import EngineOptions
from ..errors import InvalidInput, MissingInput, NotAFolder, UserError
from ..files.images import IMAGE_SUFFIXES, find_images
from ..files.outputs import OutputOptions, output_names, output_paths
from .ray_setup import connect, import_ray, torch_threads
from .shards import ShardOptions, image_key, manifest_name, read_state
from .stores import ImageSource, OutputStore, is_uri
from .workers import ENGINE_ERROR, WRITE_ERROR, PredictWorker, ShardWorker, decode_images

#: The most images in one block of the input list (see :func:`input_blocks`).
IMAGES_PER_BLOCK = 64

#: The most shards in one block of the shard list: a worker that dies redoes its block (each shard whole).
SHARDS_PER_BLOCK = 4

#: CPUs of one decoding task: decoding is short; a small share keeps it from starving the workers.
DECODE_CPUS = 0.25


class OutputWriteError(UserError, OSError):
    """A worker could not write outputs (a full disk, no permission, a file in the way, the store refused)."""


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
    done_before: str = "all outputs exist"  # why images are skipped, in the summary
    notes: list[str] = field(default_factory=list)  # what the planning found and did (a damaged shard redone)

    @property
    def predicted(self) -> int:
        return len(self.written) + len(self.completed)

    def summary(self) -> str:
        completed = f"{len(self.completed)} completed (some outputs were missing), " if self.completed else ""
        job = self.total_seconds - self.ray_start_seconds
        rate = self.predicted / job if job > 0 else 0.0
        start = f", {self.ray_start_seconds:.1f} s of it starting Ray" if self.ray_start_seconds else ""
        return (
            f"{len(self.written)} image(s) written, {completed}{len(self.skipped)} skipped ({self.done_before}), "
            f"{len(self.failed)} failed; {self.total_seconds:.1f} s with {self.workers} worker(s){start}; "
            f"{rate:.2f} images/s after the start"
        )


#: Videos named in the message that refuses them (and how many more).
VIDEOS_NAMED = 5


def refuse_videos(images: str, videos: list[str]) -> None:
    """Videos under IMAGES (by suffix, as ``infer`` finds them) stop the job before any work, named: ``batch``
    runs images only, and skipping them would leave them out without a word."""
    if not videos:
        return
    named = ", ".join(videos[:VIDEOS_NAMED]) + (
        f" and {len(videos) - VIDEOS_NAMED} more" if videos[VIDEOS_NAMED:] else ""
    )
    raise InvalidInput(
        f"{images}: holds {len(videos)} video(s) ({named}); batch predicts images only: run videos through "
        "`fe2e-deploy infer`, and give batch a folder without them"
    )


def list_images(images: str | Path, store: OutputStore) -> tuple[ImageSource, list[Path]]:
    """The .jpg/.jpeg/.png files under ``images`` (a folder or a pyarrow URI), sorted, outside the outputs;
    refuses a folder with none, a folder that holds videos (:func:`refuse_videos`) and an output place that cannot
    be written, before anything starts."""
    from ..files.video import VIDEO_SUFFIXES, find_videos  # noqa: PLC0415

    text = str(images)
    if not is_uri(text):
        from ..infer import check_infer_paths  # noqa: PLC0415

        if Path(text).is_dir():
            inside = Path(store.root).resolve() if store.local else None
            videos = [p for p in find_videos(Path(text)) if inside is None or not p.resolve().is_relative_to(inside)]
            refuse_videos(text, [p.relative_to(text).as_posix() for p in videos])
        if store.local:
            return ImageSource(text), check_infer_paths(Path(text), Path(store.root))
        if Path(text).is_file():
            raise NotAFolder(f"{text}: is a file; give the folder that holds the images")
        found = find_images(text)
        if not found:
            raise MissingInput(f"{text}: no .jpg/.jpeg/.png images found")
        store.check_writable()
        return ImageSource(text), found
    from pyarrow import fs  # noqa: PLC0415

    try:
        filesystem, root = fs.FileSystem.from_uri(text)
        infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid is a ValueError, missing paths OSError
        raise MissingInput(f"{text}: cannot list images ({exc})") from None
    files = [PurePosixPath(info.path) for info in infos if info.type == fs.FileType.File]
    if isinstance(filesystem, fs.LocalFileSystem):  # file://: outputs written inside the input are not inputs
        if store.local:
            files = [p for p in files if not Path(p).resolve().is_relative_to(Path(store.root).resolve())]
    elif not store.local and store.uri.split("://")[0] == text.split("://")[0]:  # the same store: its outputs
        files = [p for p in files if not p.is_relative_to(store.root)]
    videos = sorted(p for p in files if p.suffix.lower() in VIDEO_SUFFIXES)
    refuse_videos(text, [p.relative_to(root).as_posix() for p in videos])
    found = sorted(p for p in files if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise MissingInput(f"{text}: no .jpg/.jpeg/.png images found")
    store.check_writable()
    return ImageSource(root, text), [Path(p) for p in found]


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


@dataclass
class FileJob:
    """An image of the ``files`` format: its outputs are named after ``name``; ``completing``: some exist."""

    path: Path
    name: str
    completing: bool


def plan_files(
    found: list[Path], root: Path, store: OutputStore, kinds: tuple[str, ...], overwrite: bool, report: BatchReport
) -> list[FileJob]:
    """The images to predict in the ``files`` format; skipped (all outputs exist) and clashing ones to ``report``.

    A local folder is planned by ``infer``'s :func:`~fe2e_deploy.infer.plan_outputs`; an object store from one
    listing of the outputs (a request per output would take hours at a million images).
    """
    from ..infer import InferReport, plan_outputs  # noqa: PLC0415

    if store.local:
        planned = InferReport()
        jobs = plan_outputs(found, root, Path(store.root), kinds, overwrite, planned)
        report.skipped += [(str(p), r) for p, r in planned.skipped]
        report.failed += [(str(p), r) for p, r in planned.failed]
        return [FileJob(job.path, job.name, job.completing) for job in jobs]
    existing = set() if overwrite else set(store.list())
    names = output_names(path.relative_to(root) for path in found)
    jobs = []
    for path in found:
        rel = path.relative_to(root)
        outputs = [p.as_posix() for p in output_paths("", rel, names[rel], kinds).values()]
        there = [o for o in outputs if o in existing]
        if len(there) == len(outputs):
            reason = f"all its outputs exist, e.g. {store.describe(there[0])} (pass --overwrite to replace)"
            report.skipped.append((str(path), reason))
        else:
            jobs.append(FileJob(path, names[rel], bool(there)))
    return jobs


@dataclass
class ShardJob:
    """One shard to write: its number and its images (paths as read, keys as stored)."""

    index: int
    sources: list[str]
    keys: list[str]


def plan_shards(
    found: list[Path], root: Path, store: OutputStore, shards: ShardOptions, overwrite: bool, report: BatchReport
) -> list[ShardJob]:
    """The shards to write: the images no finished shard holds (all with ``overwrite``), ``shards.shard_size`` per
    shard.

    Shard files without a manifest (a killed run's) are removed; so are a missing or damaged shard's manifest and
    file (its images are predicted again, said in ``report.notes``); ``overwrite`` removes every shard and manifest
    first. Only names from the folder's listings are deleted (:func:`~fe2e_deploy.cluster.shards.read_state`),
    manifests before their shards. Images whose keys clash fail (see :func:`~fe2e_deploy.cluster.shards.image_key`).
    """
    state = read_state(store, shards)
    for manifest, why in state.damaged:
        if not overwrite:
            report.notes.append(
                f"{store.describe(manifest.shard)}: {why}; its {len(manifest.keys)} image(s) are predicted again"
            )
    damaged = {m.shard for m, _ in state.damaged}
    redo = {manifest_name(shard) for shard in damaged}
    for name in state.manifest_files:  # first: a shard without its manifest is an orphan, removed by the next run
        if overwrite or name in redo:
            store.delete(name)
    for name in state.shards:
        if overwrite or name in damaged or name in state.orphans:
            store.delete(name)
    done = {} if overwrite else state.done()
    names = output_names(path.relative_to(root) for path in found)
    owners: dict[str, Path] = {}
    pending: list[tuple[str, str]] = []
    for path in found:
        rel = path.relative_to(root)
        key = image_key(PurePosixPath(rel.as_posix()), names[rel])
        if key in owners:
            report.failed.append((str(path), f"its key {key!r} is that of {owners[key]}"))
            continue
        owners[key] = path
        if key in done:
            report.skipped.append((str(path), f"in {store.describe(done[key])} (pass --overwrite to predict again)"))
        else:
            pending.append((str(path), key))
    size = shards.shard_size
    return [
        ShardJob(state.next_index + n, [s for s, _ in part], [k for _, k in part])
        for n, part in enumerate(pending[i : i + size] for i in range(0, len(pending), size))
    ]


def run_batch(
    engine: str | Path | None,
    images: str | Path,
    output_dir: str | Path,
    *,
    address: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    cpus_per_worker: float | None = None,
    options: EngineOptions | None = None,
    outputs: OutputOptions | None = None,
    shards: ShardOptions | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> BatchReport:
    """Predict every image under ``images`` on a Ray cluster and write the maps to ``output_dir``.

    ``output_dir``: a local folder or a pyarrow filesystem URI. ``shards`` None: ``infer``'s files
    (``outputs`` says which); else shards of that format. ``address``: an existing cluster ("auto" or
    ``HOST:PORT``); None starts a local one for the job (it dies with this process). ``workers`` actors
    each open ``engine`` once (None: the embedded demo model at its training size, as ``infer`` without model
    options: :func:`~fe2e_deploy.web_demo.open_demo_engine`), on ``gpus_per_worker`` GPUs (0: CPU) and
    ``cpus_per_worker`` CPUs (default
    :func:`default_worker_cpus`); ``options`` open the engine in each worker (their device is the
    worker's: cuda with GPUs, else cpu), ``options.batch_size`` images per engine call. Finished images
    are skipped unless ``overwrite``.
    """
    from tqdm import tqdm  # noqa: PLC0415

    from ..engines import engine_kind  # noqa: PLC0415

    options = options or EngineOptions()
    batch_size = options.batch_size or 1
    if workers < 1:
        raise InvalidInput(f"--workers must be >= 1 (got {workers})")
    if gpus_per_worker < 0 or (cpus_per_worker is not None and cpus_per_worker <= 0):
        raise InvalidInput("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")
    outputs = outputs or OutputOptions()
    if engine is not None:  # a missing or unsupported engine fails before Ray starts (a corrupt one in the workers)
        engine_kind(engine)
    start = time.perf_counter()
    store = OutputStore.parse(output_dir)
    source, found = list_images(images, store)
    report = BatchReport(workers=workers)
    root = Path(source.root)
    if shards is None:
        jobs: list = plan_files(found, root, store, outputs.kinds, overwrite, report)
        count = len(jobs)
    else:
        report.done_before = "in finished shards"
        jobs = plan_shards(found, root, store, shards, overwrite, report)
        count = sum(len(job.sources) for job in jobs)
    if jobs:
        ray = import_ray()
        t0 = time.perf_counter()
        from .fate import guard_if_starting  # noqa: PLC0415

        guard = guard_if_starting(address)
        try:
            started = connect(address)
            report.ray_start_seconds = time.perf_counter() - t0 if started else 0.0
            try:
                cpus = cpus_per_worker or default_worker_cpus(
                    ray.cluster_resources().get("CPU", 1.0), workers, gpus_per_worker
                )
                worker = {  # the workers' arguments
                    "engine": None if engine is None else str(Path(engine).absolute()),
                    "store": store,
                    "options": replace(options, device="cuda" if gpus_per_worker > 0 else "cpu"),
                    "threads": torch_threads(cpus, gpus_per_worker),
                }
                pool = {"workers": workers, "gpus": gpus_per_worker, "cpus": cpus}
                if shards is None:
                    dataset = image_dataset(ray, jobs, source, {**worker, "outputs": outputs}, batch_size, **pool)
                else:
                    settings = {"source": source, "shards": shards, "output_res": outputs.resolution}
                    dataset = shard_dataset(ray, jobs, {**worker, **settings}, **pool)
                collect(dataset, report, tqdm(total=count, disable=not progress, desc="batch", unit="img"))
            finally:
                if started:
                    ray.shutdown()
        finally:
            if guard is not None:
                guard.stop()
    order = {str(path): i for i, path in enumerate(found)}
    for items in (report.written, report.completed):
        items.sort(key=order.__getitem__)
    report.failed.sort(key=lambda item: order.get(item[0], -1))
    report.total_seconds = time.perf_counter() - start
    return report


def image_dataset(ray, jobs: list[FileJob], source: ImageSource, worker: dict, batch_size: int, **pool):
    """The ``files`` pipeline: the planned images -> decoding tasks -> a pool of PredictWorkers (built with
    ``worker``; ``pool``: their number, GPUs and CPUs each); one status row per image comes out."""
    from ray.data import DataContext  # noqa: PLC0415

    DataContext.get_current().enable_progress_bars = False  # ours counts images, theirs blocks
    root = Path(source.root)
    rows = [
        {"source": str(j.path), "rel": str(j.path.relative_to(root)), "name": j.name, "completing": j.completing}
        for j in jobs
    ]
    return (
        ray.data.from_items(rows, override_num_blocks=input_blocks(len(rows), pool["workers"]))
        .map_batches(decode_images, fn_kwargs={"source": source}, batch_size=batch_size, num_cpus=DECODE_CPUS)
        .map_batches(PredictWorker, fn_constructor_kwargs=worker, batch_size=batch_size, **_actor_pool(**pool))
    )


def shard_dataset(ray, jobs: list[ShardJob], worker: dict, **pool):
    """The shard pipeline: one row per shard -> a pool of ShardWorkers, one shard per call; one status row
    per image comes out."""
    from ray.data import DataContext  # noqa: PLC0415

    DataContext.get_current().enable_progress_bars = False
    rows = [{"shard": job.index, "sources": job.sources, "keys": job.keys} for job in jobs]
    blocks = max(1, min(len(rows), max(4 * pool["workers"], math.ceil(len(rows) / SHARDS_PER_BLOCK))))
    return ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        ShardWorker, fn_constructor_kwargs=worker, batch_size=1, **_actor_pool(**pool)
    )


def _actor_pool(workers: int, gpus: float, cpus: float) -> dict:
    from ray.data import ActorPoolStrategy  # noqa: PLC0415

    return {"compute": ActorPoolStrategy(size=workers), "num_cpus": cpus, "num_gpus": gpus}


def collect(dataset, report: BatchReport, bar) -> None:
    """Run the pipeline, sorting its rows into ``report`` as they come; an engine a worker cannot open, or
    outputs it cannot write, stop it."""
    with bar:
        for row in dataset.iter_rows():
            status = row["status"]
            if status == ENGINE_ERROR:
                raise InvalidInput(f"a worker could not open the engine: {row['reason']}")
            if status == WRITE_ERROR:
                raise OutputWriteError(f"a worker could not write the outputs: {row['reason']}")
            if status == "written":
                report.written.append(row["source"])
            elif status == "completed":
                report.completed.append(row["source"])
            else:
                report.failed.append((row["source"], row["reason"]))
                bar.write(f"warning: skipping {row['source']}: {row['reason']}")
            bar.update()
