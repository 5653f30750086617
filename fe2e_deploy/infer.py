"""``infer``: run an engine over a folder of images and write depth and normal maps, as a pipeline.

Follow an image: :func:`plan_outputs` decides what to do with it (its output files from
:func:`~fe2e_deploy.files.outputs.output_paths`, skip when they all exist); a reader thread opens it
(:func:`~fe2e_deploy.files.images.read_image`) and pre-processes it (``engine.prepare``) ahead of
the engine; the main thread batches images into ``engine.predict_prepared`` (the engine template of
:mod:`fe2e_deploy.engines.base`); a writer thread finishes the maps (upsampling to the image's size
on CPU engines; GPU engines do it on the device) into a :class:`~fe2e_deploy.processing.Prediction`
and writes the files (:func:`~fe2e_deploy.files.outputs.write_prediction`), each atomically.

Decoding, PNG/zlib encoding and file writes release the GIL, so on a CPU with spare cores the host
work overlaps the engine, and on a GPU the engine runs back to back. Memory stays bounded: at most
``prefetch`` decoded images wait for the engine and ``2 x writers`` predictions wait for a writer.
The files are the same as those written one image after another (a test compares them byte for byte).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .engines import Engine
from .engines.base import Finish, Prepared
from .errors import ImageError, InvalidInput, MissingInput, NotAFolder
from .files.atomic import check_writable_dir
from .files.images import READ_ERRORS, find_images, read_image, unreadable_image
from .files.outputs import Extras, OutputOptions, OutputOwners, output_names, output_paths, write_prediction
from .files.pointcloud import exif_focal_35mm
from .metric_align import align_depth_map, find_align_files
from .processing import Prediction
from .video_infer import VideoOptions, estimate_frames, plan_videos, run_videos


@dataclass
class InferReport:
    """What ``infer`` did with each image (an image is in exactly one list), and where the time went."""

    written: list[Path] = field(default_factory=list)  # none of its outputs existed, or --overwrite
    completed: list[Path] = field(default_factory=list)  # some of its outputs were missing: all rewritten
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # all its outputs exist
    failed: list[tuple[Path, str]] = field(default_factory=list)
    videos: int = 0  # videos among written/completed
    frames: int = 0  # their frames that went through the engine
    clip_frames: dict[Path, int] = field(default_factory=dict)  # each of those videos' frames
    predict_seconds: float = 0.0  # in engine.predict_batch (main thread)
    read_seconds: float = 0.0  # decoding, summed over reader threads
    write_seconds: float = 0.0  # encoding and writing, summed over writer threads
    total_seconds: float = 0.0

    @property
    def predicted(self) -> int:
        """Images and video frames that went through the engine (written or completed)."""
        return len(self.written) + len(self.completed) - self.videos + self.frames

    @property
    def seconds_per_image(self) -> float:
        return self.total_seconds / max(1, self.predicted)

    @property
    def host_seconds_per_image(self) -> float:
        """Decoding + encoding + writing per image (CPU seconds, done beside the engine)."""
        return (self.read_seconds + self.write_seconds) / max(1, self.predicted)

    def summary(self) -> str:
        """One line: what was written and completed (images; clips and their frames), skipped, failed; the times."""
        from .files.video import is_video  # noqa: PLC0415

        inputs = [*self.written, *self.completed, *(p for p, _ in self.skipped), *(p for p, _ in self.failed)]
        clips = bool(self.clip_frames) or any(is_video(p) for p in inputs)
        images = not clips or any(not is_video(p) for p in inputs)
        done = self._count(self.completed, images, clips) if clips else len(self.completed)
        completed = f"{done} completed (some outputs were missing), "
        unit = "image or frame" if clips and images else "frame" if clips else "image"
        return (
            f"{self._count(self.written, images, clips)} written, {completed if self.completed else ''}"
            f"{len(self.skipped)} skipped (all outputs exist), {len(self.failed)} failed; "
            f"{self.seconds_per_image:.3f} s per {unit} end to end "
            f"({self.predict_seconds / max(1, self.predicted):.3f} s in the engine; "
            f"host side {self.host_seconds_per_image:.3f} s per {unit}, overlapped)"
        )

    def _count(self, paths: list[Path], images: bool, clips: bool) -> str:
        """``2 image(s)``, ``1 clip (3 frames)``, ``2 image(s) and 3 clips (40 frames)``: of the kinds the run has,
        those with any (all of them when there are none)."""
        videos = [p for p in paths if p in self.clip_frames]
        parts = [(len(paths) - len(videos), f"{len(paths) - len(videos)} image(s)")] if images else []
        if clips:
            frames = sum(self.clip_frames[p] for p in videos)
            count = f"{len(videos)} clip{'' if len(videos) == 1 else 's'}"
            parts.append((len(videos), f"{count} ({frames} frame{'' if frames == 1 else 's'})" if videos else count))
        return " and ".join(text for n, text in ([p for p in parts if p[0]] or parts))


@dataclass
class ImageJob:
    path: Path
    name: str  # what its output files are named after (:func:`~fe2e_deploy.files.outputs.output_names`)
    paths: dict[str, Path]
    completing: bool  # some outputs existed: this image completes them
    align_file: Path | None = None  # --align-to: its known depths
    image: object = None  # kept by the reader for the point cloud's colours (then dropped)
    image_size: tuple[int, int] | None = None
    focal_35mm: float | None = None  # EXIF, for the point cloud's intrinsics


def check_infer_paths(input_dir: str | Path, output_dir: str | Path) -> list[Path]:
    """The images under ``input_dir`` (outside ``output_dir``); refuses a file as the folder, a folder with no
    image, and an output folder that cannot be written, before any model is loaded."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if input_dir.is_file():
        raise NotAFolder(f"{input_dir}: is a file; give the folder that holds the images")
    out_resolved = output_dir.resolve()
    images = [p for p in find_images(input_dir) if not p.resolve().is_relative_to(out_resolved)]
    if not images:
        raise MissingInput(f"{input_dir}: no .jpg/.jpeg/.png images found")
    check_writable_dir(output_dir)
    return images


