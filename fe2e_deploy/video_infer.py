"""``infer`` on videos: a clip's frames streamed through the engine, its maps written as preview videos and files.

Per video (named after its path relative to the input folder, like an image):

``OUT/depth_video/<rel>/<name>_depth.mp4``      depth preview (Spectral, near red), one frame per frame processed
``OUT/normals_video/<rel>/<name>_normals.mp4``  normals preview ((n + 1) / 2 * 255)
``OUT/<kind>/<rel>/<name>/<name>_<i:06d><suffix>``  per-frame files of each kind ``--outputs`` names (any image kind)

A decoder thread decodes and pre-processes frames ahead of the engine (at most ``prefetch`` wait);
the engine runs them in batches; writer threads finish the maps (upsampling on CPU engines) in
parallel; one sequencing thread takes them in frame order, aligns the depth over time
(:mod:`fe2e_deploy.temporal`) and encodes the previews and per-frame files. Memory stays bounded
whatever the clip's length. Videos are written under temporary names and per-frame folders are staged
beside their target: a video that fails (undecodable, no frame, an engine error) leaves nothing under
its final names.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from .engines import Engine
from .engines.base import Finish, Prepared
from .errors import ImageError, InvalidInput, OutputExists
from .files.atomic import looks_temporary, naming, staged_folder
from .files.colormaps import depth_preview, normals_preview
from .files.outputs import (
    ALL_KINDS,
    Extras,
    OutputOptions,
    OutputOwners,
    output_names,
    png_pixels,
    save_npy,
    write_pointcloud,
)
from .files.png import write_png
from .files.video import FrameRange, VideoError, VideoWriter, encoder, expected_frames, iter_timed_frames, probe
from .processing import Prediction
from .temporal import SMOOTHING, TEMPORAL_MODES, TemporalAligner, registration_image

#: Per-frame outputs a video can have (``--outputs``), besides its two preview videos: every kind an image has.
FRAME_KINDS = (
    "depth_npy",
    "depth_png16",
    "depth_colored",
    "normals_npy",
    "normals_png",
    "pointcloud",
    "depth_exr",
    "normals_exr",
)


@dataclass(frozen=True)
class VideoOptions:
    """What ``infer`` does with videos: which frames (``frames``), ``temporal`` (align or none), the per-frame
    ``kinds`` (a subset of :data:`FRAME_KINDS`) written besides the preview videos, and ``smoothing`` (the
    previous aligned frame's weight where it agrees, :data:`fe2e_deploy.temporal.SMOOTHING`; align only)."""

    frames: FrameRange = field(default_factory=FrameRange)
    temporal: str = "align"
    kinds: tuple[str, ...] = ()
    smoothing: float = SMOOTHING

    def __post_init__(self) -> None:
        if self.temporal not in TEMPORAL_MODES:
            raise InvalidInput(f"--temporal {self.temporal!r}: choose {' or '.join(TEMPORAL_MODES)}")
        if not 0.0 <= self.smoothing < 1.0:  # also refuses NaN
            raise InvalidInput(f"--temporal-smoothing {self.smoothing}: must be a number in [0, 1)")
        unknown = [k for k in self.kinds if k not in FRAME_KINDS]
        if unknown:
            raise InvalidInput(f"per-frame video outputs {unknown}: choose among {', '.join(FRAME_KINDS)}")


@dataclass
class VideoJob:
    path: Path
    name: str
    videos: dict[str, Path]  # "depth_video" / "normals_video" -> file
    folders: dict[str, Path]  # per-frame kind -> folder
    completing: bool
    expected: int | None = None  # frames, from the headers
    replace: frozenset[Path] = frozenset()  # the outputs it may replace: all with --overwrite, else those it completes


#: Files a file manager leaves in a folder it showed: replaced with the folder like the clip's frames.
FOLDER_METADATA = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})


