"""``export``: the stripped model's deployment graphs to ONNX, one graph file per graph and resolution.

Layout of an export folder (``manifest.json`` describes it; later stages read only this folder):

```
EXPORT/manifest.json               format, source stripped model, dtype, opset, graphs and their I/O
EXPORT/weights.bin                 external data shared by every graph (each distinct tensor once)
EXPORT/vae_encoder_1024x768.onnx   image [B,3,H,W] in [-1,1]  -> latent [B,16,H/8,W/8]
EXPORT/dit_1024x768.onnx           ref_latent                 -> depth_latent, normal_latent
EXPORT/vae_decoder_1024x768.onnx   latent                     -> decoded [B,3,H,W] in [-1,1]
EXPORT/fe2e_1024x768.onnx          image                      -> depth [B,1,H,W], normals [B,3,H,W]
```

Graphs are exported with ``torch.onnx.export(dynamo=True)`` at opset 18, static shapes per
resolution (RoPE tables are constants of the resolution); ``dynamic_batch`` makes the batch axis
symbolic. Precision follows the stripped model: with BF16 weights the graph has BF16 matmuls and
attention between explicit Casts, FP32 residual stream, norms, modulation and RoPE, and an FP32
VAE: what a TensorRT strongly typed build needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import torch
from onnx.external_data_helper import ExternalDataInfo, uses_external_data
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..artifacts.export import FORMAT, FORMAT_VERSION, GRAPH_NAMES, MANIFEST, SCALES, WEIGHTS, graph_file
from ..artifacts.scales import load_scales
from ..artifacts.stripped import StrippedModel, load_stripped
from ..config import FE2E_RESOLUTIONS, LATENT_CHANNELS, LATENT_DOWNSAMPLE
from ..files.atomic import check_folder_target, staged_folder, write_json
from ..models.fp8 import FP8_OPSET, quantize_dit
from ..models.fused import DiTStep, FE2EGraph, VAEDecoder, VAEEncoder
from ..resolution import resolution_name

OPSET = 18
ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.FLOAT8E4M3FN: "float8_e4m3fn",
}


@dataclass(frozen=True)
class GraphSpec:
    """One exported graph: how to build it from the stripped model, its example inputs and I/O names."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    build: Callable[[StrippedModel, int, int], nn.Module]
    example: Callable[[int, int, int], tuple[torch.Tensor, ...]]


def _image(batch: int, width: int, height: int) -> tuple[torch.Tensor, ...]:
    return (torch.rand(batch, 3, height, width) * 2 - 1,)


