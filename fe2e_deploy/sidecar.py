"""JSON sidecars next to built engines (``fe2e.plan.json``, ``fe2e_1024x768.pt2.json``): write and read back."""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import atomic_write


def sidecar_path(artifact: str | Path) -> Path:
    return Path(f"{artifact}.json")


def write_sidecar(artifact: str | Path, sidecar: dict) -> None:
    atomic_write(sidecar_path(artifact), lambda p: p.write_text(json.dumps(sidecar, indent=2) + "\n"))


def read_sidecar(artifact: str | Path, fmt: str, rebuild: str) -> dict:
    """The sidecar of ``artifact``; missing, corrupt or of another format is an error naming ``rebuild``."""
    path = sidecar_path(artifact)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing sidecar (rebuild with `{rebuild}`)")
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if sidecar.get("format") != fmt:
        raise ValueError(f"{path}: format {sidecar.get('format')!r} is not {fmt!r}")
    return sidecar
