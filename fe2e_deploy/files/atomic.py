"""Atomic writes: a file or a whole folder is built beside its target, then renamed into place.

A reader sees the complete old artifact, the complete new one, or (after a refusal) what was there;
never a mix. Temporaries are hidden siblings of the target named after it and the writing process
(``.NAME.tmpPID.SUFFIX``; ``.NAME.oldPID`` for a folder being swapped out), so that a later write of
the same target can remove what a killed run left behind, and never what a live run is writing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import NotAFile, NotAFolder, OutputExists

#: errors of a rename / link whose target is occupied (a file, a non-empty folder)
_OCCUPIED = (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR)
#: os.link errors that mean "no hard links here" (then: check, rename)
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS)


def temp_sibling(path: str | Path, tag: str = "tmp", pid: int | None = None) -> Path:
    """The hidden sibling ``.STEM.{tag}PID.SUFFIX`` a run writes ``path`` through (same folder: renames are atomic)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.{tag}{os.getpid() if pid is None else pid}{path.suffix}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a process of another user counts; when unsure: alive)."""
    if os.name == "nt" or pid <= 0:  # on Windows, os.kill(pid, 0) would send CTRL_C_EVENT
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    return True


def _remove(path: Path) -> None:
    """Delete a file, link or folder if present (a concurrent cleaner may get there first)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


#: names that look like a temporary of this module: ``.NAME.tmpPID...`` / ``.NAME.oldPID...``
_TEMP_LIKE = re.compile(r"\..+\.(?:tmp|old)\d+")


def looks_temporary(name: str) -> bool:
    """Whether a file name is that of a temporary of this module (a live run's, or one a killed run left)."""
    return name.startswith(".") and _TEMP_LIKE.match(name) is not None


#: folder -> (its mtime, its temp-like names) as this process last saw them; see :func:`_temp_like_names`
_LISTINGS: dict[str, tuple[int, frozenset[str]]] = {}


def _mtime_ns(folder: str) -> int | None:
    try:
        return os.stat(folder).st_mtime_ns
    except OSError:
        return None


def _temp_like_names(folder: Path) -> frozenset[str]:
    """The temp-like names in ``folder``, listed again only if the folder changed since this process last looked.

    Writing N files into one folder (``infer`` outputs) must not list the folder N times: that would be
    quadratic. A folder changes (its mtime) whenever another process adds or removes an entry; this
    process's own changes are recorded by :func:`_note_own_change` without listing again.
    """
    key = os.path.abspath(folder)
    mtime = _mtime_ns(key)  # before listing: a change during the listing makes the next call list again
    cached = _LISTINGS.get(key)
    if cached is not None and mtime is not None and cached[0] == mtime:
        return cached[1]
    try:
        with os.scandir(key) as entries:
            names = frozenset(e.name for e in entries if e.name.startswith(".") and _TEMP_LIKE.match(e.name))
    except (FileNotFoundError, NotADirectoryError):
        return frozenset()
    if mtime is not None:
        _LISTINGS[key] = (mtime, names)
    return names


def _note_own_change(folder: Path, removed: set[str] | frozenset[str] = frozenset()) -> None:
    """Record ``folder``'s mtime after this process changed it (a rename in, stale temps ``removed``).

    A temp another process creates in the same instant may go unseen until the folder changes again:
    at worst a leftover stays a little longer, nothing else.
    """
    key = os.path.abspath(folder)
    cached, mtime = _LISTINGS.get(key), _mtime_ns(key)
    if cached is not None and mtime is not None:
        _LISTINGS[key] = (mtime, cached[1] - removed)
    else:
        _LISTINGS.pop(key, None)


