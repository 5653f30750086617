"""Where ``batch`` reads and writes: a local folder, or a folder behind a pyarrow filesystem URI (``s3://``...).

:class:`ImageSource` reads the images; :class:`OutputStore` writes the outputs.

Every object appears complete or not at all:

- a local folder (also ``file://``): written to a hidden temporary beside it, then renamed
  (:func:`fe2e_deploy.files.atomic.atomic_path`);
- an object store (S3, GCS, Azure): the complete data is ready in a local file before the upload
  starts, and the store shows an object only once its upload completes (a single PUT, or the
  completion of a multipart upload). pyarrow has no way to abandon an upload (apache/arrow#40502:
  closing an output stream completes it, even after an error), so an upload interrupted on our
  side (an exception between two parts) is deleted right after; a process killed during an upload
  leaves an incomplete multipart upload, which the store never shows;
- any other filesystem (HDFS...): written under a temporary name in the same folder, then moved.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ..errors import InvalidInput, describe
from ..files.atomic import atomic_path, check_writable_dir

#: pyarrow filesystems (``type_name``) whose objects appear only when their upload completes.
OBJECT_STORES = ("s3", "gcs", "abfs")
#: The write probe of an object store (:meth:`OutputStore.check_writable`): seconds to connect, to answer, and
#: no retry, so that an unreachable endpoint or a missing bucket is answered at once, not after the retries.
PROBE_CONNECT_S = 3.0
PROBE_REQUEST_S = 10.0


def is_uri(text: str) -> bool:
    return "://" in text


@cache
def _filesystem(uri: str):
    """The pyarrow filesystem of ``uri`` (one per process and URI: its connections are reused)."""
    from pyarrow import fs  # noqa: PLC0415

    return fs.FileSystem.from_uri(uri)[0]


@dataclass(frozen=True)
class OutputStore:
    """An output folder: ``root`` is a local path (``uri`` None) or the filesystem's path of ``uri``."""

    root: str
    uri: str | None = None

    @classmethod
    def parse(cls, text: str | Path) -> OutputStore:
        """A local folder or a filesystem URI (``file://`` URIs are local folders)."""
        text = str(text)
        if not is_uri(text):
            return cls(str(Path(text).absolute()))
        from pyarrow import fs  # noqa: PLC0415

        try:
            filesystem, root = fs.FileSystem.from_uri(text)
        except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
            raise InvalidInput(f"{text}: not an output folder or filesystem URI pyarrow can open ({exc})") from None
        if isinstance(filesystem, fs.LocalFileSystem):
            return cls(str(Path(root).absolute()))
        if not root.strip("/"):
            scheme = text.split("://", 1)[0]
            raise InvalidInput(f"{text}: no bucket; give the folder the outputs go to: {scheme}://BUCKET/PREFIX")
        return cls(root.rstrip("/"), text)

    @property
    def local(self) -> bool:
        return self.uri is None

    def filesystem(self):
        from pyarrow import fs  # noqa: PLC0415

        return fs.LocalFileSystem() if self.uri is None else _filesystem(self.uri)

    def path(self, rel: str) -> str:
        """The filesystem path of ``rel`` (a ``/``-separated path under the folder)."""
        return f"{self.root}/{rel}" if rel else self.root

    def describe(self, rel: str = "") -> str:
        """``rel`` as the user named the folder (for messages)."""
        if self.uri is None:
            return str(Path(self.root) / rel)
        scheme = self.uri.split("://", 1)[0]
        return f"{scheme}://{self.path(rel)}"

    def check_writable(self) -> None:
        """Prove that objects can be written here before any long work (creates a local folder). An object
        store that refuses (a missing bucket, no permission) or cannot be reached is one :class:`InvalidInput`,
        within seconds (:func:`probing`)."""
        if self.uri is None:
            check_writable_dir(self.root)
            return
        filesystem, probe = probing(self.filesystem()), self.path(".write-test")
        try:
            if filesystem.type_name not in OBJECT_STORES:
                filesystem.create_dir(self.root, recursive=True)
            with filesystem.open_output_stream(probe):
                pass
            filesystem.delete_file(probe)
        except (OSError, ValueError) as exc:  # pyarrow: errors without errno; ArrowInvalid is a ValueError
            raise InvalidInput(f"{self.describe()}: cannot write there ({describe(exc)})") from None

    def list(self, rel: str = "", recursive: bool = True) -> list[str]:
        """The files under ``rel`` (paths relative to the folder), in one listing; none when it does not exist."""
        return sorted(self.sizes(rel, recursive))

    def sizes(self, rel: str = "", recursive: bool = False) -> dict[str, int]:
        """The files under ``rel`` (paths relative to the folder) and their sizes in bytes, in one listing."""
        from pyarrow import fs  # noqa: PLC0415

        selector = fs.FileSelector(self.path(rel), recursive=recursive, allow_not_found=True)
        root = PurePosixPath(self.root)
        return {
            PurePosixPath(info.path).relative_to(root).as_posix(): info.size
            for info in self.filesystem().get_file_info(selector)
            if info.type == fs.FileType.File
        }

    def read_bytes(self, rel: str) -> bytes:
        if self.uri is None:
            return (Path(self.root) / rel).read_bytes()
        with self.filesystem().open_input_stream(self.path(rel)) as stream:
            return stream.readall()

    def delete(self, rel: str) -> None:
        """Delete the file ``rel`` of the folder (none there: nothing to do). ``rel`` must be a plain path inside
        the folder (no ``..``, not absolute): nothing outside the output is ever deleted."""
        parts = PurePosixPath(rel).parts
        if not parts or PurePosixPath(rel).is_absolute() or any(p in ("..", ".") for p in rel.split("/")):
            raise ValueError(f"{rel!r}: not a file inside {self.describe()}; nothing deleted")
        if self.uri is None:
            (Path(self.root) / rel).unlink(missing_ok=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.filesystem().delete_file(self.path(rel))

    @contextlib.contextmanager
    def staged(self, rel: str) -> Iterator[Path]:
        """Yield a local path to write ``rel`` to; when the block succeeds it becomes ``rel``, complete."""
        if self.uri is None:
            with atomic_path(Path(self.root) / rel) as tmp:
                yield tmp
            return
        with tempfile.TemporaryDirectory(prefix="fe2e-batch-") as folder:
            tmp = Path(folder) / PurePosixPath(rel).name
            yield tmp
            self.put_file(tmp, rel)

    def put_bytes(self, rel: str, data: bytes) -> None:
        """``data`` as ``rel``, complete or not at all."""
        with self.staged(rel) as tmp:
            tmp.write_bytes(data)

    def put_file(self, local: str | Path, rel: str) -> None:
        """A copy of the finished local file ``local`` as ``rel``, complete or not at all."""
        local = Path(local)
        if self.uri is None:
            with atomic_path(Path(self.root) / rel) as tmp:
                shutil.copyfile(local, tmp)
            return
        filesystem, target = self.filesystem(), self.path(rel)
        if filesystem.type_name not in OBJECT_STORES:  # a file system that shows a file while it is written
            parent = PurePosixPath(target).parent
            tmp = str(parent / f".{PurePosixPath(target).name}.tmp{os.getpid()}")
            filesystem.create_dir(str(parent), recursive=True)
            self._stream(local, filesystem, tmp)
            filesystem.move(tmp, target)
            return
        self._stream(local, filesystem, target)

    @staticmethod
    def _stream(local: Path, filesystem, target: str) -> None:
        with local.open("rb") as source:
            upload(source, filesystem, target)


def probing(filesystem):
    """``filesystem`` (the same store and credentials) answering at once, for a probe: S3 without retries and
    with short timeouts (:data:`PROBE_CONNECT_S`, :data:`PROBE_REQUEST_S`), GCS retrying for as long; any other
    filesystem, or one this pyarrow cannot rebuild, as it is."""
    from datetime import timedelta  # noqa: PLC0415

    from pyarrow import fs  # noqa: PLC0415

    quick = {
        "s3": {
            "connect_timeout": PROBE_CONNECT_S,
            "request_timeout": PROBE_REQUEST_S,
            "retry_strategy": fs.AwsStandardS3RetryStrategy(max_attempts=1),
        },
        "gcs": {"retry_time_limit": timedelta(seconds=PROBE_CONNECT_S)},
    }.get(filesystem.type_name)
    if quick is None:
        return filesystem
    try:
        rebuild, (options,) = filesystem.__reduce__()  # how pyarrow pickles it: its options, as a dict
        return rebuild({**options, **quick})
    except (TypeError, ValueError):
        return filesystem


def upload(source: BinaryIO, filesystem, target: str) -> None:
    """Upload everything ``source`` holds as ``target``; an interrupted upload is deleted (see the module)."""
    stream = filesystem.open_output_stream(target)
    try:
        stream.upload(source)
    except BaseException:
        with contextlib.suppress(Exception):
            stream.close()  # completes the upload with what was sent: delete it
        with contextlib.suppress(Exception):
            filesystem.delete_file(target)
        raise
    stream.close()


@dataclass(frozen=True)
class ImageSource:
    """Where the images are: a local folder, or a folder behind a pyarrow filesystem URI (``s3://...``)."""

    root: str  # the folder (a local path, or the filesystem's path for a URI)
    uri: str | None = None  # the URI given, when not local

    def filesystem(self):
        """The pyarrow filesystem that reads ``root`` (None: a local folder, read with plain file calls)."""
        if self.uri is None:
            return None

        return _filesystem(self.uri)
