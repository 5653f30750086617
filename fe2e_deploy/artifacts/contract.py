"""Artifact contracts: one frozen, versioned dataclass per artifact format, written and read through it.

A contract (:class:`Contract`) names its ``FORMAT`` and ``VERSION``; its fields are the JSON document
(nested dataclasses are nested objects). The producer builds the dataclass and calls :meth:`Contract.write`;
every reader calls :meth:`Contract.read` and uses attributes, so no key of an artifact is spelled outside
its contract. Reading refuses, in one line naming the file, the field and how to rebuild (``REBUILD``):
another format, an unknown version, a missing field (a field without a default), a field of the wrong
type and a field the contract does not know. Versions the reader still understands are upgraded by
``upgrade`` (e.g. the export manifest of version 1).

Types a field may have: ``str``, ``int``, ``float`` (an integer is accepted), ``bool``, ``X | None``,
``list[X]``, ``tuple[X, ...]``, ``dict[str, X]``, ``Any`` (any JSON value) and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Self

from ..errors import InvalidInput, MissingInput
from ..files.atomic import write_json

_JSON_SCALARS = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}


class ContractError(InvalidInput):
    """An artifact's JSON that is not what its contract says (one line: the file, the field, how to rebuild)."""


def read_json(path: str | Path) -> object:
    """A JSON file's content; unreadable or invalid JSON is an :class:`InvalidInput` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not a JSON text file ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: not valid JSON ({exc})") from None


def peek_format(path: str | Path) -> str | None:
    """The ``format`` a JSON file declares, or None when it is not a readable JSON object with one (cheap)."""
    try:
        document = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    value = document.get("format") if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(kind: object) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind in _JSON_SCALARS:
        return _JSON_SCALARS[kind]
    if kind is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        return "a list"
    if origin is dict or dataclasses.is_dataclass(kind):
        return "an object"
    return str(kind)


class _Decoder:
    """Decodes one JSON document into a contract's dataclasses, naming the first field that does not fit."""

    def __init__(self, source: str, fix: str):
        self.source, self.fix = source, fix

    def fail(self, message: str) -> ContractError:
        return ContractError(f"{self.source}: {message} ({self.fix})")

    def value(self, kind: Any, value: object, name: str) -> object:
        origin, args = typing.get_origin(kind), typing.get_args(kind)
        if kind is Any:
            return value
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            options = [a for a in args if a is not type(None)]
            for option in options:  # the first member the value fits (e.g. int | str)
                try:
                    return self.value(option, value, name)
                except ContractError:
                    continue
            raise self.fail(f"field {name!r} is {_short(value)}, not {_describe(kind)}")
        if dataclasses.is_dataclass(kind):
            return self.object(kind, value, name)
        if origin in (list, tuple):
            if not isinstance(value, list):
                raise self.fail(f"field {name!r} is {_short(value)}, not a list")
            item = args[0]
            items = [self.value(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin is dict:
            if not isinstance(value, dict):
                raise self.fail(f"field {name!r} is {_short(value)}, not an object")
            return {str(k): self.value(args[1], v, f"{name}.{k}") for k, v in value.items()}
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if kind in _JSON_SCALARS:
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise self.fail(f"field {name!r} is {_short(value)}, not {_describe(kind)}")
            if kind is float and not math.isfinite(value):
                raise self.fail(f"field {name!r} is {value}, not a finite number")
            return value
        raise TypeError(f"contract field {name!r}: unsupported type {kind!r}")

    def object(self, cls: type, value: object, name: str = "") -> object:
        prefix = f"{name}." if name else ""
        if not isinstance(value, dict):
            where = f"field {name!r} is" if name else "it is"
            raise self.fail(f"{where} {_short(value)}, not a JSON object")
        hints = typing.get_type_hints(cls)
        known = {f.name: f for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(value) - set(known) - (_HEADER if not name else set()))
        if unknown:
            raise self.fail(f"unknown field {prefix + unknown[0]!r}")
        kwargs = {}
        for key, spec in known.items():
            if key not in value:
                if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                    raise self.fail(f"field {prefix + key!r} is missing")
                continue
            kwargs[key] = self.value(hints[key], value[key], prefix + key)
        try:
            return cls(**kwargs)
        except InvalidInput as exc:  # a dataclass's own check (__post_init__) of values that fit their types
            raise self.fail(f"{prefix.rstrip('.') or 'the document'}: {exc}") from None


_HEADER = {"format", "format_version"}


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {}
        for spec in dataclasses.fields(value):
            item = getattr(value, spec.name)
            if item is None and spec.default is None:  # an optional field left out, as older writers did
                continue
            out[spec.name] = _encode(item)
        return out
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


@dataclasses.dataclass(frozen=True)
class Contract:
    """Base of every artifact contract: subclasses are frozen dataclasses with the class variables below."""

    FORMAT: ClassVar[str]
    VERSION: ClassVar[int]
    #: What the user runs to make the artifact again (in every error message).
    REBUILD: ClassVar[str]
    #: What the artifact is, for messages ("stripped model folder").
    WHAT: ClassVar[str] = "artifact"

    def to_json(self) -> dict:
        return {"format": self.FORMAT, "format_version": self.VERSION} | _encode(self)

    def write(self, path: str | Path, overwrite: bool = True) -> Path:
        """Write the document as JSON, atomically (an existing file is replaced only with ``overwrite``)."""
        return write_json(Path(path), self.to_json(), overwrite=overwrite)

    @classmethod
    def upgrade(cls, document: dict, version: object, source: str) -> dict:
        """An older version's document in this version's shape; the base knows none (subclasses extend it)."""
        raise ContractError(
            f"{source}: {cls.WHAT} of format {cls.FORMAT!r} version {version!r}, this fe2e-deploy reads version "
            f"{cls.VERSION} (rebuild it: {cls.REBUILD})"
        )

    @classmethod
    def from_json(cls, document: object, source: str | Path = "<document>") -> Self:
        """The contract of a JSON document; anything that does not fit is one :class:`ContractError`."""
        source, fix = str(source), f"rebuild it: {cls.REBUILD}"
        decoder = _Decoder(source, fix)
        if not isinstance(document, dict):
            raise decoder.fail(f"not a JSON object but {type(document).__name__}")
        found = document.get("format")
        if found != cls.FORMAT:
            raise decoder.fail(f"format {found!r} is not {cls.FORMAT!r} (not a {cls.WHAT})")
        version = document.get("format_version")
        if version != cls.VERSION:
            document = cls.upgrade(dict(document), version, source)
        return decoder.object(cls, document)

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """Read and check ``path`` (missing: :class:`MissingInput`; anything else wrong: :class:`ContractError`)."""
        path = Path(path)
        if not path.is_file():
            raise MissingInput(f"{path}: not found (the {cls.WHAT}'s description; make it with {cls.REBUILD})")
        return cls.from_json(read_json(path), path)