def remove_stale_temps(target: str | Path) -> list[Path]:
    """Delete the temporaries of ``target`` left by runs that died (kill -9, power loss); returns what was removed.

    Only siblings named after ``target`` with the PID of a process that no longer exists are touched,
    never a live run's. A folder swap killed between its two renames left the target missing and the
    old complete folder aside: that folder is put back.
    """
    target = Path(target)
    pattern = re.compile(rf"\.{re.escape(target.stem)}\.(tmp|old)(\d+){re.escape(target.suffix)}")
    removed = []
    for name in sorted(_temp_like_names(target.parent)):
        match = pattern.fullmatch(name)
        if match is None:
            continue
        pid, entry = int(match.group(2)), target.parent / name
        if pid == os.getpid() or pid_alive(pid):
            continue
        swapped_out = match.group(1) == "old" and temp_sibling(target, "tmp", pid).exists()
        if swapped_out and not os.path.lexists(target):
            with contextlib.suppress(OSError):  # another cleaner may have restored it first
                entry.rename(target)
        else:
            _remove(entry)
        removed.append(entry)
    if removed:
        _note_own_change(target.parent, {p.name for p in removed})
    return removed


def default_file_mode() -> int:
    """``0o666 & ~umask``: the mode ``open(path, "w")`` gives a new file."""
    try:  # Linux: read the umask without changing it (os.umask is process-wide and not thread safe)
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _appeared(target: Path) -> OutputExists:
    return OutputExists(f"{target}: appeared while this run was writing it (pass --overwrite to replace it)")


def install_file(tmp: str | Path, target: str | Path, overwrite: bool = True) -> Path:
    """Rename the finished file ``tmp`` to ``target`` (atomic).

    With ``overwrite`` off, a ``target`` that appeared since the caller checked (another run) is
    never replaced: ``os.link`` fails on an existing name, so the check and the rename are one step.
    """
    tmp, target = Path(tmp), Path(target)
    if overwrite:
        os.replace(tmp, target)
        return target
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise _appeared(target) from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        if os.path.lexists(target):  # no hard links on this file system: check, then rename
            raise OutputExists(f"{target}: exists (pass --overwrite to replace it)") from None
        os.replace(tmp, target)
        return target
    tmp.unlink()
    return target