def _latent(batch: int, width: int, height: int) -> tuple[torch.Tensor, ...]:
    return (torch.randn(batch, LATENT_CHANNELS, height // LATENT_DOWNSAMPLE, width // LATENT_DOWNSAMPLE),)


GRAPHS: dict[str, GraphSpec] = {
    spec.name: spec
    for spec in (
        GraphSpec("vae_encoder", ("image",), ("latent",), lambda m, w, h: VAEEncoder(m.vae), _image),
        GraphSpec(
            "dit",
            ("ref_latent",),
            ("depth_latent", "normal_latent"),
            lambda m, w, h: DiTStep(m.dit, h // LATENT_DOWNSAMPLE, w // LATENT_DOWNSAMPLE),
            _latent,
        ),
        GraphSpec("vae_decoder", ("latent",), ("decoded",), lambda m, w, h: VAEDecoder(m.vae), _latent),
        GraphSpec("fe2e", ("image",), ("depth", "normals"), lambda m, w, h: FE2EGraph(m.vae, m.dit, w, h), _image),
    )
}
assert tuple(GRAPHS) == GRAPH_NAMES  # the names readers (and --help) know


@dataclass
class ExportReport:
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)  # "fe2e_1024x768" -> path
    seconds: float = 0.0
    weights_bytes: int = 0


#: (logger, message prefix) of exporter messages a user cannot act on: torch.onnx's registry announcing that
#: torchvision ops are skipped, onnxscript's optimizer skipping a fold it cannot do
NOISY_RECORDS = (
    ("torch.onnx._internal.exporter._registration", "torchvision is not installed"),
    ("onnxscript.optimizer._constant_folding", "Skipping constant folding for op"),
)
#: loggers whose DEBUG traces (the whole exported program, per graph) are silenced unless TORCH_LOGS asks for them
TRACE_LOGGERS = ("torch.export", "torch._export")
#: torch's pytree deprecation, raised from inside torch.export's own code
NOISY_WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


class _DropRecords(logging.Filter):
    """Drop the records of one logger whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence exactly the exporter noise above while the block runs; logging and warnings are restored after.

    Other warnings and log records pass; ``TORCH_LOGS`` (an explicit request for torch's traces) is respected.
    """
    filters = [(logging.getLogger(name), _DropRecords(prefix)) for name, prefix in NOISY_RECORDS]
    levels = {} if os.environ.get("TORCH_LOGS") else {name: logging.getLogger(name).level for name in TRACE_LOGGERS}
    with warnings.catch_warnings():
        for message in NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        for logger, record_filter in filters:
            logger.addFilter(record_filter)
        for name in levels:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, record_filter in filters:
                logger.removeFilter(record_filter)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def export_module(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    dynamic_batch: bool = False,
    opset: int = OPSET,
) -> Path:
    """Export one module with the dynamo exporter, weights as external data next to ``path``.

    The exporter's messages a user cannot act on are silenced while it runs (:func:`quiet_exporter`).
    """
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=64)
        dynamic_shapes = tuple({0: batch} for _ in example)
    with torch.no_grad(), quiet_exporter():
        program = torch.onnx.export(
            module.eval(),
            example,
            dynamo=True,
            input_names=list(input_names),
            output_names=list(output_names),
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=True)
    return Path(path)


def share_external_data(graph_paths: list[Path], weights_path: Path) -> int:
    """Move every graph's external tensors into one file next to them, each distinct tensor stored once.

    ONNX keeps external tensors per graph; the four graphs x three resolutions of the real model
    would hold the 17 GB DiT six times. ONNX references external data by (location, offset,
    length), so graphs can share one file: we hash each tensor's bytes and point duplicates at the
    first copy. One tensor is in memory at a time. Returns the size of ``weights_path``.
    """
    offsets: dict[str, tuple[int, int]] = {}
    with open(weights_path, "wb") as out:
        for path in graph_paths:
            model = onnx.load(str(path), load_external_data=False)
            sources = set()
            for tensor in _all_tensors(model):
                if not uses_external_data(tensor):
                    continue
                info = ExternalDataInfo(tensor)
                source = path.parent / info.location
                sources.add(source)
                with open(source, "rb") as fh:
                    fh.seek(info.offset or 0)
                    data = fh.read(info.length) if info.length else fh.read()
                key = hashlib.sha256(data).hexdigest() + str(tensor.data_type) + str(list(tensor.dims))
                if key not in offsets:
                    pad = (-out.tell()) % 64  # keep tensors aligned for memory mapping
                    out.write(b"\0" * pad)
                    offsets[key] = (out.tell(), len(data))
                    out.write(data)
                offset, length = offsets[key]
                _point_to(tensor, weights_path.name, offset, length)
            onnx.save(model, str(path))
            for source in sources:
                source.unlink()
        return out.tell()


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    # onnx's set_external_data needs the bytes loaded (raw_data); we only rewrite the reference.
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def export_onnx(
    stripped: str | Path,
    out_dir: str | Path,
    *,
    resolutions: tuple[tuple[int, int], ...] = FE2E_RESOLUTIONS,
    graphs: tuple[str, ...] = tuple(GRAPHS),
    batch: int = 1,
    dynamic_batch: bool = False,
    dtype: torch.dtype | None = None,
    fp8_scales: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Export ``graphs`` at each resolution into the folder ``out_dir``, written whole or not at all.

    The folder is built beside ``out_dir`` and swapped in complete (:func:`fe2e_deploy.files.atomic.staged_folder`):
    an existing export is replaced only with ``overwrite``, a non-empty folder of another kind never.

    ``dtype`` casts the DiT weights (default: as stripped); the VAE and the constants stay FP32.
    ``fp8_scales`` (from ``calibrate``) turns the calibrated linears into FP8 Q/DQ (opset 19).
    """
    out_dir = Path(out_dir)
    unknown = [g for g in graphs if g not in GRAPHS]
    if unknown:
        raise ValueError(f"unknown graph(s) {unknown}; choose from {', '.join(GRAPHS)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    for w, h in resolutions:
        if w <= 0 or h <= 0 or w % 16 or h % 16:
            raise ValueError(f"resolution {w}x{h}: both sides must be positive multiples of 16")
    folder = {"overwrite": overwrite, "marker": MANIFEST, "what": "an ONNX export"}
    check_folder_target(out_dir, **folder)  # before loading; checked again when the folder is swapped in
    model = load_stripped(stripped, progress=progress)
    if dtype is not None:
        model.dit.cast_weights(dtype)
    compute_dtype = str(model.dit.dtype).removeprefix("torch.")
    scales = load_scales(fp8_scales) if fp8_scales is not None else None
    if scales is not None:
        if scales["stripped"]["sources"] != model.meta["sources"]:
            raise ValueError(f"{fp8_scales}: calibrated on another stripped model ({scales['stripped']['path']})")
        quantize_dit(model.dit, scales)
    opset = FP8_OPSET if scales is not None else OPSET
    start = time.perf_counter()
    report = ExportReport(out_dir)
    entries = {}
    # the whole folder (graphs, weights.bin, scales, manifest) is built in a hidden sibling, then swapped in:
    # never new weights under an old manifest, and nothing of the old export (e.g. its check.json) survives
    with staged_folder(out_dir, **folder) as tmp_dir:
        jobs = [(r, g) for r in resolutions for g in graphs]
        for (w, h), name in tqdm(jobs, desc="export", unit="graph", disable=not progress):
            spec = GRAPHS[name]
            # torch.export specialises a size-1 dimension, so a dynamic batch is traced at 2.
            example = spec.example(max(batch, 2) if dynamic_batch else batch, w, h)
            module = spec.build(model, w, h)
            path = tmp_dir / graph_file(name, w, h)
            path = export_module(module, example, path, spec.inputs, spec.outputs, dynamic_batch, opset)
            key = path.stem
            entries[key] = _graph_entry(path.relative_to(tmp_dir), spec, path, example, dynamic_batch)
        graph_paths = [tmp_dir / e["file"] for e in entries.values()]
        report.weights_bytes = share_external_data(graph_paths, tmp_dir / WEIGHTS)
        for path in graph_paths:  # onnx.checker follows the external data references
            onnx.checker.check_model(str(path))
        if scales is not None:  # the check rebuilds the fake-quantised PyTorch model from these
            write_json(tmp_dir / SCALES, scales)
        report.seconds = time.perf_counter() - start
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "fe2e_deploy": __version__,
            "torch": torch.__version__,
            "opset": opset,
            "dtype": compute_dtype,
            "precision": "fp8" if scales is not None else compute_dtype,
            "fp8_scales": SCALES if scales is not None else None,
            "batch": "dynamic" if dynamic_batch else batch,
            "resolutions": [resolution_name(r) for r in resolutions],
            "stripped": {"path": str(stripped), "meta": model.meta["sources"], "txt_len": model.meta["txt_len"]},
            "model_config": model.meta["model_config"],
            "weights": {"file": WEIGHTS, "bytes": report.weights_bytes},
            "graphs": entries,
            "export_seconds": round(report.seconds, 2),
        }
        write_json(tmp_dir / MANIFEST, manifest)
    report.files = {k: out_dir / e["file"] for k, e in entries.items()}
    return report


def _graph_entry(rel: Path, spec: GraphSpec, path: Path, example, dynamic_batch: bool) -> dict:
    """The manifest entry of an exported graph: its file and I/O shapes/dtypes.

    Output shapes are read from the exported graph itself (headers only): running the module
    eagerly to describe them cost ~12 minutes of an 18-minute full-size export on a CPU.
    """
    graph = onnx.load(str(path), load_external_data=False).graph
    declared = {o.name: o.type.tensor_type for o in graph.output}

    def shape(dims: list) -> list:
        return ["batch", *dims[1:]] if dynamic_batch else dims

    def describe_output(name: str) -> dict:
        if name not in declared:
            raise ValueError(f"{path}: the exported graph has no output {name!r} (outputs: {sorted(declared)})")
        ttype = declared[name]
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in ttype.shape.dim]
        return {"shape": shape(dims), "dtype": ONNX_DTYPES.get(ttype.elem_type, str(ttype.elem_type))}

    return {
        "file": str(rel),
        "inputs": {
            n: {"shape": shape(list(t.shape)), "dtype": str(t.dtype).removeprefix("torch.")}
            for n, t in zip(spec.inputs, example, strict=True)
        },
        "outputs": {n: describe_output(n) for n in spec.outputs},
    }
