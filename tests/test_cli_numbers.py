"""One rule for numbers, walked over the CLI itself: every numeric option of every command declares its range.

The rule: every numeric option is parsed by ``options.Number`` (``typer.Option(default, **number(low, high))``):
an integer option has a lower bound, a float option a lower and an upper one (finite), so anything outside (and
``nan``, ``inf``) is refused while parsing, before any work, with the range in the message. The walk feeds
each option ``nan``, ``inf``, ``-inf``, ``1e300``, ``-1`` and ``0`` and asserts that a value outside the declared
range is refused naming the option (``main`` prints it as one line, exit 2: ``test_cli_errors.py``) and a value
inside is taken. An option added later is covered without anyone remembering to; an option whose special values
mean something (0 = off, ...) says so in its help. String choices (``options.choice``): an unknown value is refused
while parsing, naming the choices.
"""

from __future__ import annotations

import math
import types
import typing

import pytest
from typer.main import get_command

from fe2e_deploy.cli import app
from fe2e_deploy.cli.options import Choices, Number

try:  # recent Typer carries its own copy of click
    from typer._click.exceptions import BadParameter, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import BadParameter, UsageError

VALUES = ("nan", "inf", "-inf", "1e300", "-1", "0")
GROUP = get_command(app)


def base_type(annotation):
    """``int`` for ``int | None`` and the like."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    return annotation


def options_of(kind) -> list[tuple[str, object]]:
    found = []
    for name, command in sorted(GROUP.commands.items()):
        for param in command.params:
            descriptor = getattr(param, "type_descriptor", None)
            if descriptor is not None and getattr(param, "opts", None):
                annotation = base_type(descriptor.annotation)
                if kind(annotation):
                    found.append((name, param))
    return found


NUMERIC = options_of(lambda a: a in (int, float))
STRINGS = options_of(lambda a: a is str)
CHOICES = [(c, p) for c, p in STRINGS if isinstance(p.type_descriptor.parameter_info.parser, Choices)]
CASES = [(name, param, value) for name, param in NUMERIC for value in VALUES]


def parser_of(param):
    return param.type_descriptor.parameter_info.parser


def inside(param, value: str) -> bool:
    """Whether the declared range (and the option's type) takes ``value``."""
    parser = parser_of(param)
    if parser.kind is int:
        try:
            return parser.takes(int(value))
        except ValueError:  # 1e300 and nan are no integer literals
            return False
    number = float(value)
    return math.isfinite(number) and parser.takes(number)


def parse(command: str, args: list[str]) -> BaseException | None:
    """Parse ``command args`` as the CLI does, with the command's work replaced by nothing; the error, if any."""
    sub = GROUP.commands[command]
    try:
        sub.make_context(command, list(args), parent=None)
    except (UsageError, BadParameter) as exc:
        return exc
    return None


def test_the_walk_finds_every_commands_numbers():
    commands = {name for name, _ in NUMERIC}
    assert {"infer", "batch", "serve", "demo", "benchmark", "train-lora", "evaluate"} <= commands
    assert len(NUMERIC) >= 60


@pytest.mark.parametrize(("command", "param"), NUMERIC, ids=[f"{c} {p.opts[0]}" for c, p in NUMERIC])
def test_every_numeric_option_declares_its_range(command, param):
    parser = parser_of(param)
    assert isinstance(parser, Number), f"{command} {param.opts[0]}: no range (typer.Option(..., **number(low, high)))"
    assert parser.kind is base_type(param.type_descriptor.annotation), f"{command} {param.opts[0]}: {parser.kind}"
    if parser.kind is float:
        assert parser.high is not None, f"{command} {param.opts[0]}: a float needs an upper bound"
        assert math.isfinite(parser.low) and math.isfinite(parser.high)


@pytest.mark.parametrize(("command", "param", "value"), CASES, ids=[f"{c} {p.opts[0]} {v}" for c, p, v in CASES])
def test_every_numeric_option_refuses_what_its_range_does_not_take(command, param, value):
    error = parse(command, [param.opts[0], value])
    named = isinstance(error, BadParameter) and error.param is not None and error.param.name == param.name
    if inside(param, value):
        assert not named, f"{command} {param.opts[0]} {value}: refused inside its declared range: {error}"
    else:
        assert named, f"{command} {param.opts[0]} {value}: not refused while parsing ({error!r})"
        assert error.message == f"must be {parser_of(param).describe()}"


@pytest.mark.parametrize(("command", "param"), CHOICES, ids=[f"{c} {p.opts[0]}" for c, p in CHOICES])
def test_an_unknown_choice_names_the_choices_and_each_choice_is_taken(command, param):
    parser = param.type_descriptor.parameter_info.parser
    error = parse(command, [param.opts[0], "no-such-choice"])
    assert isinstance(error, BadParameter) and error.param.name == param.name, error
    assert all(choice in error.format_message() for choice in parser.choices), error.format_message()
    for choice in parser.choices:
        error = parse(command, [param.opts[0], choice])
        assert not (isinstance(error, BadParameter) and error.param is not None and error.param.name == param.name)


def test_the_choices_are_the_librarys():
    """Choices spelled for the parser (the CLI imports nothing heavy) are those the library takes."""
    from fe2e_deploy.cluster.shards import NORMALS_DTYPES, OUTPUT_FORMATS  # noqa: PLC0415
    from fe2e_deploy.evaluation.kinds import TASKS  # noqa: PLC0415
    from fe2e_deploy.evaluation.metrics import ALIGNMENTS  # noqa: PLC0415
    from fe2e_deploy.evaluation.protocols import PROTOCOLS  # noqa: PLC0415
    from fe2e_deploy.models.fp8 import GEMM_MODES  # noqa: PLC0415
    from fe2e_deploy.precision import DTYPE_PRECISIONS  # noqa: PLC0415
    from fe2e_deploy.temporal import TEMPORAL_MODES  # noqa: PLC0415

    want = {
        ("batch", "--output-format"): OUTPUT_FORMATS,
        ("batch", "--normals-dtype"): NORMALS_DTYPES,
        ("evaluate", "--task"): TASKS,
        ("evaluate", "--alignment"): ALIGNMENTS,
        ("evaluate", "--protocol"): PROTOCOLS,
        ("build", "--fp8-gemm"): GEMM_MODES,
        ("infer", "--dtype"): DTYPE_PRECISIONS,
        ("infer", "--temporal"): TEMPORAL_MODES,
    }
    found = {(c, p.opts[0]): p.type_descriptor.parameter_info.parser.choices for c, p in CHOICES}
    for key, choices in want.items():
        assert sorted(found[key]) == sorted(choices), key
    assert len(CHOICES) >= 30