def check_infer_inputs(input_path: str | Path, output_dir: str | Path) -> tuple[Path, list[Path], list[Path]]:
    """(root, images, videos) of ``infer``: a folder's images and videos (outside ``output_dir``), or one video
    file (root: its folder). Refuses an empty folder and an output folder that cannot be written, before any model
    is loaded."""
    from .files.video import find_videos, is_video  # noqa: PLC0415

    input_path, output_dir = Path(input_path), Path(output_dir)
    if input_path.is_file():
        if not is_video(input_path):
            raise NotAFolder(f"{input_path}: is a file; give the folder that holds the images, or a video")
        check_writable_dir(output_dir)
        return input_path.parent, [], [input_path]
    out_resolved = output_dir.resolve()
    images = [p for p in find_images(input_path) if not p.resolve().is_relative_to(out_resolved)]
    videos = [p for p in find_videos(input_path) if not p.resolve().is_relative_to(out_resolved)]
    if not images and not videos:
        raise MissingInput(f"{input_path}: no .jpg/.jpeg/.png images or videos found")
    check_writable_dir(output_dir)
    return input_path, images, videos


def check_align_to(align_to: str | Path | None, videos: list[Path], root: Path | None = None) -> None:
    """``--align-to`` makes images' depth metric; a clip's stays relative, so with a clip in the input the run is
    refused (metric and relative maps never mixed in one output folder). ``root``: what the clips are named from."""
    if align_to is not None and videos:
        rel = [v.relative_to(root) if root is not None and v.is_relative_to(root) else v for v in videos[:3]]
        names = ", ".join(p.as_posix() for p in rel) + (", ..." if len(videos) > 3 else "")
        raise InvalidInput(
            f"--align-to: videos get no metric depth ({names}); run them without --align-to, into another output "
            "folder (metric and relative depth never share one)"
        )


def plan_outputs(
    images: list[Path],
    input_dir: Path,
    output_dir: Path,
    kinds: tuple[str, ...],
    overwrite: bool,
    report: InferReport,
    owners: OutputOwners | None = None,
) -> list[ImageJob]:
    """The images to predict, in order; skipped (all outputs exist) and clashing images go to ``report``.

    An image whose outputs (of ``kinds``) all exist is skipped unless ``overwrite``; one with only some
    of them is predicted again and all rewritten. An image whose outputs would be another's fails.
    ``owners`` records whose each output is (the clips are planned against it next).
    """
    names = output_names(path.relative_to(input_dir) for path in images)
    owners = OutputOwners() if owners is None else owners
    jobs = []
    for path in images:
        rel = path.relative_to(input_dir)
        paths = output_paths(output_dir, rel, names[rel], kinds)
        existing = [p for p in paths.values() if p.exists()]
        taken = owners.clash(paths.values())
        if taken is not None:
            first = next(iter(paths.values())).name
            report.failed.append((path, f"its outputs ({first}, ...) would be those of {taken[1]}"))
            continue
        owners.add(paths.values(), path)
        if len(existing) == len(paths) and not overwrite:
            report.skipped.append((path, f"all its outputs exist, e.g. {existing[0]} (pass --overwrite to replace)"))
        else:
            jobs.append(ImageJob(path, names[rel], paths, bool(existing) and not overwrite))
    return jobs


