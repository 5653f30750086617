"""The TensorRT engine: a ``.plan`` from ``build-trt``, pre-allocated device buffers, one CUDA graph.

Needs the optional TensorRT extra and a CUDA GPU; the plan's sidecar must name this GPU. The runner
is written here rather than Polygraphy's ``TrtRunner``: FE2E's plan is one static-shape call per
image, and replaying it from a captured CUDA graph into pre-allocated buffers takes the host out of
the loop, which ``TrtRunner`` (buffers managed per call, no graph capture) does not do.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts.tensorrt import check_sidecar, import_tensorrt
from ..resolution import parse_resolution
from .base import Engine, check_precision

TRT_TO_TORCH = {"FLOAT": torch.float32, "BF16": torch.bfloat16, "HALF": torch.float16}


class TensorRTEngine(Engine):
    """image -> depth + normals through a serialized TensorRT plan at its one resolution (batch 1)."""

    fixed_batch = True

    def __init__(
        self,
        plan: str | Path,
        device: str = "cuda",
        processing_res: tuple[int, int] | None = None,
        dtype: str | None = None,
    ):
        plan = Path(plan)
        if not plan.is_file():
            raise FileNotFoundError(f"{plan}: engine not found")
        if not torch.cuda.is_available():
            raise ValueError(f"{plan}: TensorRT engines need a CUDA GPU; none is visible")
        self.sidecar = check_sidecar(plan)
        check_precision(str(plan), self.sidecar["precision"], dtype)
        self.resolution = parse_resolution(self.sidecar["resolution"])
        self.processing_res = processing_res
        if processing_res is not None and processing_res != self.resolution:
            raise ValueError(f"{plan}: built for {self.sidecar['resolution']}, asked for {processing_res}")
        trt = import_tensorrt()
        self.device = torch.device(device)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise ValueError(f"{plan}: TensorRT cannot deserialize this plan (other TensorRT version?)")
        self.context = self.engine.create_execution_context()
        self.buffers: dict[str, torch.Tensor] = {}
        width, height = self.resolution
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = [1 if d < 0 else d for d in self.engine.get_tensor_shape(name)]
            if name == "image":
                shape = [1, 3, height, width]
                self.context.set_input_shape(name, shape)
            dtype = TRT_TO_TORCH[self.engine.get_tensor_dtype(name).name]
            self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
        self.stream = torch.cuda.Stream(self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.name = f"tensorrt-{self.sidecar['precision']}"

    def sizes(self) -> list[tuple[int, int]]:
        return [self.resolution]

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError(f"TensorRT could not run {self.name} (execute_async_v3 returned False; see its log)")

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        self.buffers["image"].copy_(x)
        torch.cuda.current_stream().synchronize()
        if self.graph is None:  # first call: run once eagerly (checked), then capture the launch in a CUDA graph
            self._execute()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)
        self.graph.replay()
        self.stream.synchronize()
        return self.buffers["depth"], self.buffers["normals"]
