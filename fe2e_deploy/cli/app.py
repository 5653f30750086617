"""The Typer application and helpers shared by the command modules (imports nothing heavy)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

try:  # recent Typer carries its own copy of click; older ones use click itself
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException

from ..errors import describe, is_user_error

app = typer.Typer(
    name="fe2e-deploy",
    help="FE2E depth + surface normals: load, merge, strip, export, build engines, infer, benchmark, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main(args: list[str] | None = None) -> None:
    """The ``fe2e-deploy`` entry point: ``app`` with a usage error (an option's value refused while parsing,
    an unknown option, a missing argument) printed as one line, exit code 2, like every other user error."""
    try:
        code = app(args=args, prog_name="fe2e-deploy", standalone_mode=False)
    except ClickException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `fe2e-deploy` or a group alone: the help, as Typer shows it
            app(args=args, prog_name="fe2e-deploy")
        command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "fe2e-deploy"
        typer.secho(f"error: {exc.format_message()} (see `{command} --help`)", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("Aborted.", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """A user error (:func:`fe2e_deploy.errors.is_user_error`) becomes one line and exit code 2; a bug keeps its
    traceback."""
    try:
        yield
    except Exception as exc:
        if not is_user_error(exc):
            raise
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
