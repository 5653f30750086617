"""The Typer application and helpers shared by the command modules (imports nothing heavy)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

import typer
from typer.core import TyperGroup

try:  # recent Typer carries its own copy of click; older ones use click itself
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException

from ..errors import describe, is_user_error
from ..files.atomic import naming as writing  # noqa: F401  (commands name the file a write error was about)


class OneLineErrors(TyperGroup):
    """The command group: a usage error (an option's value refused while parsing, an unknown option or command, a
    missing argument) is printed as one line, exit code 2, like every other user error (Typer would draw a box)."""

    def main(self, args=None, *rest, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(args, *rest, standalone_mode=False, **kwargs)
        try:
            code = super().main(args, *rest, standalone_mode=False, **kwargs)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a group alone: its help, as Typer shows it
                return super().main(args, *rest, standalone_mode=True, **kwargs)
            ctx = getattr(exc, "ctx", None)
            command = ctx.command_path if ctx is not None else "fe2e-deploy"
            message = usage_message(exc, list(args) if args is not None else sys.argv[1:])
            typer.secho(f"error: {message} (see `{command} --help`)", err=True, fg=typer.colors.RED)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def usage_message(exc: ClickException, argv: list[str]) -> str:
    """Typer's message, or for a value an option's parser refused: ``--opt VALUE: why``."""
    param = getattr(exc, "param", None)
    opts = getattr(param, "opts", None) or []
    value = next((v for a, v in zip(argv, argv[1:], strict=False) if a in opts), None)
    value = next((a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] in opts and "=" in a), value)
    if value is None or not opts or type(exc).__name__ != "BadParameter":
        return exc.format_message()
    return f"{opts[0]} {value}: {exc.message}"


app = typer.Typer(
    cls=OneLineErrors,
    name="fe2e-deploy",
    help="FE2E depth + surface normals: load, merge, strip, export, build engines, infer, benchmark, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main(args: list[str] | None = None) -> None:
    """The ``fe2e-deploy`` entry point (``python -m fe2e_deploy`` too)."""
    app(args=args, prog_name="fe2e-deploy")


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
