"""JSON sidecars next to built engines (``fe2e.plan.json``, ``fe2e_1024x768.pt2.json``): write and read back.

Every reader of an artifact's JSON checks the fields it uses (:func:`check_fields`), so a corrupt
or hand-edited description is one error naming the file and the field, never a ``KeyError``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files.atomic import write_json
from ..resolution import parse_resolution

#: A field specification: a type (or tuple of types) the value must have, or a nested specification for an object.
FieldSpec = dict[str, "type | tuple[type, ...] | FieldSpec"]


def sidecar_path(artifact: str | Path) -> Path:
    return Path(f"{artifact}.json")


def write_sidecar(artifact: str | Path, sidecar: dict) -> None:
    write_json(sidecar_path(artifact), sidecar)


def read_sidecar(artifact: str | Path, fmt: str, rebuild: str) -> dict:
    """The sidecar of ``artifact``; missing, corrupt or of another format is an error naming ``rebuild``."""
    path = sidecar_path(artifact)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing sidecar (rebuild with `{rebuild}`)")
    return read_description(path, fmt)


def read_json(path: Path) -> object:
    """A JSON file's content; unreadable or invalid JSON is a ``ValueError`` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a JSON text file ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def read_description(path: Path, fmt: str) -> dict:
    """A JSON description of a built artifact whose ``format`` must be ``fmt``; corrupt or other formats refused."""
    description = read_json(path)
    if not isinstance(description, dict) or description.get("format") != fmt:
        found = description.get("format") if isinstance(description, dict) else type(description).__name__
        raise ValueError(f"{path}: format {found!r} is not {fmt!r}")
    return description


def _type_names(want: type | tuple[type, ...]) -> str:
    kinds = want if isinstance(want, tuple) else (want,)
    names = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number"}
    return " or ".join("null" if k is type(None) else names.get(k, k.__name__) for k in kinds)


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_fields(document: object, path: str | Path, fields: FieldSpec, fix: str, prefix: str = "") -> dict:
    """``document`` (an object) has every field of ``fields`` with the stated type; else one ``ValueError``
    naming ``path``, the field and ``fix`` (what to do: usually the command that rewrites the file)."""
    if not isinstance(document, dict):
        where = f"{prefix.rstrip('.')!r} is" if prefix else "is"
        raise ValueError(f"{path}: {where} not a JSON object ({fix})")
    for key, want in fields.items():
        name = f"{prefix}{key}"
        if key not in document:
            raise ValueError(f"{path}: field {name!r} is missing ({fix})")
        value = document[key]
        if isinstance(want, dict):
            check_fields(value, path, want, fix, f"{name}.")
            continue
        kinds = want if isinstance(want, tuple) else (want,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise ValueError(f"{path}: field {name!r} is {_short(value)}, not {_type_names(want)} ({fix})")
    return document


def recorded_resolution(text: object, path: Path, what: str, fix: str) -> tuple[int, int]:
    """A resolution an artifact records (``WIDTHxHEIGHT``); a malformed one is an error naming the file."""
    try:
        return parse_resolution(str(text))
    except ValueError as exc:
        raise ValueError(f"{path}: {what} {text!r} is not WIDTHxHEIGHT ({exc}); {fix}") from None
