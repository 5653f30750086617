"""The ONNX export folder (``export`` writes it): its contract :class:`ExportManifest`, its graphs and weights.

``EXPORT/manifest.json`` lists each graph's file (``<graph>_<W>x<H>.onnx``, :mod:`fe2e_deploy.graph_io`),
inputs and outputs (shapes, dtypes), the precision, the batch profile and the stripped model it came
from; every graph keeps its weights in the shared ``EXPORT/weights.bin``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import InvalidInput, MissingInput
from ..graph_io import GRAPHS, MAX_DYNAMIC_BATCH, BatchProfile
from ..precision import parse_precision
from ..resolution import parse_resolution
from .contract import Contract, ContractError
from .stripped import StrippedSources

REEXPORT = "export it again with `fe2e-deploy export`"


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as exported: its shape (``"batch"`` for a dynamic axis) and dtype (numpy name)."""

    shape: list[int | str]
    dtype: str


@dataclass(frozen=True)
class GraphEntry:
    """One exported graph: which graph (:data:`fe2e_deploy.graph_io.GRAPHS`), at which resolution, in which file."""

    graph: str
    resolution: str
    file: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]

    def __post_init__(self) -> None:
        io = GRAPHS.get(self.graph)
        if io is None:
            raise InvalidInput(f"graph {self.graph!r} is none of {', '.join(GRAPHS)}")
        parse_resolution(self.resolution)
        if Path(self.file).name != self.file:
            raise InvalidInput(f"graph file {self.file!r} is not a file name")
        if tuple(self.inputs) != io.input_names or tuple(self.outputs) != io.output_names:
            raise InvalidInput(
                f"{self.file}: inputs {list(self.inputs)} and outputs {list(self.outputs)} are not those of the "
                f"{self.graph} graph ({list(io.input_names)} -> {list(io.output_names)})"
            )

    @property
    def size(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)


@dataclass(frozen=True)
class WeightsFile:
    file: str
    bytes: int


@dataclass(frozen=True)
class ExportSource:
    """The stripped model an export was made from."""

    path: str
    sources: StrippedSources
    txt_len: int


@dataclass(frozen=True)
class ExportManifest(Contract):
    """``manifest.json`` of an export folder."""

    FORMAT: ClassVar[str] = "fe2e-onnx-export"
    VERSION: ClassVar[int] = 2
    REBUILD: ClassVar[str] = "`fe2e-deploy export`"
    WHAT: ClassVar[str] = "ONNX export"
    FILE: ClassVar[str] = "manifest.json"
    WEIGHTS: ClassVar[str] = "weights.bin"
    SCALES: ClassVar[str] = "fp8_scales.json"

    fe2e_deploy: str
    torch: str
    opset: int
    precision: str  # fp32, bf16 or fp8 (FP8 Q/DQ linears computing in ``compute``)
    compute: str  # the DiT's compute precision: fp32 or bf16 (the VAE is FP32 in every export)
    fp8_scales: str | None  # the scales file copied into the folder (FP8 exports)
    batch: BatchProfile
    stripped: ExportSource
    model_config: dict[str, Any]
    weights: WeightsFile
    graphs: dict[str, GraphEntry]  # key: the file's stem, e.g. fe2e_1024x768
    export_seconds: float

    def __post_init__(self) -> None:
        if parse_precision(self.precision) != self.precision or parse_precision(self.compute) != self.compute:
            raise InvalidInput(f"precision {self.precision!r} / compute {self.compute!r} are not fp32, bf16 or fp8")

    def graph_files(self, graph: str) -> dict[tuple[int, int], GraphEntry]:
        """The entries of one graph (``fe2e``, ``dit``, ...) by processing size (width, height)."""
        return {entry.size: entry for entry in self.graphs.values() if entry.graph == graph}

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """Every processing size the export has a graph at."""
        return sorted({entry.size for entry in self.graphs.values()})

    @classmethod
    def upgrade(cls, document: dict, version: object, source: str) -> dict:
        """Version 1 (fe2e-deploy 0.1 before the typed contracts): same content, other spellings."""
        if version != 1:
            return super().upgrade(document, version, source)
        try:
            graphs = {}
            for key, entry in document["graphs"].items():
                name, _, resolution = key.rpartition("_")
                graphs[key] = {"graph": name, "resolution": resolution, **entry}
            batch = document["batch"]
            low, high = (1, MAX_DYNAMIC_BATCH) if batch == "dynamic" else (batch, batch)  # v1: "dynamic" was 1-64
            profile = {"min": low, "opt": low, "max": high}
            stripped = document["stripped"]
            out = {k: v for k, v in document.items() if k not in ("dtype", "resolutions", "batch", "stripped")}
            return out | {
                "format_version": cls.VERSION,
                "compute": parse_precision(document["dtype"]),
                "precision": parse_precision(document.get("precision") or document["dtype"]),
                "batch": profile,
                "stripped": {"path": stripped["path"], "sources": stripped["meta"], "txt_len": stripped["txt_len"]},
                "graphs": graphs,
            }
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ContractError(f"{source}: a version 1 manifest that cannot be read ({exc}); {REEXPORT}") from None


def load_manifest(export_dir: str | Path) -> ExportManifest:
    """An export folder's manifest, checked (one error naming the file and field)."""
    export_dir = Path(export_dir)
    path = export_dir / ExportManifest.FILE
    if not path.is_file():
        raise MissingInput(f"{export_dir}: not an export folder (no {ExportManifest.FILE}; run `fe2e-deploy export`)")
    return ExportManifest.read(path)


def read_graph(path: str | Path):
    """An exported graph's structure (``onnx.ModelProto``) without its weights, its external data checked.

    A missing, truncated or foreign graph file, or a ``weights.bin`` shorter than the graph needs,
    is one error naming the file (before ONNX Runtime or TensorRT sees it).
    """
    import onnx  # noqa: PLC0415  (only where graphs are read)
    from google.protobuf.message import DecodeError  # noqa: PLC0415

    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: ONNX graph not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise InvalidInput(f"{path}: not a readable ONNX graph ({reason}); {REEXPORT}") from None
    if not model.graph.node:
        raise InvalidInput(f"{path}: not a readable ONNX graph (no nodes: empty or truncated); {REEXPORT}")
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
            raise MissingInput(f"{file}: the weights of {path.name} are missing ({REEXPORT})")
        size = file.stat().st_size
        if size < end:
            raise InvalidInput(
                f"{file}: truncated ({size:,} bytes, {path.name} needs {end:,}); copy it again or {REEXPORT}"
            )
