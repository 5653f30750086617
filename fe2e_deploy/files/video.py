"""Input videos (decoded a frame at a time with PyAV) and preview videos written through a temporary name.

Any file PyAV (ffmpeg) opens is a video; in a folder, files are recognised by :data:`VIDEO_SUFFIXES`.
Frames are decoded lazily (:func:`iter_frames`): a clip is never held in memory. Audio is ignored.
Preview videos (:class:`VideoWriter`) are H.264 (``libx264``, which PyAV's wheels ship) when available,
else FFV1 (lossless); they are written to a hidden temporary sibling and renamed at the end, so a
partly written video never carries its final name.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import MAX_SECONDS
from ..errors import ImageError, InvalidInput
from .atomic import install_file, naming, remove_stale_temps, temp_sibling

#: x264's speed preset for the previews: ultrafast encodes a 1080p frame in ~0.04 CPU-s (veryfast: ~0.08).
PRESET = "ultrafast"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


class VideoError(ImageError):
    """A video that cannot be decoded (or holds no frame in the chosen range): it fails alone."""


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def find_videos(root: Path) -> list[Path]:
    """Every video (by suffix, case-insensitive) under ``root``, recursively, sorted."""
    return sorted(p for p in Path(root).rglob("*") if p.is_file() and is_video(p))


@dataclass(frozen=True)
class FrameRange:
    """Which frames of a clip are processed: from ``start`` to ``end`` seconds, every ``stride``-th, at most
    ``max_frames``."""

    stride: int = 1
    max_frames: int | None = None
    start: float = 0.0
    end: float | None = None

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise InvalidInput(f"--frame-stride must be >= 1, got {self.stride}")
        if self.max_frames is not None and self.max_frames < 1:
            raise InvalidInput(f"--max-frames must be >= 1, got {self.max_frames}")
        for option, value in (("--start", self.start), ("--end", self.end)):
            if value is not None and not 0 <= value <= MAX_SECONDS:  # also refuses NaN
                raise InvalidInput(
                    f"{option} {value:g}: give a finite number of seconds from 0 to {MAX_SECONDS:g}"
                    + (" (leave --end out for the clip's end)" if option == "--end" else "")
                )
        if self.end is not None and self.end <= self.start:
            raise InvalidInput(f"--start {self.start:g} / --end {self.end:g} seconds: need 0 <= start < end")


@dataclass(frozen=True)
class VideoInfo:
    fps: Fraction  # of the input (average rate); outputs run at fps / stride
    size: tuple[int, int]  # width, height
    frames: int | None  # frames in the whole clip when the container says (an estimate otherwise)


def _open(path: Path):
    import av  # noqa: PLC0415  (only when a video is read)

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoError(f"undecodable video ({exc})") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no video stream")
    return container


def probe(path: Path) -> VideoInfo:
    """Frame rate, size and frame count of a video, from its headers (nothing decoded)."""
    container = _open(path)
    with container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        frames = stream.frames or None
        if frames is None and container.duration:
            frames = int(round(container.duration / 1_000_000 * float(rate)))
        return VideoInfo(Fraction(rate), (stream.width, stream.height), frames)


def expected_frames(info: VideoInfo, selection: FrameRange) -> int | None:
    """How many frames :func:`iter_frames` should yield (from the headers; None when unknown)."""
    if info.frames is None:
        return None
    first = math.ceil(selection.start * info.fps - 1e-9)
    last = info.frames if selection.end is None else min(info.frames, math.ceil(selection.end * info.fps - 1e-9))
    count = max(0, math.ceil((last - first) / selection.stride))
    return count if selection.max_frames is None else min(count, selection.max_frames)


def iter_frames(path: Path, selection: FrameRange = FrameRange()) -> Iterator[Image.Image]:
    """The selected frames as RGB images (:func:`iter_timed_frames` without the times)."""
    for _, image in iter_timed_frames(path, selection):
        yield image


def iter_timed_frames(path: Path, selection: FrameRange = FrameRange()) -> Iterator[tuple[float, Image.Image]]:
    """``(seconds, image)`` of the selected frames, decoded one at a time (threaded decoding, audio not decoded).

    ``seconds``: the frame's presentation time in the clip (its timestamp), so that variable-frame-rate clips keep
    their timing. Frames are counted from the first at or after ``selection.start``; ``stride`` keeps every
    n-th of them, whatever the gaps between their timestamps.

    Raises :class:`VideoError` for a file that cannot be opened or decoded (also midway) and for a
    selection holding no frame.
    """
    import av  # noqa: PLC0415

    container = _open(path)
    count = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        half = 0.5 / float(rate)
        if selection.start > 0 and stream.time_base:
            container.seek(int(selection.start / stream.time_base), stream=stream, backward=True)
        position, seconds = -1, None  # frames at or after start; the last frame's time
        for frame in container.decode(stream):
            seconds = frame.time if frame.time is not None else (0.0 if seconds is None else seconds + 1 / float(rate))
            if seconds < selection.start - half:
                continue
            if selection.end is not None and seconds >= selection.end - half:
                break
            position += 1
            if position % selection.stride:
                continue
            yield seconds, frame.to_image()  # RGB24
            count += 1
            if selection.max_frames is not None and count >= selection.max_frames:
                break
    except av.FFmpegError as exc:
        raise VideoError(f"undecodable video after {count} frame(s) ({exc})") from None
    finally:
        container.close()
    if count == 0:
        raise VideoError("no frame to process (an empty video, or --start/--end outside it)")


def encoder() -> tuple[str, str]:
    """(codec, container suffix) of the preview videos: H.264 in .mp4 when PyAV has an encoder, else FFV1 in .mkv."""
    import av  # noqa: PLC0415

    for codec, suffix in (("libx264", ".mp4"), ("h264", ".mp4")):
        try:
            av.codec.Codec(codec, "w")
        except (av.FFmpegError, ValueError):
            continue
        return codec, suffix
    return "ffv1", ".mkv"


#: The longest side libx264 (x264) encodes; a larger preview is downscaled to fit (:func:`preview_size`).
MAX_H264_SIDE = 16384


def preview_size(width: int, height: int, codec: str) -> tuple[int, int]:
    """The size a ``width`` x ``height`` preview is encoded at: its own, or for H.264 with a side over
    :data:`MAX_H264_SIDE` scaled down to fit (the aspect kept; the maps themselves keep their size)."""
    longest = max(width, height)
    if codec == "ffv1" or longest <= MAX_H264_SIDE:
        return width, height
    return max(1, width * MAX_H264_SIDE // longest), max(1, height * MAX_H264_SIDE // longest)


#: Time base of the preview videos' timestamps (MPEG's 90 kHz clock: exact for every common frame rate).
TIME_BASE = Fraction(1, 90_000)


class VideoWriter:
    """An RGB video written to a temporary sibling of ``path``; :meth:`close` renames it into place, :meth:`abort`
    deletes it. ``fps`` is the declared rate; each frame keeps the time it is given (a variable-frame-rate input's
    timing is kept), else frames are ``1 / fps`` apart. H.264 at CRF 18, :data:`PRESET` (``yuv420p``; ``yuv444p``
    when a side is odd), downscaled when a side is over :data:`MAX_H264_SIDE`. An encoder that refuses the frames
    is a :class:`VideoError` (the clip fails alone); a system error (a full disk) is raised as it is."""

    def __init__(self, path: Path, fps: Fraction, codec: str | None = None, overwrite: bool = True):
        import av  # noqa: PLC0415

        self.path, self.overwrite = Path(path), overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.path)
        self.tmp = temp_sibling(self.path)
        self.codec = codec or encoder()[0]
        self.fps = Fraction(fps).limit_denominator(1_000_000)
        with naming(self.path):
            self.container = av.open(str(self.tmp), "w", format="matroska" if self.path.suffix == ".mkv" else None)
        self.stream = None
        self.size: tuple[int, int] | None = None  # (width, height) encoded, set by the first frame
        self.broken: Exception | None = None  # the error of a failed write: no more writes
        self.frames = 0
        self.last_pts = -1

    def write(self, rgb: np.ndarray, seconds: float | None = None) -> None:
        """One frame, ``[H, W, 3]`` uint8 (all frames the same size), shown at ``seconds`` from the start (default:
        ``frames / fps``; a time not after the previous frame's moves one tick after it)."""
        import av  # noqa: PLC0415

        if self.stream is None:
            height, width = rgb.shape[:2]
            self.size = width, height = preview_size(width, height, self.codec)
            self.stream = self.container.add_stream(self.codec, rate=self.fps)
            self.stream.width, self.stream.height = width, height
            if self.codec == "ffv1":
                self.stream.pix_fmt = "yuv444p"
            else:
                self.stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
                self.stream.options = {"crf": "18", "preset": PRESET}
            self.stream.codec_context.time_base = self.stream.time_base = TIME_BASE
            self.stream.thread_type = "AUTO"
        if self.broken is not None:  # PyAV crashes writing on after a failed write (a header the disk had no room for)
            raise self.broken
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(self.size, Image.Resampling.BILINEAR))
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        seconds = self.frames / self.fps if seconds is None else seconds
        frame.pts = self.last_pts = max(round(seconds / TIME_BASE), self.last_pts + 1)
        frame.time_base = TIME_BASE
        with self._encoding():
            self.container.mux(self.stream.encode(frame))
        self.frames += 1

    @contextlib.contextmanager
    def _encoding(self) -> Iterator[None]:
        """An encoder error (not a system error) as a :class:`VideoError` naming the preview; after either, no more
        writes."""
        import av  # noqa: PLC0415

        try:
            with naming(self.path):  # a full disk names the preview, not its temporary
                yield
        except OSError as exc:
            self.broken = exc
            raise
        except av.FFmpegError as exc:
            self.broken = VideoError(f"cannot encode the preview {self.path.name} ({exc})")
            raise self.broken from None

    def close(self) -> Path:
        """Flush, close, and rename to ``path`` (never over an existing file unless ``overwrite``)."""
        if self.broken is not None:
            self.abort()
            raise self.broken
        try:
            if self.stream is not None:
                with self._encoding():
                    self.container.mux(self.stream.encode())
            self.container.close()
            install_file(self.tmp, self.path, self.overwrite)
        finally:
            self.tmp.unlink(missing_ok=True)
        return self.path

    def abort(self) -> None:
        """Drop what was written (the final name is never created)."""
        try:
            self.container.close()
        except Exception:  # noqa: BLE001  (a broken encoder: the temporary goes anyway)
            pass
        finally:
            if os.path.lexists(self.tmp):
                self.tmp.unlink()
