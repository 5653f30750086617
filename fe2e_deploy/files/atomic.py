"""Atomic file writes: write beside the target, then rename over it."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp_path)`` then rename to ``path``; a failure leaves no partial file."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | Path, document: object, overwrite: bool = True) -> Path:
    """``document`` as indented JSON at ``path``, atomically; an existing file needs ``overwrite``."""
    if not overwrite:
        refuse_existing(path)
    return atomic_write(path, lambda p: p.write_text(json.dumps(document, indent=2) + "\n"))


def refuse_existing(*paths: str | Path | None) -> None:
    """The one "exists, pass --overwrite" guard; a folder where a file is expected is an error too."""
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"{path}: is a folder; give a file path")
        if path.exists():
            raise FileExistsError(f"{path}: exists (pass --overwrite to replace it)")


def check_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove that files can be written there (before any long work)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: is a file; give a folder path")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
        pass
    return folder
