"""FP8 scales files (``calibrate`` writes them): per-layer input/weight scales, checked when read."""

from __future__ import annotations

import math
from pathlib import Path

from ..files.atomic import write_json
from .sidecar import check_fields, read_json

FORMAT, FORMAT_VERSION = "fe2e-fp8-scales", 1
RECALIBRATE = "calibrate again with `fe2e-deploy calibrate`"
#: The fields readers use: the layers' scales and the stripped model they were measured on.
FIELDS = {"layers": dict, "stripped": {"sources": dict}}


def write_scales(document: dict, path: str | Path, overwrite: bool = False) -> Path:
    """Write a scales document as JSON, atomically; an existing file needs ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass --overwrite to replace it)")
    return write_json(path, document)


def load_scales(path: str | Path) -> dict:
    """A scales document (format checked; every layer's scales positive and finite)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FP8 scales not found (run `fe2e-deploy calibrate`)")
    document = read_json(path)
    if (
        not isinstance(document, dict)
        or document.get("format") != FORMAT
        or document.get("format_version") != FORMAT_VERSION
    ):
        raise ValueError(f"{path}: not an FP8 scales file ({FORMAT} v{FORMAT_VERSION}; {RECALIBRATE})")
    check_fields(document, path, FIELDS, RECALIBRATE)
    for name, entry in document["layers"].items():
        scales = (entry.get("input_scale"), entry.get("weight_scale")) if isinstance(entry, dict) else (entry,)
        if not all(isinstance(s, int | float) and math.isfinite(s) and s > 0 for s in scales):
            raise ValueError(f"{path}: layer {name} has invalid scales {scales} ({RECALIBRATE})")
    return document


DEFAULT_EXCLUDE = ("img_in", "final_layer.linear")
