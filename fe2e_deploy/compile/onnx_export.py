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
from ..artifacts.export import ExportManifest, ExportSource, GraphEntry, TensorSpec, WeightsFile
from ..artifacts.scales import load_scales
from ..artifacts.stripped import read_stripped_meta
from ..config import FE2E_RESOLUTIONS, LATENT_DOWNSAMPLE
from ..errors import InvalidInput
from ..files.atomic import check_folder_target, staged_folder
from ..graph_io import DIT, FE2E, GRAPHS, MAX_DYNAMIC_BATCH, VAE_DECODER, VAE_ENCODER, BatchProfile, GraphIO, check_size
from ..loading.stripped import StrippedModel, load_stripped
from ..models.fp8 import FP8_OPSET, quantize_dit
from ..models.fused import DiTStep, FE2EGraph, VAEDecoder, VAEEncoder
from ..precision import parse_precision, precision_of, torch_dtype
from ..resolution import resolution_name

OPSET = 18
ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.FLOAT8E4M3FN: "float8_e4m3fn",
}


#: How each graph of :data:`fe2e_deploy.graph_io.GRAPHS` is built from the stripped model at a size (width, height).
BUILDERS: dict[str, Callable[[StrippedModel, int, int], nn.Module]] = {
    VAE_ENCODER.name: lambda m, w, h: VAEEncoder(m.vae),
    DIT.name: lambda m, w, h: DiTStep(m.dit, h // LATENT_DOWNSAMPLE, w // LATENT_DOWNSAMPLE),
    VAE_DECODER.name: lambda m, w, h: VAEDecoder(m.vae),
    FE2E.name: lambda m, w, h: FE2EGraph(m.vae, m.dit, w, h),
}
assert tuple(BUILDERS) == tuple(GRAPHS)


def example_inputs(io: GraphIO, batch: int, size: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Random inputs of the graph's shapes: images in [-1, 1], latents N(0, 1)."""
    out = []
    for tensor in io.inputs:
        shape = tensor.shape(batch, *size)
        out.append(torch.rand(*shape) * 2 - 1 if tensor.downsample == 1 else torch.randn(*shape))
    return tuple(out)


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
        batch = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
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
    dtype: str | torch.dtype | None = None,
    precision: str | None = None,
    fp8_scales: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ExportReport:
    """Export ``graphs`` at each resolution into the folder ``out_dir``, written whole or not at all.

    The folder is built beside ``out_dir`` and swapped in complete (:func:`fe2e_deploy.files.atomic.staged_folder`):
    an existing export is replaced only with ``overwrite``, a non-empty folder of another kind never.

    ``dtype`` (fp32 or bf16) casts the DiT weights (default: as stripped); the VAE and the constants stay
    FP32. ``precision="fp8"`` with ``fp8_scales`` (from ``calibrate``) turns the calibrated linears into
    FP8 Q/DQ (opset 19). ``batch``: the static batch, or with ``dynamic_batch`` a symbolic batch axis
    (1 to :data:`~fe2e_deploy.graph_io.MAX_DYNAMIC_BATCH`). Every input is checked before the model loads.
    """
    out_dir = Path(out_dir)
    unknown = [g for g in graphs if g not in GRAPHS]
    if unknown:
        raise InvalidInput(f"unknown graph(s) {unknown}; choose from {', '.join(GRAPHS)}")
    if not graphs or not resolutions:
        raise InvalidInput("nothing to export: give at least one graph and one resolution")
    profile = BatchProfile.dynamic(MAX_DYNAMIC_BATCH) if dynamic_batch else BatchProfile.fixed(batch)
    sizes = [check_size(r) for r in resolutions]
    cast = parse_precision(str(dtype), ("fp32", "bf16")) if dtype is not None else None
    if precision not in (None, "fp8"):
        raise InvalidInput(f"precision {precision!r} not supported; use fp8 (with --scales) or --dtype")
    if (precision == "fp8") != (fp8_scales is not None):
        raise InvalidInput("--precision fp8 needs --scales (from `fe2e-deploy calibrate`), and only it takes them")
    folder = {"overwrite": overwrite, "marker": ExportManifest.FILE, "what": "an ONNX export"}
    check_folder_target(out_dir, **folder)  # before loading; checked again when the folder is swapped in
    meta = read_stripped_meta(stripped)
    scales = load_scales(fp8_scales) if fp8_scales is not None else None
    if scales is not None:
        scales.check_model(meta, fp8_scales)
    model = load_stripped(stripped, progress=progress)
    if cast is not None:
        model.dit.cast_weights(torch_dtype(cast))
    compute = precision_of(model.dit.dtype)
    if scales is not None:
        quantize_dit(model.dit, scales.layers)
    opset = FP8_OPSET if scales is not None else OPSET
    start = time.perf_counter()
    report = ExportReport(out_dir)
    entries: dict[str, GraphEntry] = {}
    # the whole folder (graphs, weights.bin, scales, manifest) is built in a hidden sibling, then swapped in:
    # never new weights under an old manifest, and nothing of the old export (e.g. its check.json) survives
    with staged_folder(out_dir, **folder) as tmp_dir:
        jobs = [(size, GRAPHS[g]) for size in sizes for g in graphs]
        for size, io in tqdm(jobs, desc="export", unit="graph", disable=not progress):
            # torch.export specialises a size-1 dimension, so a dynamic batch is traced at 2.
            example = example_inputs(io, 2 if dynamic_batch else batch, size)
            module = BUILDERS[io.name](model, *size)
            path = export_module(
                module, example, tmp_dir / io.file_name(size), io.input_names, io.output_names, dynamic_batch, opset
            )
            entries[path.stem] = graph_entry(path, io, size, None if dynamic_batch else batch)
        graph_paths = [tmp_dir / e.file for e in entries.values()]
        report.weights_bytes = share_external_data(graph_paths, tmp_dir / ExportManifest.WEIGHTS)
        for path in graph_paths:  # onnx.checker follows the external data references
            onnx.checker.check_model(str(path))
        if scales is not None:  # the check rebuilds the fake-quantised PyTorch model from these
            scales.write(tmp_dir / ExportManifest.SCALES)
        report.seconds = time.perf_counter() - start
        manifest = ExportManifest(
            fe2e_deploy=__version__,
            torch=torch.__version__,
            opset=opset,
            precision="fp8" if scales is not None else compute,
            compute=compute,
            fp8_scales=ExportManifest.SCALES if scales is not None else None,
            batch=profile,
            stripped=ExportSource(path=str(stripped), sources=meta.sources, txt_len=meta.txt_len),
            model_config=meta.model_config,
            weights=WeightsFile(file=ExportManifest.WEIGHTS, bytes=report.weights_bytes),
            graphs=entries,
            export_seconds=round(report.seconds, 2),
        )
        manifest.write(tmp_dir / ExportManifest.FILE)
    report.files = {k: out_dir / e.file for k, e in entries.items()}
    return report


def graph_entry(path: Path, io: GraphIO, size: tuple[int, int], batch: int | None) -> GraphEntry:
    """The manifest entry of an exported graph, read from the graph's own header and checked against ``io``.

    ``batch`` None: a dynamic batch axis. Shapes come from the exported graph (headers only: running
    the module eagerly to describe them cost ~12 minutes of an 18-minute full-size export on a CPU);
    a graph whose names, dtypes or shapes differ from :mod:`fe2e_deploy.graph_io` is an exporter bug.
    """
    graph = onnx.load(str(path), load_external_data=False).graph

    def specs(values, tensors) -> dict[str, TensorSpec]:
        declared = {v.name: v.type.tensor_type for v in values}
        if list(declared) != [t.name for t in tensors]:
            raise AssertionError(
                f"{path}: exported with {list(declared)}, the contract says {[t.name for t in tensors]}"
            )
        out = {}
        for tensor in tensors:
            ttype = declared[tensor.name]
            dims = [d.dim_value if d.HasField("dim_value") else "batch" for d in ttype.shape.dim]
            dtype = ONNX_DTYPES.get(ttype.elem_type, str(ttype.elem_type))
            want = tensor.shape("batch" if batch is None else batch, *size)
            if dims != want or dtype != tensor.dtype:
                raise AssertionError(
                    f"{path}: {tensor.name} is {dtype} {dims}, the contract says {tensor.dtype} {want}"
                )
            out[tensor.name] = TensorSpec(dims, dtype)
        return out

    return GraphEntry(
        graph=io.name,
        resolution=resolution_name(size),
        file=path.name,
        inputs=specs(graph.input, io.inputs),
        outputs=specs(graph.output, io.outputs),
    )
