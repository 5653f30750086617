"""The Typer application and helpers shared by the command modules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer

from ..config import ConfigError
from ..loading import CheckpointError

app = typer.Typer(
    name="fe2e-deploy",
    help="FE2E depth + surface normals: load, merge, strip, export, build engines, infer, benchmark, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Errors caused by the user's files or options: reported in one line, exit code 2.
USER_ERRORS = (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ValueError)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's user-facing errors into a message and exit code 2 (no traceback)."""
    try:
        yield
    except USER_ERRORS as exc:
        raise fail(str(exc)) from None
