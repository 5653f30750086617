"""A stand-in for the part of TensorRT's Python runtime API that ``engines/tensorrt.py`` calls, on the CPU.

TensorRT cannot be installed here (DESIGN.md section 4), so the engine's own code (sidecar and I/O checks,
buffers for the largest batch, views per batch, input shapes per call, the batch planning of the template,
the weight-streaming budget) is run against this object instead: its "plan" names an exported fused ONNX
graph, and ``execute_async_v3`` reads the bound input from the address the engine set, runs the graph in
ONNX Runtime and writes the outputs to the bound addresses, as a plan does on a GPU. What this cannot
show: that TensorRT itself accepts these calls, and the CUDA stream and graph calls (README).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from fe2e_deploy.engines.ort_session import make_session


@dataclass(frozen=True)
class _Named:
    name: str


class StandInContext:
    """``IExecutionContext``: input shapes and tensor addresses, then one run per ``execute_async_v3``."""

    def __init__(self, engine: StandInEngine):
        self.engine, self.shapes, self.addresses, self.calls = engine, {}, {}, []

    def set_input_shape(self, name: str, shape) -> bool:
        self.shapes[name] = tuple(int(d) for d in shape)
        return True

    def set_tensor_address(self, name: str, address: int) -> bool:
        self.addresses[name] = int(address)
        return True

    def execute_async_v3(self, stream: int) -> bool:
        (image,) = self.engine.inputs
        shape = self.shapes[image]
        array = _view(self.addresses[image], shape).copy()
        outputs = self.engine.session.run(self.engine.outputs, {image: array})
        for name, value in zip(self.engine.outputs, outputs, strict=True):
            _view(self.addresses[name], value.shape)[...] = value
        self.calls.append(shape[0])
        return True


class StandInEngine:
    """``ICudaEngine`` of a fused graph: its I/O tensors as TensorRT describes them (-1: the dynamic batch)."""

    def __init__(self, graph: Path, weight_streaming: bool = False):
        header = onnx.load(str(graph), load_external_data=False).graph
        self.inputs = [v.name for v in header.input]
        self.outputs = [v.name for v in header.output]
        self._shapes = {
            v.name: tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
            for v in (*header.input, *header.output)
        }
        self.session, _ = make_session(graph, "cpu")
        self.num_io_tensors = len(self._shapes)
        self.contexts: list[StandInContext] = []
        self.streamable_weights_size = 1000 if weight_streaming else 0
        self.weight_streaming_budget_v2 = None
        self.device_memory_size_v2 = 10

    def get_tensor_name(self, index: int) -> str:
        return [*self.inputs, *self.outputs][index]

    def get_tensor_mode(self, name: str) -> _Named:
        return _Named("INPUT" if name in self.inputs else "OUTPUT")

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def get_tensor_dtype(self, name: str) -> _Named:
        return _Named("FLOAT")

    def create_execution_context(self) -> StandInContext:
        self.contexts.append(StandInContext(self))
        return self.contexts[-1]


class StandInRuntime:
    """``trt.Runtime``: a "plan" is the path of the fused ONNX graph it stands for."""

    def __init__(self, weight_streaming: bool = False):
        self.weight_streaming = weight_streaming
        self.engines: list[StandInEngine] = []
        self.buffers: list[str] = []  # the type of each serialized plan it was given

    def deserialize_cuda_engine(self, plan) -> StandInEngine | None:
        """``plan``: any buffer (TensorRT takes bytes, a memoryview, a memory map); its type is kept in ``buffers``."""
        self.buffers.append(type(plan).__name__)
        try:
            graph = Path(bytes(memoryview(plan)).decode())
        except UnicodeDecodeError:
            return None
        if not graph.is_file():
            return None
        self.engines.append(StandInEngine(graph, self.weight_streaming))
        return self.engines[-1]


def _view(address: int, shape) -> np.ndarray:
    """The float32 array at ``address`` (CPU memory a torch tensor owns), without a copy."""
    count = int(np.prod(shape))
    buffer = (ctypes.c_float * count).from_address(address)
    return np.ctypeslib.as_array(buffer).reshape(shape)
