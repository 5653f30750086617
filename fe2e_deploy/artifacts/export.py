"""Reading an ONNX export folder (``export`` writes it): ``manifest.json``, the graphs, ``weights.bin``.

Graph files are named ``<graph>_<W>x<H>.onnx``; the manifest lists each graph's file, inputs and
outputs (shapes, dtypes), the precision, the batch and the stripped model it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..processing import resolution_name

FORMAT, FORMAT_VERSION = "fe2e-onnx-export", 1


MANIFEST, WEIGHTS, SCALES = "manifest.json", "weights.bin", "fp8_scales.json"


def graph_file(name: str, width: int, height: int) -> str:
    return f"{name}_{resolution_name((width, height))}.onnx"


def load_manifest(export_dir: str | Path) -> dict:
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{export_dir}: not an export folder (no {MANIFEST}; run `fe2e-deploy export`)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r} v{FORMAT_VERSION}")
    return manifest