def unreplaceable(folders: dict[str, Path], name: str) -> str | None:
    """Why one of the existing per-frame ``folders`` (kind -> folder) of the clip ``name`` may not be replaced: it is
    a file, or it holds an entry that is neither one of the clip's frame files (``<name>_<i:06d><suffix>``), a
    temporary of an atomic write nor a file manager's :data:`FOLDER_METADATA`. None when each is absent or holds only
    the clip's frames."""
    for kind, folder in folders.items():
        if not os.path.lexists(folder):
            continue
        if not folder.is_dir() or folder.is_symlink():
            return f"its per-frame folder {folder} exists and is not a folder: refusing to replace it"
        frame = re.compile(rf"{re.escape(name)}_\d{{6,}}{re.escape(ALL_KINDS[kind])}")
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if looks_temporary(entry.name) or entry.name in FOLDER_METADATA:
                    continue
                if not entry.is_file(follow_symlinks=False) or frame.fullmatch(entry.name) is None:
                    return (
                        f"its per-frame folder {folder} holds {entry.name}, not a frame of it: refusing to replace it"
                    )
    return None


def video_paths(out_dir: Path, rel: Path, name: str, kinds: tuple[str, ...]) -> tuple[dict, dict]:
    """The preview videos and per-frame folders of the video at ``rel`` (relative to the input folder)."""
    suffix = encoder()[1]
    videos = {
        "depth_video": out_dir / "depth_video" / rel.parent / f"{name}_depth{suffix}",
        "normals_video": out_dir / "normals_video" / rel.parent / f"{name}_normals{suffix}",
    }
    return videos, {kind: out_dir / kind / rel.parent / name for kind in kinds}


def plan_videos(
    videos: list[Path],
    root: Path,
    out_dir: Path,
    options: VideoOptions,
    overwrite: bool,
    report,
    owners: OutputOwners | None = None,
) -> list:
    """The videos to run; those whose outputs all exist are skipped (``report.skipped``) unless ``overwrite``.

    A video fails here, before any work (``report.failed``), when one of its outputs would be, hold or lie inside
    another input's (``owners``: the images' outputs, planned first, and the videos' before it), and when one of
    its per-frame folders exists holding anything but its own frame files (never replaced, even with
    ``overwrite``). Without ``overwrite`` a video replaces only the outputs it completes (those found here).
    """
    names = output_names(path.relative_to(root) for path in videos)
    owners = OutputOwners() if owners is None else owners
    jobs = []
    for path in videos:
        rel = path.relative_to(root)
        files, folders = video_paths(out_dir, rel, names[rel], options.kinds)
        targets = [*files.values(), *folders.values()]
        taken = owners.clash(targets)
        if taken is not None:
            report.failed.append(
                (path, f"its output {taken[0]} would clash with the outputs of {taken[1]} (rename one of them)")
            )
            continue
        existing = [p for p in targets if os.path.lexists(p)]
        kept = unreplaceable(folders, names[rel])
        if kept is not None:
            report.failed.append((path, kept))
            continue
        owners.add(targets, path)
        if len(existing) == len(targets) and not overwrite:
            report.skipped.append((path, f"all its outputs exist, e.g. {existing[0]} (pass --overwrite to replace)"))
        else:
            replace = frozenset(targets if overwrite else existing)
            jobs.append(VideoJob(path, names[rel], files, folders, bool(existing) and not overwrite, replace=replace))
    return jobs


def estimate_frames(job: VideoJob, options: VideoOptions) -> int:
    """Frames the progress bar expects for ``job`` (from the headers; 0 when unreadable or unknown)."""
    try:
        job.expected = expected_frames(probe(job.path), options.frames)
    except VideoError:
        job.expected = None
    return job.expected or 0


_DONE = object()


