"""The TensorRT engine: a ``.plan`` from ``build-trt``, device buffers for its largest batch, CUDA graphs per batch.

Needs the optional TensorRT extra and a CUDA GPU; the plan's sidecar
(:class:`~fe2e_deploy.artifacts.tensorrt.TensorRTPlan`) must name this GPU. The runner is written here
rather than Polygraphy's ``TrtRunner``: FE2E's plan is one call per batch, and replaying it from a
captured CUDA graph into pre-allocated buffers takes the host out of the loop, which ``TrtRunner``
(buffers managed per call, no graph capture) does not do.

What it shares with the engines that run on this project's CPUs, and is tested there: the sidecar
contract, the graph I/O contract (:data:`fe2e_deploy.graph_io.FE2E`: names, dtypes, shapes the plan's
tensors must have, :func:`check_plan_io`), the batch planning of the engine template (a plan with a
dynamic batch profile runs real batches up to its maximum, the last one ragged; a static one is
padded), the weight-streaming budget (:func:`weight_streaming_budget`) and the binding of buffer views
per batch. Only the calls into TensorRT itself and the CUDA stream and graph calls run nowhere here
(README, "What runs where").
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..artifacts.tensorrt import GpuIdentity, TensorRTPlan, import_tensorrt, read_plan_sidecar
from ..errors import InvalidInput, MissingInput
from ..graph_io import FE2E, BatchProfile, GraphIO
from ..load_gate import opening
from ..resolution import resolution_name
from ..timing import NO_TIMER, NoTimer, StageTimer
from .base import Engine, check_precision
from .options import EngineOptions, parse_budget

#: TensorRT's tensor dtypes (``DataType.name``) and torch's.
TRT_TO_TORCH = {"FLOAT": torch.float32, "BF16": torch.bfloat16, "HALF": torch.float16}
#: GPU memory left free beside the activations when the weight-streaming budget is chosen automatically.
STREAMING_MARGIN = 512 * 2**20


@dataclass(frozen=True)
class PlanTensor:
    """One I/O tensor of a deserialized plan as TensorRT describes it (``-1``: a dynamic dimension)."""

    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: str


def check_plan_io(plan: str | Path, found: list[PlanTensor], io: GraphIO, size: tuple[int, int], profile: BatchProfile):
    """The plan's tensors are the graph's (names, direction, FLOAT, shapes at ``size``; batch -1 when dynamic)."""
    want = {t.name: (True, t) for t in io.inputs} | {t.name: (False, t) for t in io.outputs}
    names = sorted(t.name for t in found)
    if names != sorted(want):
        raise InvalidInput(
            f"{plan}: the plan's tensors are {names}, not the {io.name} graph's {sorted(want)} (rebuild it with "
            f"{TensorRTPlan.REBUILD})"
        )
    for tensor in found:
        is_input, spec = want[tensor.name]
        batch = profile.max if profile.is_fixed else -1
        shape = tuple(spec.shape(batch, *size))
        if tensor.is_input != is_input or tensor.shape != shape or TRT_TO_TORCH.get(tensor.dtype) != torch.float32:
            raise InvalidInput(
                f"{plan}: tensor {tensor.name} is {'an input' if tensor.is_input else 'an output'} {tensor.dtype} "
                f"{list(tensor.shape)}, the graph's is {'an input' if is_input else 'an output'} FLOAT {list(shape)} "
                f"at {resolution_name(size)} (a plan and sidecar that do not belong together? rebuild it)"
            )


def weight_streaming_budget(
    spec: str | None, streamable: int, free: int | None, activations: int, margin: int = STREAMING_MARGIN
) -> int:
    """Bytes of a weight-streaming plan's weights to keep on the GPU.

    ``spec``: bytes (``8GiB``) or a fraction of the ``streamable`` weights (``0.5``), see
    :func:`~fe2e_deploy.engines.options.parse_budget`; None: what fits in the ``free`` GPU memory next to
    the ``activations`` (and a margin; ``free`` None: no limit known, all of them). Never more than the
    streamable weights; at least 0 (every streamable weight streamed from the host).
    """
    if spec is None and free is None:
        budget = streamable
    elif spec is None:
        budget = free - activations - margin
    else:
        kind, value = parse_budget(spec)
        budget = int(streamable * value) if kind == "fraction" else int(value)
    return max(0, min(int(budget), streamable))


def deserialize_plan(runtime, plan: Path):
    """``runtime.deserialize_cuda_engine`` over a read-only memory map of the plan, not a bytes copy of it.

    A full-size BF16 plan is ~17 GB: ``read_bytes()`` would first copy all of it into private host memory
    (beside the page cache's copy). The map's pages are the file's own, reclaimable, and freed when the map
    closes after TensorRT has copied the weights to the GPU. Any buffer-protocol object is a serialized
    engine to TensorRT's Python API (``deserialize_cuda_engine(serialized_engine: buffer)``, TensorRT 10).
    """
    opening("TensorRT plan", plan)
    with open(plan, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise InvalidInput(f"{plan}: the plan is empty (a build cut off? rebuild it with {TensorRTPlan.REBUILD})")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return runtime.deserialize_cuda_engine(mapped)


class TensorRTEngine(Engine):
    """image -> depth + normals through a serialized TensorRT plan at its one resolution."""

    def __init__(
        self,
        plan: str | Path,
        options: EngineOptions | None = None,
        *,
        timer: NoTimer | StageTimer = NO_TIMER,
        runtime: object | None = None,
        **fields: object,
    ):
        """``runtime``: a ``tensorrt.Runtime`` (default: one made here; tests pass a stand-in with its API)."""
        options = EngineOptions.of(options, **fields)
        super().__init__(options, timer)
        plan = Path(plan)
        if not plan.is_file():
            raise MissingInput(f"{plan}: engine not found")
        self.plan = plan
        self.sidecar = read_plan_sidecar(plan)
        check_precision(plan, self.sidecar.precision, options.dtype)
        self.name = f"tensorrt-{self.sidecar.precision}"
        self.size = self.sidecar.size
        self.check_built_size(plan)
        self.profile = self.sidecar.batch
        if options.weight_streaming_budget is not None and not self.sidecar.weight_streaming:
            raise InvalidInput(f"{plan}: --weight-streaming-budget needs a plan built with --weight-streaming")
        if runtime is None:
            if self.device.type != "cuda" or not torch.cuda.is_available():
                raise InvalidInput(f"{plan}: TensorRT engines need a CUDA GPU; none is visible (or --device is cpu)")
            self.sidecar.check_gpu(plan, GpuIdentity.here())
            trt = import_tensorrt()
            runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = deserialize_plan(runtime, plan)
        if self.engine is None:
            raise InvalidInput(f"{plan}: TensorRT cannot deserialize this plan (another TensorRT version?)")
        tensors = [self._describe(self.engine.get_tensor_name(i)) for i in range(self.engine.num_io_tensors)]
        check_plan_io(plan, tensors, FE2E, self.size, self.profile)
        self.streaming_budget = self._stream_weights() if self.sidecar.weight_streaming else None
        self.context = self.engine.create_execution_context()
        # Buffers for the largest batch; a smaller batch binds views of their first rows (same addresses).
        self.buffers = {
            t.name: torch.empty(
                FE2E.shapes(self.profile.max, self.size)[t.name], dtype=TRT_TO_TORCH[t.dtype], device=self.device
            )
            for t in tensors
        }
        for name, buffer in self.buffers.items():
            self.context.set_tensor_address(name, buffer.data_ptr())
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}  # one captured launch per batch size

    def _describe(self, name: str) -> PlanTensor:
        engine = self.engine
        is_input = engine.get_tensor_mode(name).name == "INPUT"
        return PlanTensor(name, is_input, tuple(engine.get_tensor_shape(name)), engine.get_tensor_dtype(name).name)

    def _stream_weights(self) -> int:
        """Set the plan's weight-streaming budget (before the execution context exists); returns it in bytes."""
        streamable = int(self.engine.streamable_weights_size)
        free = torch.cuda.mem_get_info(self.device)[0] if self.device.type == "cuda" else None  # None: a stand-in
        activations = int(getattr(self.engine, "device_memory_size_v2", 0) or 0)
        activations += int(getattr(self.engine, "weight_streaming_scratch_memory_size", 0) or 0)
        activations += sum(4 * _numel(shape) for shape in FE2E.shapes(self.profile.max, self.size).values())
        budget = weight_streaming_budget(self.options.weight_streaming_budget, streamable, free, activations)
        self.engine.weight_streaming_budget_v2 = budget
        return budget

    def sizes(self) -> list[tuple[int, int]]:
        return [self.size]

    def how_to_add(self, size: tuple[int, int]) -> str:
        return f"`fe2e-deploy build-trt EXPORT/fe2e_{resolution_name(size)}.onnx` (one plan per resolution)"

    def _execute(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"TensorRT could not run {self.name} (execute_async_v3 returned False; see its log)")

    def _launch(self, batch: int) -> None:
        """Run the plan on the first ``batch`` rows of the buffers."""
        if self.stream is None:  # a stand-in runtime on the CPU (tests): no streams, no graphs
            self._execute(0)
            return
        torch.cuda.current_stream(self.device).synchronize()  # the input was written on torch's stream
        if batch not in self.graphs:  # first call at this batch: run once eagerly (checked), then capture it
            self._execute(self.stream.cuda_stream)
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
            self.graphs[batch] = graph
        self.graphs[batch].replay()
        self.stream.synchronize()

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[0]
        if not self.profile.min <= batch <= self.profile.max:  # the template never asks for this
            raise ValueError(f"batch {batch} is outside the plan's profile {self.profile}")
        for tensor in FE2E.inputs:  # the shape of this call (a graph captured at this batch replays with it)
            self.context.set_input_shape(tensor.name, tensor.shape(batch, *self.size))
        (image,) = FE2E.inputs
        self.buffers[image.name][:batch].copy_(x)
        self._launch(batch)
        depth, normals = (self.buffers[t.name][:batch] for t in FE2E.outputs)
        return depth.clone(), normals.clone()  # the buffers are overwritten by the next call

    def _release(self) -> None:
        self.graphs.clear()
        self.buffers.clear()
        del self.context, self.engine


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
