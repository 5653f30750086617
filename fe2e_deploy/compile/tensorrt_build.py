"""``build-trt``: a TensorRT (>= 10) strongly typed engine from an exported fused graph.

Strongly typed: TensorRT takes every tensor's precision from the graph, so ``--precision bf16``
needs a BF16 export (``export --dtype bf16``) and ``--precision fp8`` a graph with FP8 Q/DQ nodes
(``export --precision fp8``); both are checked before TensorRT is imported. Next to the plan goes
its sidecar (:class:`~fe2e_deploy.artifacts.tensorrt.TensorRTPlan`: GPU, TensorRT version,
resolution, batch profile, source graph) that the runtime checks before running the plan.

The build goes through Polygraphy's TensorRT loaders (ONNX parsing, builder config, profiles,
timing cache). The optimisation profile of a dynamic-batch export covers batch 1..``max_batch`` at
the exported resolution, its shapes from :data:`fe2e_deploy.graph_io.FE2E`. TensorRT and Polygraphy
are the optional extra (``pip install fe2e-deploy[tensorrt]``) and need an NVIDIA GPU; this module
imports them only inside :func:`build_trt_engine`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import onnx

from .. import __version__
from ..artifacts.export import GraphEntry, load_manifest, read_graph
from ..artifacts.tensorrt import (
    TRT_PRECISIONS,
    GpuIdentity,
    PlanSource,
    TensorRTPlan,
    TensorRTUnavailable,
    import_tensorrt,
)
from ..config import finite_number
from ..errors import InvalidInput, MissingInput
from ..files.atomic import atomic_write, refuse_existing
from ..graph_io import FE2E, BatchProfile


@dataclass(frozen=True)
class GraphFacts:
    """What the builder needs to know about an exported fused graph, read without its weights."""

    path: Path
    entry: GraphEntry
    precision: str  # of the export: fp32, bf16 or fp8
    has_fp8_qdq: bool
    batch: BatchProfile  # what the export allows


def inspect_graph(onnx_path: str | Path) -> GraphFacts:
    """The export manifest's entry of a fused graph and the graph's nodes (no weights loaded)."""
    path = Path(onnx_path)
    if not path.is_file():
        raise MissingInput(f"{path}: ONNX graph not found")
    manifest = load_manifest(path.parent)
    entry = next((e for e in manifest.graphs.values() if e.file == path.name), None)
    if entry is None:
        raise InvalidInput(f"{path}: not listed in {path.parent / manifest.FILE}")
    if entry.graph != FE2E.name:
        raise InvalidInput(
            f"{path}: a {entry.graph} graph; build-trt builds the fused graph ({FE2E.file_name(entry.size)})"
        )
    graph = read_graph(path).graph
    fp8 = onnx.TensorProto.FLOAT8E4M3FN
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    fp8_typed = any(t.data_type == fp8 for t in graph.initializer) or any(
        a.name == "output_dtype" and a.i == fp8 for n in qdq for a in n.attribute
    )
    return GraphFacts(path, entry, manifest.precision, bool(qdq) and fp8_typed, manifest.batch)


def check_precision(facts: GraphFacts, precision: str) -> None:
    """A strongly typed build gets its precision from the graph: refuse a graph of another precision."""
    if precision not in TRT_PRECISIONS:
        raise InvalidInput(f"precision {precision!r} not supported; choose one of {', '.join(TRT_PRECISIONS)}")
    if precision == "bf16" and (facts.precision != "bf16" or facts.has_fp8_qdq):
        raise InvalidInput(
            f"{facts.path}: --precision bf16 needs a BF16 graph without FP8 Q/DQ "
            f"(this one: {facts.precision}{', FP8 Q/DQ' if facts.has_fp8_qdq else ''}); export with --dtype bf16"
        )
    if precision == "fp8" and not facts.has_fp8_qdq:
        raise InvalidInput(f"{facts.path}: --precision fp8 needs a graph with FP8 Q/DQ nodes (export --precision fp8)")


def plan_profile(facts: GraphFacts, max_batch: int, opt_batch: int | None = None) -> BatchProfile:
    """The plan's batch profile: the export's static batch, or 1..``max_batch`` within a dynamic export's range."""
    if facts.batch.is_fixed:
        return facts.batch
    if not 1 <= max_batch <= facts.batch.max:
        raise InvalidInput(f"--max-batch {max_batch}: the export takes batches of 1 to {facts.batch.max}")
    opt = max_batch if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch:
        raise InvalidInput(f"--opt-batch {opt}: must be between 1 and --max-batch ({max_batch})")
    return BatchProfile(1, opt, max_batch)


def build_trt_engine(
    onnx_path: str | Path,
    out: str | Path,
    *,
    precision: str = "bf16",
    opt_level: int = 3,
    timing_cache: str | Path | None = None,
    weight_streaming: bool = False,
    max_batch: int = 4,
    opt_batch: int | None = None,
    workspace_gib: float | None = None,
    overwrite: bool = False,
) -> TensorRTPlan:
    """Build and write the plan and its sidecar (every input checked before TensorRT is imported)."""
    out = Path(out)
    if not overwrite:
        refuse_existing(out)
    if workspace_gib is not None:
        finite_number(workspace_gib, "--workspace-gib", positive=True)
    if not 0 <= opt_level <= 5:
        raise InvalidInput(f"builder optimization level must be 0-5, got {opt_level}")
    facts = inspect_graph(onnx_path)
    check_precision(facts, precision)
    profile = plan_profile(facts, max_batch, opt_batch)
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
    if not profile.is_fixed:  # one profile over the batch axis at the exported resolution
        width, height = facts.entry.size
        trt_profile = Profile()
        for tensor in FE2E.inputs:
            trt_profile.add(
                tensor.name,
                min=tensor.shape(profile.min, width, height),
                opt=tensor.shape(profile.opt, width, height),
                max=tensor.shape(profile.max, width, height),
            )
        profiles = [trt_profile]
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
        raise InvalidInput(f"{facts.path}: TensorRT could not build it: {exc}") from None
    if plan is None:
        raise RuntimeError(f"{facts.path}: TensorRT build failed (see the log above)")
    seconds = time.perf_counter() - start
    # The old sidecar goes first: a run killed in between leaves a plan without sidecar (refused), never
    # a new plan described by the old sidecar or the reverse.
    TensorRTPlan.path_of(out).unlink(missing_ok=True)
    atomic_write(out, lambda p: p.write_bytes(bytes(plan)), overwrite=overwrite)
    sidecar = TensorRTPlan(
        fe2e_deploy=__version__,
        tensorrt=trt.__version__,
        gpu=GpuIdentity.here(),
        precision=precision,
        graph=FE2E.name,
        resolution=facts.entry.resolution,
        batch=profile,
        source=PlanSource(onnx=str(facts.path), precision=facts.precision),
        weight_streaming=weight_streaming,
        builder_optimization_level=opt_level,
        build_seconds=round(seconds, 1),
    )
    sidecar.write(TensorRTPlan.path_of(out))
    return sidecar
