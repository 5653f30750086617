"""Reading an ONNX export folder (``export`` writes it): ``manifest.json``, the graphs, ``weights.bin``.

Graph files are named ``<graph>_<W>x<H>.onnx``; the manifest lists each graph's file, inputs and
outputs (shapes, dtypes), the precision, the batch and the stripped model it came from.
"""

from __future__ import annotations

from pathlib import Path

from ..resolution import resolution_name
from .sidecar import check_fields, read_json, recorded_resolution

FORMAT, FORMAT_VERSION = "fe2e-onnx-export", 1


MANIFEST, WEIGHTS, SCALES = "manifest.json", "weights.bin", "fp8_scales.json"


REEXPORT = "export it again with `fe2e-deploy export`"
#: The manifest fields readers use (engines, build-trt, the check), and those of each graph entry.
MANIFEST_FIELDS = {"graphs": dict, "batch": (int, str), "dtype": str}
GRAPH_FIELDS = {"file": str}


#: The graphs an export can hold (``compile/onnx_export.GRAPHS`` builds them), in export order.
GRAPH_NAMES = ("vae_encoder", "dit", "vae_decoder", "fe2e")


def graph_file(name: str, width: int, height: int) -> str:
    return f"{name}_{resolution_name((width, height))}.onnx"


def load_manifest(export_dir: str | Path) -> dict:
    """An export's manifest, its format and the fields readers use checked (one error naming the file)."""
    path = Path(export_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{export_dir}: not an export folder (no {MANIFEST}; run `fe2e-deploy export`)")
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: not a JSON object ({REEXPORT})")
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r} v{FORMAT_VERSION}")
    check_fields(manifest, path, MANIFEST_FIELDS, REEXPORT)
    for key, entry in manifest["graphs"].items():
        check_fields(entry, path, GRAPH_FIELDS, REEXPORT, f"graphs.{key}.")
        if Path(entry["file"]).name != entry["file"]:
            raise ValueError(f"{path}: graph file {entry['file']!r} is not a file name ({REEXPORT})")
        _resolution(path, entry.get("resolution", key.rpartition("_")[2]))
    batch = manifest["batch"]
    if batch != "dynamic" and (isinstance(batch, str) or batch < 1):
        raise ValueError(f"{path}: batch {batch!r} is neither a positive number nor 'dynamic' ({REEXPORT})")
    return manifest


def _resolution(path: Path, text: object) -> tuple[int, int]:
    return recorded_resolution(text, path, "graph resolution", REEXPORT)


def read_graph(path: str | Path):
    """An exported graph's structure (``onnx.ModelProto``) without its weights, its external data checked.

    A missing, truncated or foreign graph file, or a ``weights.bin`` shorter than the graph needs,
    is one error naming the file (before ONNX Runtime or TensorRT sees it).
    """
    import onnx  # noqa: PLC0415  (only where graphs are read)
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX graph not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ValueError(f"{path}: not a readable ONNX graph ({reason}); {REEXPORT}") from None
    if not model.graph.node:
        raise ValueError(f"{path}: not a readable ONNX graph (no nodes: empty or truncated); {REEXPORT}")
    check_external_data(model, path)
    return model


def check_external_data(model, path: Path) -> None:
    """Every weight the graph keeps outside (``weights.bin``) exists and is within the file's size."""
    needed: dict[str, int] = {}
    for tensor in model.graph.initializer:
        if tensor.data_location != 1:  # onnx.TensorProto.EXTERNAL
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        end = int(info.get("offset") or 0) + int(info.get("length") or 0)
        needed[location] = max(needed.get(location, 0), end)
    for location, end in needed.items():
        file = path.parent / location
        if Path(location).name != location or not file.is_file():
            raise FileNotFoundError(f"{file}: the weights of {path.name} are missing ({REEXPORT})")
        size = file.stat().st_size
        if size < end:
            raise ValueError(
                f"{file}: truncated ({size:,} bytes, {path.name} needs {end:,}); copy it again or {REEXPORT}"
            )


def graph_entries(manifest: dict, graph: str) -> dict[tuple[int, int], dict]:
    """The manifest entries of one graph (``fe2e``, ``dit``, ...) by resolution (width, height)."""
    out = {}
    for key, entry in manifest["graphs"].items():
        name, _, res = key.rpartition("_")
        if name == graph:
            out[_resolution(MANIFEST, entry.get("resolution", res))] = entry
    return out


def fused_graphs(manifest: dict) -> dict[tuple[int, int], dict]:
    """The fused ``fe2e`` graphs of an export by resolution."""
    return graph_entries(manifest, "fe2e")
