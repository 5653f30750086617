"""Reading an ONNX export folder (``export`` writes it): ``manifest.json``, the graphs, ``weights.bin``.

Graph files are named ``<graph>_<W>x<H>.onnx``; the manifest lists each graph's file, inputs and
outputs (shapes, dtypes), the precision, the batch and the stripped model it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..resolution import parse_resolution, resolution_name

FORMAT, FORMAT_VERSION = "fe2e-onnx-export", 1


MANIFEST, WEIGHTS, SCALES = "manifest.json", "weights.bin", "fp8_scales.json"


#: The graphs an export can hold (``compile/onnx_export.GRAPHS`` builds them), in export order.
GRAPH_NAMES = ("vae_encoder", "dit", "vae_decoder", "fe2e")


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


def graph_entries(manifest: dict, graph: str) -> dict[tuple[int, int], dict]:
    """The manifest entries of one graph (``fe2e``, ``dit``, ...) by resolution (width, height)."""
    out = {}
    for key, entry in manifest["graphs"].items():
        name, _, res = key.rpartition("_")
        if name == graph:
            out[parse_resolution(entry.get("resolution", res))] = entry
    return out


def fused_graphs(manifest: dict) -> dict[tuple[int, int], dict]:
    """The fused ``fe2e`` graphs of an export by resolution."""
    return graph_entries(manifest, "fe2e")
