"""JSON sidecars next to built engines (``fe2e.plan.json``, ``fe2e_1024x768.pt2.json``): write and read back."""

from __future__ import annotations

import json
from pathlib import Path

from ..files.atomic import atomic_write


def sidecar_path(artifact: str | Path) -> Path:
    return Path(f"{artifact}.json")


def write_sidecar(artifact: str | Path, sidecar: dict) -> None:
    atomic_write(sidecar_path(artifact), lambda p: p.write_text(json.dumps(sidecar, indent=2) + "\n"))


def read_sidecar(artifact: str | Path, fmt: str, rebuild: str) -> dict:
    """The sidecar of ``artifact``; missing, corrupt or of another format is an error naming ``rebuild``."""
    path = sidecar_path(artifact)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing sidecar (rebuild with `{rebuild}`)")
    return read_description(path, fmt)


def read_description(path: Path, fmt: str) -> dict:
    """A JSON description of a built artifact whose ``format`` must be ``fmt``; corrupt or other formats refused."""
    try:
        description = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(description, dict) or description.get("format") != fmt:
        found = description.get("format") if isinstance(description, dict) else type(description).__name__
        raise ValueError(f"{path}: format {found!r} is not {fmt!r}")
    return description
