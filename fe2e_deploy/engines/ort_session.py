"""ONNX Runtime sessions for exported graphs, with BF16 graphs emulated where ORT has no BF16 kernels.

ORT's CPU provider implements ``Cast`` to and from BF16 but no BF16 arithmetic (MatMul, Mul,
Softmax...), so a BF16 graph cannot run there. :func:`emulate_bf16` rewrites such a graph to FP32
while keeping every rounding point: each ``Cast(to=BF16)`` becomes ``Cast(to=BF16) -> Cast(to=FP32)``
and BF16 weights are widened exactly. Arithmetic then runs in FP32 on BF16-rounded operands, which
is what BF16 tensor-core GEMMs (FP32 accumulation) do; elementwise ops between casts are not
rounded, so the emulation is slightly more precise than a real BF16 run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from ..artifacts.export import REEXPORT, read_graph
from ..errors import InvalidInput
from ..load_gate import opening

BF16, FP32 = TensorProto.BFLOAT16, TensorProto.FLOAT
#: What ONNX Runtime raises for a graph it cannot load (these do not derive from RuntimeError).
ORT_ERRORS = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    RuntimeError,
)


def has_bf16(model: onnx.ModelProto) -> bool:
    if any(t.data_type == BF16 for t in model.graph.initializer):
        return True
    return any(a.name == "to" and a.i == BF16 for n in model.graph.node if n.op_type == "Cast" for a in n.attribute)


def _widen(tensor: TensorProto) -> TensorProto:
    """A BF16 tensor as an exact FP32 tensor of the same name."""
    if tensor.raw_data:
        bits = np.frombuffer(tensor.raw_data, dtype=np.uint16)
    else:  # BF16 values stored in int32_data, one per element
        bits = np.asarray(tensor.int32_data, dtype=np.uint16)
    values = (bits.astype(np.uint32) << 16).view(np.float32).reshape(tuple(tensor.dims))
    return numpy_helper.from_array(values, tensor.name)


def emulate_bf16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite a BF16 graph (external data loaded) to FP32 with BF16 rounding kept at every Cast."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == BF16:
            graph.initializer[i].CopyFrom(_widen(tensor))
    nodes = []
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == BF16:
                attr.t.CopyFrom(_widen(attr.t))
        if node.op_type == "Cast" and any(a.name == "to" and a.i == BF16 for a in node.attribute):
            rounded = node.output[0] + "__bf16"
            nodes.append(onnx.helper.make_node("Cast", [node.input[0]], [rounded], to=BF16))
            nodes.append(onnx.helper.make_node("Cast", [rounded], [node.output[0]], to=FP32, name=node.name))
            continue
        for attr in node.attribute:
            if attr.name in ("to", "dtype", "output_dtype") and attr.type == onnx.AttributeProto.INT and attr.i == BF16:
                attr.i = FP32
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.tensor_type.elem_type == BF16:
            info.type.tensor_type.elem_type = FP32
    return out


def providers_for(device: str) -> list[str | tuple[str, dict]]:
    """``cuda`` / ``cuda:N`` -> CUDA EP on that GPU (error if this onnxruntime has none), ``cpu`` -> CPU EP."""
    available = ort.get_available_providers()
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise InvalidInput(
                f"device {device!r}: this onnxruntime has no CUDA provider (available: {', '.join(available)}); "
                "install onnxruntime-gpu"
            )
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if device != "cpu":
        raise InvalidInput(f"device {device!r} not supported by the ONNX Runtime engine; use cpu or cuda")
    return ["CPUExecutionProvider"]


def make_session(path: str | Path, device: str = "cpu") -> tuple[ort.InferenceSession, bool]:
    """A session for an exported graph; returns (session, emulated) where emulated means BF16 -> FP32 emulation.

    The graph and its external weights are checked first (:func:`~fe2e_deploy.artifacts.export.read_graph`);
    a graph ONNX Runtime still cannot load is one error naming the file.
    """
    path = Path(path)
    providers = providers_for(device)
    header = read_graph(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # ORT's CPU threads spin after each run and starve PyTorch's pre/post-processing threads.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if any(t.data_type == TensorProto.FLOAT8E4M3FN for t in header.graph.initializer):
        # onnxruntime 1.32's graph optimisations (already at the basic level, i.e. constant folding)
        # fold DequantizeLinear of FLOAT8E4M3FN weights into wrong values (max error 1.6 on a 64x64
        # test layer against the exact Q/DQ arithmetic); unoptimised, the graph is exact.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opening("ONNX Runtime session", path)
    try:
        if providers[0] == "CPUExecutionProvider" and has_bf16(header):
            model = emulate_bf16(onnx.load(str(path), load_external_data=True))
            return ort.InferenceSession(model.SerializeToString(), options, providers=providers), True
        return ort.InferenceSession(str(path), options, providers=providers), False
    except (ORT_ERRORS, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 240 else reason[:237] + "..."
        raise InvalidInput(f"{path}: ONNX Runtime cannot load this graph ({reason}); {REEXPORT}") from None
