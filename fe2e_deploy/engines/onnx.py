"""The ONNX Runtime engine: the exported fused graph (``fe2e_WxH.onnx``), CPU or CUDA provider.

Inputs and outputs are bound to torch tensors on the engine's device by pointer (ONNX Runtime's I/O
binding), with names, shapes and dtypes from :data:`fe2e_deploy.graph_io.FE2E`: on CUDA nothing goes
through host memory between calls, and the CPU runs the very same binding code in CI.

Each resolution of an export is its own ONNX Runtime session holding its own copy of the weights
(sessions do not share initializers), so a session opens when its resolution is first needed:
at once for ``processing_res`` or an export of one resolution, otherwise at the first image of that
size. Opening never reads the weights more than once per resolution used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..artifacts.export import ExportManifest, GraphEntry, load_manifest, read_graph
from ..errors import InvalidInput, MissingInput
from ..graph_io import FE2E
from ..resolution import resolution_name
from ..timing import NO_TIMER, NoTimer, StageTimer
from .base import Engine, check_precision
from .options import EngineOptions
from .ort_session import make_session, providers_for


class OnnxEngine(Engine):
    """image -> depth + normals through the ``fe2e_WxH.onnx`` graphs of one export folder.

    ``path`` is one fused graph (its resolution only) or the export folder (every fused graph in
    it). Each image runs at ``processing_res`` or FE2E's size for it, which must have been exported.
    """

    def __init__(
        self,
        path: str | Path,
        options: EngineOptions | None = None,
        *,
        timer: NoTimer | StageTimer = NO_TIMER,
        **fields: object,
    ):
        options = EngineOptions.of(options, **fields)
        super().__init__(options, timer)
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        if path.suffix == ".onnx" and not path.is_file():
            raise MissingInput(f"{path}: ONNX graph not found")
        if not (folder / ExportManifest.FILE).is_file():
            raise MissingInput(
                f"{path}: no {ExportManifest.FILE} next to the graph; pass a graph of a `fe2e-deploy export`"
            )
        self.manifest = load_manifest(folder)
        fused = self.manifest.graph_files(FE2E.name)
        if path.is_file():
            fused = {size: entry for size, entry in fused.items() if entry.file == path.name}
            if not fused:
                raise InvalidInput(f"{path}: not a fused {FE2E.name} graph of {folder / ExportManifest.FILE}")
        if not fused:
            raise InvalidInput(f"{folder}: the export has no fused {FE2E.name} graph (export with --graph fe2e)")
        self.entries: dict[tuple[int, int], GraphEntry] = fused
        self.files = {size: folder / entry.file for size, entry in fused.items()}
        self.precision = self.manifest.precision
        check_precision(path, self.precision, options.dtype)
        self.check_built_size(path)
        providers_for(str(self.device))  # a device this onnxruntime cannot run: now, not at the first image
        for file in self.files.values():  # structure and weights.bin size of every graph, before any session
            read_graph(file)
        self.profile = self.manifest.batch
        self._sessions: dict[tuple[int, int], object] = {}
        self.emulated = False  # set once a BF16 graph had to be emulated in FP32 (ORT CPU)
        if options.processing_res is not None:
            self.session(options.processing_res)
        elif len(self.files) == 1:
            self.session(next(iter(self.files)))

    @property
    def name(self) -> str:
        return f"onnxruntime-{self.precision}{'-emulated' if self.emulated else ''}-{self.device.type}"

    def sizes(self) -> list[tuple[int, int]]:
        return list(self.files)

    def how_to_add(self, size: tuple[int, int]) -> str:
        return f"`fe2e-deploy export STRIPPED --resolution {resolution_name(size)}`"

    def session(self, size: tuple[int, int]):
        """The session of one resolution (opened on first use: see the module docstring)."""
        if size not in self._sessions:
            self._sessions[size], emulated = make_session(self.files[size], str(self.device))
            self.emulated |= emulated
        return self._sessions[size]

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        session = self.session(size)
        binding = session.io_binding()
        device_type, device_id = self.device.type, self.device.index or 0
        x = x.to(device=self.device, dtype=torch.float32).contiguous()
        (image,) = FE2E.inputs
        binding.bind_input(image.name, device_type, device_id, np.float32, tuple(x.shape), x.data_ptr())
        outputs = []
        for tensor in FE2E.outputs:
            out = torch.empty(tensor.shape(x.shape[0], *size), dtype=torch.float32, device=self.device)
            binding.bind_output(tensor.name, device_type, device_id, np.float32, tuple(out.shape), out.data_ptr())
            outputs.append(out)
        if self.device.type == "cuda":  # the input was written on torch's stream; ONNX Runtime runs on its own
            torch.cuda.current_stream(self.device).synchronize()
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()  # the outputs are complete before torch reads them
        depth, normals = outputs
        return depth, normals

    def _release(self) -> None:
        self._sessions.clear()
