"""``build-trt``: a TensorRT (>= 10) strongly typed engine from an exported fused graph.

Strongly typed: TensorRT takes every tensor's precision from the graph, so ``--precision bf16``
needs a BF16 export (``export --dtype bf16``) and ``--precision fp8`` a graph with FP8 Q/DQ nodes
(``export --precision fp8``); both are checked before TensorRT is imported. Next to the plan goes
a JSON sidecar (GPU, compute capability, TensorRT version, resolution, batch, source graph) that
the runtime checks before running the plan.

The build goes through Polygraphy's TensorRT loaders (ONNX parsing, builder config, profiles,
timing cache). TensorRT and Polygraphy are the optional extra (``pip install fe2e-deploy[tensorrt]``)
and need an NVIDIA GPU; this module imports them only inside :func:`build_trt_engine`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from .. import __version__
from ..artifacts.export import load_manifest
from ..artifacts.sidecar import write_sidecar
from ..artifacts.tensorrt import SIDECAR_FORMAT, TRT_PRECISIONS, TensorRTUnavailable, _gpu_identity, import_tensorrt
from ..config import finite_number
from ..files.atomic import atomic_write


@dataclass(frozen=True)
class GraphFacts:
    """What the builder needs to know about an exported fused graph, read without its weights."""

    path: Path
    dtype: str
    has_fp8_qdq: bool
    inputs: dict[str, list]
    batch: int | str
    resolution: str


def inspect_graph(onnx_path: str | Path) -> GraphFacts:
    """Read the export manifest entry and the graph's nodes (no weights loaded)."""
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ONNX graph not found")
    manifest = load_manifest(path.parent)
    entry = next((e for k, e in manifest["graphs"].items() if e["file"] == path.name), None)
    if entry is None:
        raise ValueError(f"{path}: not listed in {path.parent / 'manifest.json'}")
    graph = onnx.load(str(path), load_external_data=False).graph
    fp8 = onnx.TensorProto.FLOAT8E4M3FN
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    fp8_typed = any(t.data_type == fp8 for t in graph.initializer) or any(
        a.name == "output_dtype" and a.i == fp8 for n in qdq for a in n.attribute
    )
    has_fp8 = bool(qdq) and fp8_typed
    resolution = path.stem.rsplit("_", 1)[1]
    inputs = {name: desc["shape"] for name, desc in entry["inputs"].items()}
    return GraphFacts(path, manifest["dtype"], has_fp8, inputs, manifest["batch"], resolution)


def check_precision(facts: GraphFacts, precision: str) -> None:
    """A strongly typed build gets its precision from the graph: refuse a graph of another precision."""
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"precision {precision!r} not supported; choose one of {', '.join(TRT_PRECISIONS)}")
    if precision == "bf16" and (facts.dtype != "bfloat16" or facts.has_fp8_qdq):
        raise ValueError(
            f"{facts.path}: --precision bf16 needs a BF16 graph without FP8 Q/DQ "
            f"(this one: {facts.dtype}{', FP8 Q/DQ' if facts.has_fp8_qdq else ''}); export with --dtype bf16"
        )
    if precision == "fp8" and not facts.has_fp8_qdq:
        raise ValueError(f"{facts.path}: --precision fp8 needs a graph with FP8 Q/DQ nodes (export --precision fp8)")


def build_trt_engine(
    onnx_path: str | Path,
    out: str | Path,
    *,
    precision: str = "bf16",
    opt_level: int = 3,
    timing_cache: str | Path | None = None,
    weight_streaming: bool = False,
    max_batch: int = 4,
    workspace_gib: float | None = None,
    overwrite: bool = False,
) -> dict:
    """Build and write the plan and its sidecar; returns the sidecar."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists (pass --overwrite to replace it)")
    if workspace_gib is not None:
        finite_number(workspace_gib, "--workspace-gib", positive=True)
    facts = inspect_graph(onnx_path)
    check_precision(facts, precision)
    if not 0 <= opt_level <= 5:
        raise ValueError(f"builder optimization level must be 0-5, got {opt_level}")
    trt = import_tensorrt()
    # Polygraphy's loaders do the TensorRT plumbing (network flags, parser errors, profiles, timing
    # cache with file locking); imported here because it is part of the optional TensorRT extra.
    try:
        from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile  # noqa: PLC0415
        from polygraphy.exception import PolygraphyException  # noqa: PLC0415
    except ImportError as exc:
        raise TensorRTUnavailable(f"Polygraphy is not installed: pip install 'fe2e-deploy[tensorrt]' ({exc})") from None

    # TensorRT 11 builds strongly typed networks only and dropped the flag; older versions need it.
    typed = {"strongly_typed": True} if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED") else {}
    network = NetworkFromOnnxPath(str(facts.path), **typed)  # follows the external weights.bin
    profiles = None
    if facts.batch == "dynamic":  # one profile over the batch axis at the exported resolution
        profile = Profile()
        for name, shape in facts.inputs.items():
            dims = list(shape[1:])
            profile.add(name, min=[1, *dims], opt=[1, *dims], max=[max_batch, *dims])
        profiles = [profile]
    config = CreateConfig(
        profiles=profiles,
        builder_optimization_level=opt_level,
        memory_pool_limits={trt.MemoryPoolType.WORKSPACE: int(workspace_gib * 2**30)} if workspace_gib else None,
        weight_streaming=weight_streaming or None,
        load_timing_cache=str(timing_cache) if timing_cache and Path(timing_cache).is_file() else None,
    )
    start = time.perf_counter()
    try:
        plan = EngineBytesFromNetwork(network, config, save_timing_cache=str(timing_cache) if timing_cache else None)()
    except PolygraphyException as exc:
        raise ValueError(f"{facts.path}: TensorRT could not build it: {exc}") from None
    if plan is None:
        raise RuntimeError(f"{facts.path}: TensorRT build failed (see the log above)")
    seconds = time.perf_counter() - start
    atomic_write(out, lambda p: p.write_bytes(bytes(plan)))
    sidecar = {
        "format": SIDECAR_FORMAT,
        "fe2e_deploy": __version__,
        "tensorrt": trt.__version__,
        "gpu": _gpu_identity(),
        "precision": precision,
        "resolution": facts.resolution,
        "batch": {"min": 1, "max": max_batch} if facts.batch == "dynamic" else facts.batch,
        "source": {"onnx": str(facts.path), "dtype": facts.dtype},
        "weight_streaming": weight_streaming,
        "builder_optimization_level": opt_level,
        "build_seconds": round(seconds, 1),
    }
    write_sidecar(out, sidecar)
    return sidecar