def output_extras(job: ImageJob, prediction: Prediction) -> Extras:
    """What the point cloud and ``--align-to`` need beside the maps (:class:`~fe2e_deploy.files.outputs.Extras`)."""
    metric = alignment = None
    if job.align_file is not None:
        metric, fit = align_depth_map(prediction.depth, job.align_file, job.image_size)
        alignment = fit.document()
    return Extras(job.image, job.focal_35mm, metric, alignment)


@contextlib.contextmanager
def cpu_share(engine: Engine, host_threads: int) -> Iterator[None]:
    """A CPU engine and the reader/writer threads share the cores: torch's intra-op threads are lowered to
    what the host threads leave (at least 1) while ``infer`` runs, then restored. Oversubscribed
    OpenMP threads spin against the writers (measured: the tiny engine 20 -> 60 ms per image)."""
    import torch  # noqa: PLC0415

    if engine.device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, (os.cpu_count() or 1) - host_threads + 1)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_threads() -> tuple[int, int]:
    """(readers, writers): one reader (JPEG decoding is fast), one writer per core (at most 4): encoding is
    most of the host work, and the engine's own threads are lowered meanwhile (:func:`cpu_share`)."""
    cores = os.cpu_count() or 1
    return 1, max(1, min(4, cores))


def run_infer(
    engine: Engine,
    input_dir: str | Path,
    output_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    outputs: OutputOptions | None = None,
    readers: int | None = None,
    writers: int | None = None,
    prefetch: int | None = None,
    images: list[Path] | None = None,
    videos: list[Path] | None = None,
    video: VideoOptions | None = None,
    align_to: str | Path | None = None,
) -> InferReport:
    """Predict every image under ``input_dir`` and write its maps; an image that fails is reported, not fatal.

    ``engine.batch_size`` images go to the engine together (its options); ``outputs`` chooses what is written (default:
    all five maps at each input's resolution); ``readers``/``writers`` threads (default
    :func:`default_threads`; 0 writers = write in the main thread); ``prefetch`` decoded images wait at
    most (default ``2 * batch_size + readers``). ``images``: what :func:`check_infer_paths` returned, when the
    caller already checked the folders (else they are checked here). A write error (disk full...) stops the
    run and is raised. ``videos`` (:func:`check_infer_inputs`; found here when ``images`` is None) run after the
    images, frame by frame (:mod:`fe2e_deploy.video_infer`, options ``video``); a video that fails is reported.
    """
    batch_size = engine.batch_size
    outputs = outputs or OutputOptions()
    default_readers, default_writers = default_threads()
    readers = default_readers if readers is None else readers
    writers = default_writers if writers is None else writers
    if readers < 1 or writers < 0:
        raise InvalidInput(f"readers must be >= 1 and writers >= 0 (got {readers}, {writers})")
    prefetch = prefetch or 2 * batch_size + readers
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if images is None:
        input_dir, images, videos = check_infer_inputs(input_dir, output_dir)
    elif input_dir.is_file():  # a single video
        input_dir = input_dir.parent
    videos, video = videos or [], video or VideoOptions()
    check_align_to(align_to, videos, input_dir)
    report = InferReport()
    start = time.perf_counter()
    if align_to is not None and "alignment" not in outputs.kinds:  # the fit of each image goes beside its maps
        outputs = dataclasses.replace(outputs, kinds=(*outputs.kinds, "alignment"))
    owners = OutputOwners()  # images, then clips: an output that would be another input's fails its input
    jobs = plan_outputs(images, input_dir, output_dir, outputs.kinds, overwrite, report, owners)
    if align_to is not None:  # a missing file refuses the run (the CLI checks before loading the model)
        files = find_align_files(align_to, [job.path.relative_to(input_dir) for job in jobs])
        for job in jobs:
            job.align_file = files[job.path.relative_to(input_dir)]
    video_jobs = plan_videos(videos, input_dir, output_dir, video, overwrite, report, owners)
    frames = sum(estimate_frames(job, video) for job in video_jobs)
    unit = "frame" if videos else "img"
    bar = tqdm(total=len(images) + frames, desc=f"infer ({engine.name})", unit=unit, disable=not progress)
    bar.update(len(images) - len(jobs))
    for path, reason in report.failed:
        tqdm.write(f"warning: skipping {path}: {reason}")
    lock = threading.Lock()  # report lists and timers are shared with the writer threads

    def read(job: ImageJob) -> Prepared:
        """Decode and pre-process one image (a size the engine lacks, or too large, fails it alone)."""
        t0 = time.perf_counter()
        try:
            try:
                image = read_image(job.path)
            except READ_ERRORS as exc:  # the report names the file: the reason does not repeat it
                raise ImageError(unreadable_image(exc, job.path)) from None
            job.image_size = image.size
            if "pointcloud" in outputs.kinds:
                job.image, job.focal_35mm = image, exif_focal_35mm(job.path)
            return engine.prepare(image)
        finally:
            with lock:
                report.read_seconds += time.perf_counter() - t0

    def write(job: ImageJob, finish: Finish) -> None:
        """Post-process (on a CPU engine: upsampling, normalising) and write one image's files."""
        t0 = time.perf_counter()
        try:
            prediction = finish()
        except ImageError as exc:  # an engine that computes NaN/Inf: nothing written for this image
            fail(job, str(exc))
            return
        try:
            extras = output_extras(job, prediction)
        except ImageError as exc:  # --align-to: too few known depths, an unreadable file; nothing written
            fail(job, str(exc))
            return
        finally:
            job.image = None
        try:
            write_prediction(job.paths, prediction, outputs, extras)
        except ImageError as exc:  # a point cloud that does not fit float32; nothing written
            fail(job, str(exc))
            return
        with lock:
            report.write_seconds += time.perf_counter() - t0
            (report.completed if job.completing else report.written).append(job.path)
            bar.update()

    def fail(job: ImageJob, reason: str) -> None:
        with lock:
            report.failed.append((job.path, reason))
            bar.update()
        tqdm.write(f"warning: skipping {job.path}: {reason}")

    with (
        ThreadPoolExecutor(readers, thread_name_prefix="infer-read") as read_pool,
        ThreadPoolExecutor(max(writers, 1), thread_name_prefix="infer-write") as write_pool,
    ):
        reads: deque[tuple[ImageJob, Future]] = deque()
        writes: deque[Future] = deque()
        upcoming = iter(jobs)

        def refill() -> None:
            while len(reads) < prefetch:
                job = next(upcoming, None)
                if job is None:
                    return
                reads.append((job, read_pool.submit(read, job)))

        def drain(limit: int) -> None:
            """Wait for the oldest writes until at most ``limit`` are in flight (raising a write error)."""
            while len(writes) > limit:
                writes.popleft().result()

        refill()
        batch: list[tuple[ImageJob, Prepared]] = []
        while reads or batch:
            if reads:
                job, future = reads.popleft()
                refill()
                try:
                    batch.append((job, future.result()))
                except ImageError as exc:  # a bug is not "this image failed": it propagates
                    fail(job, str(exc))
            if batch and (len(batch) == batch_size or not reads):
                t0 = time.perf_counter()
                finishes = engine.predict_prepared([item for _, item in batch], output_res=outputs.resolution)
                report.predict_seconds += time.perf_counter() - t0
                for (job, _), finish in zip(batch, finishes, strict=True):
                    if writers == 0:
                        write(job, finish)
                    else:
                        drain(2 * writers - 1)  # bounded: maps waiting for a writer
                        writes.append(write_pool.submit(write, job, finish))
                batch = []
        drain(0)
        run_videos(engine, video_jobs, video, outputs, write_pool, writers, prefetch, bar, report, lock)
    bar.close()
    order = {path: i for i, path in enumerate([*images, *videos])}  # writers finish in any order: report in input order
    report.written.sort(key=order.__getitem__)
    report.completed.sort(key=order.__getitem__)
    report.failed.sort(key=lambda item: order[item[0]])
    report.total_seconds = time.perf_counter() - start
    return report
