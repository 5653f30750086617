"""The ONNX Runtime engine: the exported fused graph (``fe2e_WxH.onnx``), CPU or CUDA provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..artifacts.export import MANIFEST, fused_graphs, load_manifest, read_graph
from ..precision import parse_precision
from ..resolution import resolution_name
from .base import Engine, check_precision
from .ort_session import make_session


class OnnxEngine(Engine):
    """image -> depth + normals through the ``fe2e_WxH.onnx`` graphs of one export folder.

    ``path`` is one fused graph (its resolution only) or the export folder (every fused graph in
    it). Each image runs at ``processing_res`` or FE2E's size for it, which must have been exported.
    """

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        processing_res: tuple[int, int] | None = None,
        dtype: str | None = None,
    ):
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        if path.suffix == ".onnx" and not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX graph not found")
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{path}: no {MANIFEST} next to the graph; pass a graph of a `fe2e-deploy export`")
        manifest = load_manifest(folder)
        fused = fused_graphs(manifest)
        if path.is_file():
            fused = {size: entry for size, entry in fused.items() if entry["file"] == path.name}
            if not fused:
                raise ValueError(f"{path}: not a fused fe2e graph of {folder / MANIFEST}")
        if not fused:
            raise ValueError(f"{folder}: the export has no fused fe2e graph (export with --graph fe2e)")
        self.files = {size: folder / entry["file"] for size, entry in fused.items()}
        for file in self.files.values():  # structure and weights.bin size, now: sessions open at the first image
            read_graph(file)
        self.device, self.processing_res = torch.device(device), processing_res
        self.precision = parse_precision(manifest.get("precision", manifest["dtype"]))  # fp32, bf16 or fp8
        check_precision(str(path), self.precision, dtype)
        if processing_res is not None and processing_res not in self.files:
            raise ValueError(
                f"processing resolution {resolution_name(processing_res)} not exported; available: "
                f"{', '.join(resolution_name(s) for s in self.files)}"
            )
        self._sessions: dict[tuple[int, int], object] = {}
        self.emulated = False  # set once a BF16 graph had to be emulated in FP32 (ORT CPU)
        self.max_batch = None if manifest["batch"] == "dynamic" else manifest["batch"]
        self.fixed_batch = self.max_batch is not None

    @property
    def name(self) -> str:
        return f"onnxruntime-{self.precision}{'-emulated' if self.emulated else ''}-{self.device.type}"

    def sizes(self) -> list[tuple[int, int]]:
        return list(self.files)

    def how_to_add(self, size: tuple[int, int]) -> str:
        return f"`fe2e-deploy export STRIPPED --resolution {resolution_name(size)}`"

    def session(self, size: tuple[int, int]):
        if size not in self._sessions:
            self._sessions[size], emulated = make_session(self.files[size], self.device.type)
            self.emulated |= emulated
        return self._sessions[size]

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        depth, normals = self.session(size).run(["depth", "normals"], {"image": x.cpu().numpy()})
        return torch.from_numpy(np.asarray(depth)), torch.from_numpy(np.asarray(normals))