def run_video(
    engine: Engine,
    job: VideoJob,
    options: VideoOptions,
    outputs: OutputOptions,
    write_pool: ThreadPoolExecutor,
    writers: int,
    prefetch: int,
    progress: Callable[[], None],
    timers: dict[str, float],
) -> int:
    """Predict every selected frame of one video and write its outputs; returns the frames written.

    Raises :class:`ImageError` (the video fails alone; nothing under its final names) or a write error.
    """
    info = probe(job.path)
    fps = info.fps / options.frames.stride
    frames: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Put ``item`` in the bounded queue unless the run stopped (then False)."""
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                frames.put(item, timeout=0.1)
                return True
        return False

    def decode() -> None:
        """The decoder thread: frames decoded and pre-processed ahead of the engine, in order."""
        try:
            t0 = time.perf_counter()
            first = None
            for seconds, image in iter_timed_frames(job.path, options.frames):
                first = seconds if first is None else first
                picture = registration_image(image) if aligner is not None else None
                item = engine.prepare(image), seconds - first, picture, (image if "pointcloud" in staged else None)
                timers["read"] += time.perf_counter() - t0
                if not offer(item):
                    return
                t0 = time.perf_counter()
            offer(_DONE)
        except BaseException as exc:  # noqa: BLE001  (handed to the main thread, raised there)
            offer(exc)

    aligner = TemporalAligner(smoothing=options.smoothing) if options.temporal == "align" else None
    with contextlib.ExitStack() as stack:
        staged = {
            kind: stack.enter_context(staged_folder(path, overwrite=path in job.replace))
            for kind, path in job.folders.items()
        }
        writers_ = {kind: VideoWriter(path, fps, overwrite=path in job.replace) for kind, path in job.videos.items()}
        sequencer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="infer-video"))
        count = 0

        def emit(
            index: int, finishing: Future, seconds: float, picture: np.ndarray | None, image: Image.Image | None
        ) -> None:
            """In frame order: align the depth, encode the previews (at the frame's time in the clip: a variable
            frame rate is kept), write the per-frame files."""
            prediction, normals_picture = finishing.result()
            t0 = time.perf_counter()
            depth = prediction.depth if aligner is None else aligner.align(prediction.depth, picture)
            writers_["depth_video"].write(depth_preview_fast(depth), seconds)
            writers_["normals_video"].write(normals_picture, seconds)
            write_frame_files(staged, job.name, index, depth, prediction.normals, outputs, image, job.folders)
            timers["write"] += time.perf_counter() - t0
            progress()

        thread = threading.Thread(target=decode, name="infer-video-decode", daemon=True)
        thread.start()
        try:
            pending: deque[Future] = deque()
            batch: list[Prepared] = []
            pictures: deque[tuple] = deque()  # (time, registration image, frame for the cloud) of ``batch``
            done = False
            while not done or batch:
                if not done:
                    item = frames.get()
                    if item is _DONE:
                        done = True
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        batch.append(item[0])
                        pictures.append(item[1:])
                if batch and (len(batch) == engine.batch_size or done):
                    t0 = time.perf_counter()
                    finishes = engine.predict_prepared(batch, output_res=outputs.resolution)
                    timers["predict"] += time.perf_counter() - t0
                    for finish in finishes:
                        while len(pending) > 2 * max(writers, 1):
                            pending.popleft().result()
                        finishing = write_pool.submit(_finish, finish) if writers else _resolved(finish)
                        pending.append(sequencer.submit(emit, count, finishing, *pictures.popleft()))
                        count += 1
                    batch = []
            while pending:
                pending.popleft().result()
            check_not_appeared(job)  # before anything takes its final name: all of the clip's outputs or none
            for writer in writers_.values():
                writer.close()
        except BaseException:
            stop.set()
            sequencer.shutdown(wait=True, cancel_futures=True)  # nothing encodes any more
            for writer in writers_.values():
                writer.abort()
            raise
        finally:
            stop.set()
            thread.join()
    return count


def check_not_appeared(job: VideoJob) -> None:
    """:class:`OutputExists` when an output the clip may not replace (another run's, written meanwhile) exists now."""
    for target in [*job.videos.values(), *job.folders.values()]:
        if target in job.replace or not os.path.lexists(target):
            continue
        if target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
            continue  # an empty folder is replaced
        raise OutputExists(f"{target}: appeared while this run was writing it (pass --overwrite to replace it)")


#: Levels of the depth preview's lookup table (:func:`depth_preview_fast`).
PREVIEW_LEVELS = 4096
_PREVIEW_LUT: np.ndarray | None = None


def depth_preview_fast(depth: np.ndarray) -> np.ndarray:
    """The Spectral depth preview through a lookup table of :data:`PREVIEW_LEVELS` levels: one gather per pixel
    (10x faster than interpolating at 1080p; at most one 8-bit step from ``depth_preview``, below H.264's loss)."""
    global _PREVIEW_LUT
    if _PREVIEW_LUT is None:
        _PREVIEW_LUT = depth_preview(np.linspace(0, 1, PREVIEW_LEVELS, dtype=np.float32))
    index = np.clip(depth, 0, 1) * np.float32(PREVIEW_LEVELS - 1) + np.float32(0.5)
    return _PREVIEW_LUT[index.astype(np.intp)]


def _finish(finish: Finish) -> tuple[Prediction, np.ndarray]:
    """A frame's maps at their output size and its normals preview (neither depends on the other frames, so both
    are made by the writer threads, in parallel, not by the sequencing thread)."""
    prediction = finish()
    return prediction, normals_preview(prediction.normals)


def _resolved(finish: Finish) -> Future:
    future: Future = Future()
    try:
        future.set_result(_finish(finish))
    except ImageError as exc:
        future.set_exception(exc)
    return future


def write_frame_files(
    folders: dict[str, Path],
    name: str,
    index: int,
    depth: np.ndarray,
    normals: np.ndarray,
    outputs: OutputOptions,
    image: Image.Image | None = None,
    targets: dict[str, Path] | None = None,
) -> None:
    """Frame ``index``'s per-frame files into the (staged) folders of their kinds (``image``: the frame, for the
    point cloud's colours; its z is ``exp`` of the aligned depth, so a clip's clouds share one frame of reference).
    ``targets``: the folders they are staged for, which a write error names (default ``folders``)."""
    stem = f"{name}_{index:06d}"
    npy = np.float16 if outputs.npy_dtype == "float16" else np.float32
    targets = targets or folders

    def files(kind: str) -> tuple[Path, contextlib.AbstractContextManager]:
        filename = f"{stem}{ALL_KINDS[kind]}"
        return folders[kind] / filename, naming(targets[kind] / filename)

    if "depth_npy" in folders:
        path, named = files("depth_npy")
        with named:
            save_npy(path, depth.astype(npy, copy=False))
    if "normals_npy" in folders:
        path, named = files("normals_npy")
        with named:
            save_npy(path, normals.astype(npy, copy=False))
    for kind in ("depth_png16", "depth_colored", "normals_png"):
        if kind in folders:
            path, named = files(kind)
            with named:
                write_png(path, png_pixels(kind, depth, normals), outputs.png_compression)
    for kind, values in (("depth_exr", depth), ("normals_exr", normals)):
        if kind in folders:
            from .files.exr import write_exr  # noqa: PLC0415  (optional dependency)

            path, named = files(kind)
            with named:
                write_exr(path, values)
    if "pointcloud" in folders:
        path, named = files("pointcloud")
        with named:
            write_pointcloud(path, depth, normals, None, outputs.camera, Extras(image))


def run_videos(
    engine: Engine,
    jobs: list[VideoJob],
    options: VideoOptions,
    outputs: OutputOptions,
    write_pool: ThreadPoolExecutor,
    writers: int,
    prefetch: int,
    bar,
    report,
    lock: threading.Lock,
) -> None:
    """Run :func:`run_video` on each job; a video that fails is reported (``report.failed``) and the run goes on.
    ``bar`` (tqdm) counts frames; ``report`` is ``infer``'s :class:`~fe2e_deploy.infer.InferReport`."""
    from tqdm import tqdm  # noqa: PLC0415

    for job in jobs:
        timers = {"read": 0.0, "predict": 0.0, "write": 0.0}
        done = [0]

        def progress(done: list[int] = done) -> None:
            done[0] += 1
            bar.update()

        try:
            count = run_video(engine, job, options, outputs, write_pool, writers, prefetch, progress, timers)
        except (ImageError, OutputExists) as exc:  # OutputExists: another run wrote its outputs meanwhile
            if isinstance(exc, VideoError | OutputExists):
                reason = str(exc)
            else:
                reason = f"frame {done[0]}: {exc} (nothing written)"
            with lock:
                report.failed.append((job.path, reason))
            tqdm.write(f"warning: skipping {job.path}: {reason}")
        else:
            with lock:
                (report.completed if job.completing else report.written).append(job.path)
                report.videos += 1
                report.frames += count
                report.clip_frames[job.path] = count
        finally:
            report.read_seconds += timers["read"]
            report.predict_seconds += timers["predict"]
            report.write_seconds += timers["write"]
        if bar.total is not None and done[0] != (job.expected or 0):  # the headers' estimate was off
            bar.total += done[0] - (job.expected or 0)
            bar.refresh()
