"""The Typer application and helpers shared by the command modules (imports nothing heavy)."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

import typer

app = typer.Typer(
    name="fe2e-deploy",
    help="FE2E depth + surface normals: load, merge, strip, export, build engines, infer, benchmark, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Errors caused by the user's files, options or machine: reported in one line, exit code 2. The
#: library's own (``ConfigError``, ``CheckpointError``) are ``ValueError``s.
USER_ERRORS = (FileExistsError, FileNotFoundError, ValueError, OSError)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def describe(exc: BaseException) -> str:
    """One line for a user-facing error; OS errors name the file and say what the system said."""
    if isinstance(exc, OSError) and exc.strerror:  # raised by the system (library errors carry a message only)
        where = f"{exc.filename}: " if exc.filename else ""
        hint = {
            errno.EEXIST: " (something is in the way: choose another path)",
            errno.ENOSPC: " (free some disk space, or write elsewhere)",
            errno.EACCES: " (no permission: choose another location)",
            errno.EPERM: " (no permission: choose another location)",
            errno.EROFS: " (read-only file system: choose another location)",
            errno.EISDIR: " (a folder is in the way: give a file path)",
            errno.ENOTDIR: " (a file is in the way: give a folder path)",
        }.get(exc.errno, "")
        return f"{where}{exc.strerror}{hint}"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines) if lines else type(exc).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's user-facing errors into a one-line message and exit code 2 (no traceback)."""
    try:
        yield
    except USER_ERRORS as exc:
        raise fail(describe(exc)) from None


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Name ``path`` in a system error raised while writing it (a failed ``write`` reports no file name)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def report_images(report) -> None:
    """Print a run over images (``infer``, ``batch``): skipped and failed images, the summary; exit code 1 if any
    image failed. ``report`` has ``skipped`` and ``failed`` lists of (path, reason) and ``summary()``."""
    for path, reason in report.skipped:
        typer.echo(f"skipped {path}: {reason}")
    for path, reason in report.failed:
        typer.secho(f"failed {path}: {reason}", err=True, fg=typer.colors.RED)
    typer.echo(report.summary())
    if report.failed:
        raise fail(f"{len(report.failed)} image(s) failed (see above)", code=1)