@contextlib.contextmanager
def atomic_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it becomes ``path`` (normal file mode) if the block succeeds.

    ``overwrite=False``: refuse (``FileExistsError``) if ``path`` exists by then. Temporaries of
    ``path`` left by dead runs are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_sibling(path)
    try:
        yield tmp
        if tmp.is_file() and not tmp.is_symlink():  # writers that go through mkstemp leave 0o600
            os.chmod(tmp, default_file_mode())
        install_file(tmp, path, overwrite)
        _note_own_change(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _no_space_left(path: Path) -> bool:
    """Whether the file system of ``path`` (its nearest existing folder) has no free block left."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        stats = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    return stats.f_bavail == 0 or stats.f_bfree == 0


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """A system error raised while writing ``path`` names ``path``, the file the user asked for.

    A failed ``write`` reports no file name, and one through a temporary names the temporary. A short write
    reported without an errno (numpy's ``N requested and M written``) becomes ``ENOSPC`` when the file system has
    no space left, else ``EIO``: a system error the command line prints as one line.
    """
    path = Path(path)
    try:
        yield
    except OSError as exc:
        if exc.errno is None:
            code = errno.ENOSPC if _no_space_left(path) else errno.EIO
            raise OSError(
                code, f"{os.strerror(code)} ({exc})" if code == errno.EIO else os.strerror(code), str(path)
            ) from exc
        name = getattr(exc, "filename", None)
        if name is None or any(looks_temporary(part) for part in Path(str(name)).parts):
            raise OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path)) from exc
        raise


def atomic_write(path: str | Path, write: Callable[[Path], object], overwrite: bool = True) -> Path:
    """``write(tmp_path)`` then rename to ``path``; a failure leaves no partial file.

    ``overwrite=False``: an existing ``path`` is refused, also one that appeared during ``write``.
    """
    with atomic_path(path, overwrite) as tmp:
        write(tmp)
    return Path(path)


def write_json(path: str | Path, document: object, overwrite: bool = True) -> Path:
    """``document`` as indented JSON at ``path``, atomically; an existing file needs ``overwrite``."""
    if not overwrite:
        refuse_existing(path)
    return atomic_write(path, lambda p: p.write_text(json.dumps(document, indent=2) + "\n"), overwrite)


def refuse_existing(*paths: str | Path | None) -> None:
    """The one "exists, pass --overwrite" guard; a folder where a file is expected is an error too."""
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        if path.is_dir():
            raise NotAFile(f"{path}: is a folder; give a file path")
        if path.exists():
            raise OutputExists(f"{path}: exists (pass --overwrite to replace it)")


def check_folder_target(
    target: str | Path, overwrite: bool, marker: str | None = None, what: str = "an output"
) -> Path:
    """Raise unless ``target`` may become a folder artifact: absent, empty, or (with ``overwrite``) one of its kind.

    ``marker`` is the file that identifies a folder of this kind (``stripped.json``, ``manifest.json``);
    a non-empty folder without it is never replaced, with or without ``overwrite``.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotAFolder(f"{target}: is a file; give a folder path")
    if not target.is_dir() or not any(target.iterdir()):
        return target
    if marker is not None and not (target / marker).is_file():
        raise OutputExists(
            f"{target}: exists and is not {what} folder (no {marker}); refusing to replace it "
            "(give a new or empty folder)"
        )
    if not overwrite:
        raise OutputExists(f"{target}: already holds {what} (pass --overwrite to replace it)")
    return target


def install_folder(
    tmp: str | Path, target: str | Path, overwrite: bool, marker: str | None = None, what: str = "an output"
) -> Path:
    """Swap the complete folder ``tmp`` in as ``target``: the old folder is renamed aside, the new one renamed in,
    then the old one deleted; if the second rename fails, the old folder goes back.

    With ``overwrite`` off, a folder that appeared at ``target`` since the caller checked is never
    replaced (a rename onto a non-empty folder fails); an empty one is.
    """
    tmp, target = Path(tmp), Path(target)
    if not overwrite:
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno in _OCCUPIED:
                raise _appeared(target) from None
            raise
        return target
    check_folder_target(target, True, marker, what)  # another run may have put something else there meanwhile
    old = temp_sibling(target, "old")
    _remove(old)
    if not os.path.lexists(target):
        try:
            os.rename(tmp, target)
            return target
        except OSError as exc:
            if exc.errno not in _OCCUPIED:
                raise  # else: it appeared meanwhile; swap it out below
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)  # put the old complete folder back
        raise
    _remove(old)
    return target


@contextlib.contextmanager
def staged_folder(
    target: str | Path, *, overwrite: bool, marker: str | None = None, what: str = "an output"
) -> Iterator[Path]:
    """Build a folder artifact in a hidden sibling (yielded) and swap it in whole when the block succeeds.

    ``target`` ends as the complete old folder (the block failed or the process was killed), the
    complete new one (no stale file of the old one survives), or untouched after a refusal (see
    :func:`check_folder_target`, :func:`install_folder`). Leftovers of dead runs are removed first;
    the staging folder never outlives the block.
    """
    # swap the folder a link points to (the link stays); "." and ".." name their folder
    target = Path(target).resolve() if Path(target).is_symlink() else Path(os.path.abspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    check_folder_target(target, overwrite, marker, what)
    tmp = temp_sibling(target)
    _remove(tmp)  # left by an earlier process that had our PID
    tmp.mkdir()
    try:
        yield tmp
        install_folder(tmp, target, overwrite, marker, what)
    finally:
        _remove(tmp)


def check_writable_dir(folder: str | Path) -> Path:
    """Create ``folder`` if needed and prove that files can be written there (before any long work)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotAFolder(f"{folder}: is a file; give a folder path")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
        pass
    return folder


def outermost_missing(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist yet (what creating ``path`` would make)."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    return missing[-1] if missing else None


def remove_empty_folders(root: str | Path) -> None:
    """Remove ``root`` and the folders below it that hold nothing (bottom up); any file keeps its folders.

    For an output folder a run created and then wrote nothing into (every input failed, or an option was
    refused after the folder was checked): failed inputs leave nothing behind. Never removes a file.
    """
    root = Path(root)
    if not root.is_dir() or root.is_symlink():
        return
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(Path(entry[0]).parts)):
        with contextlib.suppress(OSError):  # not empty (a file, or a folder kept for one): stays
            Path(folder).rmdir()
