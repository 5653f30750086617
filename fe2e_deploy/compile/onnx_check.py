"""``export --check``: run every exported graph in ONNX Runtime and compare it with PyTorch.

Each graph gets seeded inputs of its manifest shapes (synthetic scenes for images, N(0, 1)
latents); the same module is rebuilt from the stripped model (fake-quantised for FP8 exports) and
run in PyTorch. Reported per output: max absolute error and relative L2 error
``||ort - torch|| / ||torch||``; a graph fails above the tolerance of its compute dtype.

FP8 graphs (those with QuantizeLinear nodes) are compared *aligned* (:func:`compare_aligned`), not
free-running. ONNX Runtime's QuantizeLinear/DequantizeLinear is bit-exact with PyTorch's fake
quantisation on the same input, but the FP32 inputs of the quantisers differ between the two
runtimes by summation-order round-off (~5e-7). An element within that distance of an E4M3 rounding
midpoint rounds to the neighbouring FP8 value, a step of 6-12% of the value, and the next layers
amplify that one flip (random-weight tiny model: one flipped element in
``double_blocks.1.txt_attn.qkv``'s input grew from 5.6e-3 to 1.6e-1 max abs within one block). A
free-running comparison of two quantised networks therefore measured 3e-7, 3e-4 or 1.5e-2 relative
L2 depending on the input, and depends on the CPU too (SIMD width changes the summation order): it
cannot tell a correct graph from a wrong one with any fixed tolerance. The aligned comparison runs
the graph with every input quantiser's Q input and DQ output exposed, checks that ORT's DQ output
equals PyTorch's fake quantisation of ORT's own Q input (must be 0 differing elements: the Q/DQ
exactness check), and runs PyTorch with each FP8 linear's input replaced by ORT's DQ output.
Re-quantising ``q * s`` gives back ``q`` (``q`` has 4 significant bits), so both runtimes take the
same quantiser decisions and what remains is continuous: the tolerance of the compute dtype holds
on any input and CPU. It is applied to the outputs and to every quantised linear's input as
PyTorch computes it from the aligned upstream layers vs ORT's Q input: the replacement hides from
the outputs whatever runs only between two quantisers (attention, RoPE, GELU), so the per-layer
inputs are what check those parts. Measured on the tiny model (64x48, three seeds): FP32 compute
2e-7 to 3e-7 (DiT latents), 7e-7 to 2e-6 (fused maps), at most 1.6e-6 on a linear's input, 0
mismatches on all 20 quantisers; BF16 compute (emulated in FP32 on CPU) 2e-3 to 5e-3 (outputs) and
6e-3 (inputs), where free running gave 1.4e-2 to 6.5e-2. ``tests/test_fp8.py`` shows the flip on
a hand-built E4M3 rounding midpoint.

Costs of the aligned run: a temporary copy of the graph proto (no weights) is written next to the
graph, so the export folder must be writable; and ORT returns every tapped tensor at once, so the
inputs of all quantised linears are held twice in FP32 (about 60 GB for the full DiT at 1024x768).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto
from torch import nn

from ..artifacts.export import load_manifest
from ..artifacts.scales import load_scales
from ..engines.ort_session import make_session
from ..evaluation.metrics import relative_l2
from ..files.atomic import write_json
from ..graph_io import DIT, FE2E, GRAPHS
from ..kernels import exact_fp32
from ..loading.stripped import StrippedModel, load_stripped
from ..models.fp8 import FP8Linear, quantize_dit, quantize_fp8
from ..precision import torch_dtype
from ..processing import preprocess
from ..scenes import synthetic_scene
from .onnx_export import BUILDERS

#: Relative L2 tolerance per compute dtype. FP32: summation-order round-off only (measured 1e-6 at
#: 64x48, 2.4e-4 at 1024x768 where attention spans 6k tokens). BF16: ORT's run differs from
#: PyTorch's CPU BF16 run in rounding order (measured 0.3-0.8% on the tiny model). A wrong graph is
#: off by O(1). FP8 graphs are compared aligned (module docstring) against the tolerance of their
#: compute dtype.
TOLERANCES = {"fp32": 1e-3, "bf16": 3e-2}
DIT_GRAPHS = (DIT.name, FE2E.name)
#: Ops the weight operand of an exported FP8 linear passes through between its DequantizeLinear and the MatMul.
_WEIGHT_PATH_OPS = ("Transpose", "Reshape", "Cast", "Identity")


@dataclass
class OutputCheck:
    graph: str
    output: str
    max_abs: float
    rel_l2: float
    tolerance: float
    emulated: bool
    aligned: bool = False  # FP8 graph: quantiser decisions aligned (module docstring)
    quantizers: int = 0  # input quantisers compared (aligned only)
    quantizer_mismatches: int = 0  # elements where ORT's Q/DQ differs from PyTorch's fake quantisation
    mismatched_quantizers: list[str] = field(default_factory=list)  # modules with mismatches
    quantizer_input_rel_l2: float = 0.0  # worst relative L2 of a quantised linear's input, PyTorch vs ORT
    quantizer_input_worst: str = ""  # the linear it belongs to

    @property
    def ok(self) -> bool:
        errors = (self.rel_l2, self.quantizer_input_rel_l2)
        return all(bool(np.isfinite(e)) and e <= self.tolerance for e in errors) and self.quantizer_mismatches == 0

    def row(self) -> str:
        note = " (BF16 emulated in FP32 on CPU)" if self.emulated else ""
        if self.aligned:
            note += f" (FP8 aligned: {self.quantizers} quantisers, {self.quantizer_mismatches} mismatches"
            note += f" in {', '.join(self.mismatched_quantizers)}" if self.mismatched_quantizers else ""
            note += f"; worst input rel_l2 {self.quantizer_input_rel_l2:.3e} at {self.quantizer_input_worst})"
        status = "ok" if self.ok else "FAIL"
        return (
            f"{self.graph:<24} {self.output:<14} max_abs {self.max_abs:.3e}  rel_l2 {self.rel_l2:.3e}  "
            f"tol {self.tolerance:.0e}  {status}{note}"
        )


@dataclass
class AlignedRun:
    """One aligned run of an FP8 graph (:func:`compare_aligned`)."""

    got: list[np.ndarray]  # ONNX Runtime's outputs
    expected: list[np.ndarray]  # PyTorch's, every FP8 linear fed ORT's dequantised input (FP32)
    mismatches: dict[str, int]  # module -> elements where ORT's DQ output != PyTorch's fake quant of ORT's Q input
    input_errors: dict[str, tuple[float, float]]  # module -> (max_abs, rel_l2) of PyTorch's vs ORT's Q input
    emulated: bool

    def errors(self) -> list[tuple[float, float]]:
        """(max_abs, rel_l2) per output."""
        return [compare(a, b) for a, b in zip(self.got, self.expected, strict=True)]

    def worst_input(self) -> tuple[str, float]:
        """The quantised linear whose input differs most (relative L2) between the runtimes, and that error."""
        name = max(self.input_errors, key=lambda n: self.input_errors[n][1])
        return name, self.input_errors[name][1]


@dataclass(frozen=True)
class QuantizerTap:
    """An input quantiser of the graph: the PyTorch module it belongs to and the tensors exposed for it."""

    module: str  # name in the PyTorch module compared with the graph
    q_input: str  # QuantizeLinear's input (the FP32/BF16 activation)
    dq_output: str  # DequantizeLinear's output (what the MatMul consumes)


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max abs, relative L2 ``||a - b|| / ||b||``) in float64."""
    diff = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(diff.max()), relative_l2(a, b)


def has_fp8_qdq(path: str | Path) -> bool:
    """Whether the graph has QuantizeLinear nodes (headers only; no weights loaded)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(n.op_type == "QuantizeLinear" for n in graph.node)


def quantizer_taps(model: onnx.ModelProto, module: nn.Module) -> list[QuantizerTap]:
    """Map every QuantizeLinear of the graph to the :class:`FP8Linear` of ``module`` it came from.

    The exporter names initializers after the module path (``dit.double_blocks.0.img_attn.qkv.
    input_scale`` in the DiT graph, ``step.dit.…`` in the fused one). The FP8 weight feeding the
    same MatMul names the layer first (unique per layer; the exporter deduplicates equal small
    initializers, so two layers with equal input scales share one scale name), the scale second;
    a name matches a module of ``module`` by equality or on a ``.``-boundary suffix. Raises if a
    quantiser maps to no module, two map to the same one, or an FP8 linear has no quantiser.
    """
    linears = [name for name, m in module.named_modules() if isinstance(m, FP8Linear)]
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def weight_name(dq: onnx.NodeProto) -> str | None:
        for mm in consumers.get(dq.output[0], []):
            if mm.op_type not in ("MatMul", "Gemm"):
                continue
            for operand in mm.input:
                node = producer.get(operand)
                while node is not None and node.op_type in _WEIGHT_PATH_OPS:
                    node = producer.get(node.input[0])
                if node is not None and node.op_type == "DequantizeLinear" and node.input[0] in initializers:
                    return node.input[0]
        return None

    def resolve(tensor: str | None) -> str | None:
        if tensor is None:
            return None
        prefix = tensor.rpartition(".")[0]
        if prefix in linears:
            return prefix
        hits = [n for n in linears if prefix.endswith("." + n) or n.endswith("." + prefix)]
        return hits[0] if len(hits) == 1 else None

    taps, owner = [], {}
    for q in (n for n in graph.node if n.op_type == "QuantizeLinear"):
        dqs = [n for n in consumers.get(q.output[0], []) if n.op_type == "DequantizeLinear"]
        if len(dqs) != 1:
            raise ValueError(
                f"QuantizeLinear {q.name or q.output[0]!r}: expected one DequantizeLinear, found {len(dqs)}"
            )
        candidates = (weight_name(dqs[0]), q.input[1])
        name = next((m for m in map(resolve, candidates) if m is not None), None)
        if name is None:
            raise ValueError(
                f"QuantizeLinear of {q.input[0]!r} (scale {q.input[1]!r}) maps to no FP8Linear of the PyTorch model "
                f"(candidates {[c for c in candidates if c]}; FP8 linears e.g. {linears[:3]})"
            )
        if name in owner:
            raise ValueError(f"QuantizeLinear of {q.input[0]!r} and of {owner[name]!r} both map to {name}")
        owner[name] = q.input[0]
        taps.append(QuantizerTap(name, q.input[0], dqs[0].output[0]))
    missing = sorted(set(linears) - set(owner))
    if missing:
        raise ValueError(f"the graph has no input quantiser for FP8Linear(s) {missing[:5]} of the PyTorch model")
    return taps


def _fake_quant(linear: FP8Linear, x: torch.Tensor) -> torch.Tensor:
    """``x`` quantised to E4M3 with ``linear``'s input scale and dequantised, in the compute dtype.

    Unlike :class:`FP8Linear` this does not round ``x`` to the compute dtype first: it quantises the
    value ORT's QuantizeLinear got. That is the same for FP32 graphs and real BF16 runs (BF16 values);
    the CPU emulation of a BF16 graph computes a quantiser's input in FP32 without rounding it to
    BF16 (``ort_session.emulate_bf16``), and quantising its BF16 rounding instead would flag every
    double-rounding difference (~1200 elements of the GELU outputs on the tiny model) as a Q/DQ error.
    """
    return (quantize_fp8(x, linear.input_scale).float() * linear.input_scale.float()).to(linear.compute_dtype)


def _run_with_taps(path: Path, taps: list[QuantizerTap], inputs: dict, outputs: list[str], device: str):
    """Run the graph with each tap's Q input and DQ output as extra FP32 outputs.

    The graph is read without its weights, the outputs added (through ``Cast`` to FP32, so BF16
    tensors come back as numpy float32), and the proto saved as a temporary ``.onnx`` next to the
    original so its relative external-data references still resolve; the session is built by
    :func:`make_session` (FP8 graphs unoptimised, BF16 emulated on CPU), the file deleted after.
    """
    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    extra = {}  # tensor -> its FP32 output; one per tensor (two linears may share an input)
    for tensor in (t for tap in taps for t in (tap.q_input, tap.dq_output)):
        if tensor not in extra:
            extra[tensor] = f"{tensor}__check_fp32"
            graph.node.append(onnx.helper.make_node("Cast", [tensor], [extra[tensor]], to=TensorProto.FLOAT))
            graph.output.append(onnx.helper.make_tensor_value_info(extra[tensor], TensorProto.FLOAT, None))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-aligned-", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)  # the weights stay where they are: only the references are written
        del model, graph
        session, emulated = make_session(tmp, device)
        got = session.run([*outputs, *extra.values()], inputs)
        del session
    finally:
        Path(tmp).unlink(missing_ok=True)
    values = dict(zip(extra, got[len(outputs) :], strict=True))
    tapped = {tap.module: (values[tap.q_input], values[tap.dq_output]) for tap in taps}
    return got[: len(outputs)], tapped, emulated


def compare_aligned(
    path: str | Path,
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...],
    device: str = "cpu",
) -> AlignedRun:
    """Run an FP8 Q/DQ graph in ONNX Runtime and ``module`` (its fake-quantised PyTorch source) aligned.

    Every :class:`FP8Linear` of ``module`` gets, through a forward pre-hook, ORT's dequantised input
    of its layer instead of its own input; both runtimes then quantise identically and the outputs
    differ by round-off only (module docstring). Per layer it also records

    - ``mismatches``: elements where ORT's DQ output differs from PyTorch's fake quantisation of
      ORT's Q input (compared in the compute dtype: the BF16 emulation does not round the DQ
      product to BF16, a real BF16 DequantizeLinear does);
    - ``input_errors``: PyTorch's own input of the layer (computed from the aligned upstream layers,
      cast to the compute dtype) against ORT's Q input. Replacing the inputs hides from the outputs
      whatever runs only between two quantisers (q/k/v projections, RoPE, attention, GELU: their
      effect reaches the output only through the next quantised linear's input), so these per-layer
      errors are what checks those parts.

    Memory: every quantised linear's input, twice in FP32, is held at once (ORT returns all outputs
    together).
    """
    path = Path(path)
    module = module.eval()
    taps = quantizer_taps(onnx.load(str(path), load_external_data=False), module)
    feeds = {n: t.numpy() for n, t in zip(input_names, inputs, strict=True)}
    got, tapped, emulated = _run_with_taps(path, taps, feeds, list(output_names), device)
    linears = dict(module.named_modules())
    mismatches, q_inputs, aligned, input_errors = {}, {}, {}, {}
    with torch.no_grad():
        for name in list(tapped):
            q_input, dq_output = tapped.pop(name)
            linear = linears[name]
            dq = torch.from_numpy(dq_output)
            dq_c = dq.to(linear.compute_dtype)  # a real BF16 DequantizeLinear rounds its product to BF16
            mismatches[name] = int((_fake_quant(linear, torch.from_numpy(q_input)) != dq_c).sum())
            # With no mismatch ORT's DQ output is on the module's grid and re-quantises to itself (q has 4
            # significant bits); otherwise the graph and the model disagree and the mismatches say so.
            if mismatches[name] == 0 and not torch.equal(_fake_quant(linear, dq), dq_c):
                raise RuntimeError(f"{name}: re-quantising ORT's dequantised input does not give it back")
            q_inputs[name], aligned[name] = q_input, dq
            del dq_c

    def hook(name: str):
        def replace(linear: nn.Module, args: tuple):
            if name in input_errors:
                raise RuntimeError(f"{name} runs more than once per forward; cannot align its quantiser")
            x, replacement = args[0], aligned.pop(name)
            if replacement.shape != x.shape:
                raise ValueError(
                    f"{name}: ORT's quantiser input has shape {tuple(replacement.shape)}, not {tuple(x.shape)}"
                )
            input_errors[name] = compare(q_inputs.pop(name), x.to(linear.compute_dtype).float().cpu().numpy())
            return (replacement.to(x.device), *args[1:])

        return replace

    handles = [linears[name].register_forward_pre_hook(hook(name)) for name in aligned]
    try:
        with torch.no_grad(), exact_fp32():  # an FP32 reference on a GPU must not run in TF32
            expected = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    if aligned:
        raise RuntimeError(f"FP8 linear(s) {sorted(aligned)[:5]} did not run in PyTorch")
    expected = expected if isinstance(expected, tuple) else (expected,)
    return AlignedRun(got, [e.float().numpy() for e in expected], mismatches, input_errors, emulated)


def check_export(
    export_dir: str | Path,
    stripped: str | Path | StrippedModel | None = None,
    device: str = "cpu",
    tolerance: float | None = None,
    seed: int = 0,
) -> list[OutputCheck]:
    """Check every graph of an export folder; ``stripped`` defaults to the folder named in the manifest."""
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    if not isinstance(stripped, StrippedModel):
        stripped = load_stripped(stripped or manifest.stripped.path)
    stripped.dit.cast_weights(torch_dtype(manifest.compute))
    if manifest.fp8_scales:  # compare with the fake-quantised model the graph was exported from
        quantize_dit(stripped.dit, load_scales(export_dir / manifest.fp8_scales).layers)
    generator = torch.Generator().manual_seed(seed)
    results = []
    for key, entry in manifest.graphs.items():
        io = GRAPHS[entry.graph]
        path = export_dir / entry.file
        inputs = tuple(
            _random_input(entry.graph, [1 if d == "batch" else d for d in spec.shape], generator)
            for spec in entry.inputs.values()
        )
        module = BUILDERS[entry.graph](stripped, *entry.size).eval()
        graph_precision = manifest.compute if entry.graph in DIT_GRAPHS else "fp32"  # VAE: FP32
        tol = tolerance if tolerance is not None else TOLERANCES[graph_precision]
        extra = {}
        if has_fp8_qdq(path):
            run = compare_aligned(path, module, inputs, io.input_names, io.output_names, device)
            got, expected, emulated = run.got, run.expected, run.emulated
            worst, worst_rel = run.worst_input()
            extra = {
                "aligned": True,
                "quantizers": len(run.mismatches),
                "quantizer_mismatches": sum(run.mismatches.values()),
                "mismatched_quantizers": sorted(n for n, c in run.mismatches.items() if c),
                "quantizer_input_rel_l2": worst_rel,
                "quantizer_input_worst": worst,
            }
        else:
            with torch.no_grad():
                expected = module(*inputs)
            expected = [e.float().numpy() for e in (expected if isinstance(expected, tuple) else (expected,))]
            session, emulated = make_session(path, device)
            feeds = {n: x.numpy() for n, x in zip(io.input_names, inputs, strict=True)}
            got = session.run(list(io.output_names), feeds)
            del session
        for out_name, a, b in zip(io.output_names, got, expected, strict=True):
            max_abs, rel = compare(a, b)
            results.append(OutputCheck(key, out_name, max_abs, rel, tol, emulated, **extra))
    return results


CHECK_FILE = "check.json"


def write_check_report(export_dir: str | Path, results: list[OutputCheck]) -> Path:
    """Record a check's results next to the graphs (``check.json``); ``passed`` is true only if all are ok."""
    report = {
        "passed": all(r.ok for r in results),
        "outputs": [{**asdict(r), "ok": r.ok} for r in results],
    }
    return write_json(Path(export_dir) / CHECK_FILE, report)


def check_passed(export_dir: str | Path) -> bool:
    path = Path(export_dir) / CHECK_FILE
    try:
        return bool(json.loads(path.read_text())["passed"])
    except (OSError, ValueError, KeyError):
        return False


def _random_input(graph: str, shape: list[int], generator: torch.Generator) -> torch.Tensor:
    """Images: seeded synthetic scenes (in-distribution for FP8 scales calibrated on images); latents: N(0, 1)."""
    if GRAPHS[graph].inputs[0].downsample == 1:  # an image
        batch, _, height, width = shape
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        return torch.cat([preprocess(synthetic_scene(width, height, seed + i), (width, height)) for i in range(batch)])
    return torch.randn(shape, generator=generator)
