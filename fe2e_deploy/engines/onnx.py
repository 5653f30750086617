"""The ONNX Runtime engine: the exported fused graph (``fe2e_WxH.onnx``), CPU or CUDA provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..artifacts.export import MANIFEST, load_manifest
from ..processing import Prediction, fe2e_processing_size, postprocess, preprocess, resolution_name
from ..timing import NO_TIMER
from .ort_session import make_session


class OnnxEngine:
    """image -> depth + normals through ``fe2e_WxH.onnx`` graphs of one export folder.

    ``path`` is one fused graph (its resolution only) or the export folder (every fused graph in
    it). Each image is processed at FE2E's size for it when that graph exists, else at the only
    resolution there is (resized there and back); otherwise it is an error naming the sizes.
    """

    def __init__(self, path: str | Path, device: str = "cpu", processing_res: tuple[int, int] | None = None):
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{path}: no {MANIFEST} next to the graph; pass a graph of a `fe2e-deploy export`")
        manifest = load_manifest(folder)
        fused = {k: v for k, v in manifest["graphs"].items() if k.startswith("fe2e_")}
        if path.is_file():
            fused = {k: v for k, v in fused.items() if v["file"] == path.name}
            if not fused:
                raise ValueError(f"{path}: not a fused fe2e graph of {folder / MANIFEST}")
        if not fused:
            raise ValueError(f"{folder}: the export has no fused fe2e graph (export with --graph fe2e)")
        self.files = {_size(k): folder / v["file"] for k, v in fused.items()}
        self.device, self.processing_res = device, processing_res
        if processing_res is not None and processing_res not in self.files:
            raise ValueError(f"processing resolution {processing_res} not exported; available: {self.resolutions()}")
        self._sessions: dict[tuple[int, int], object] = {}
        self.emulated = False  # set once a BF16 graph had to be emulated in FP32 (ORT CPU)
        self.timer = NO_TIMER
        self.dtype = manifest.get("precision", manifest["dtype"])  # fp8, bfloat16 or float32
        self.dynamic_batch = manifest["batch"] == "dynamic"

    @property
    def name(self) -> str:
        return f"onnxruntime-{self.dtype}{'-emulated' if self.emulated else ''}-{self.device}"

    def resolutions(self) -> str:
        return ", ".join(resolution_name(s) for s in self.files)

    def size_for(self, image: Image.Image) -> tuple[int, int]:
        size = self.processing_res or fe2e_processing_size(*image.size)
        if size in self.files:
            return size
        if len(self.files) == 1:
            return next(iter(self.files))
        raise ValueError(f"image {image.size}: FE2E processes it at {size}, not exported; have {self.resolutions()}")

    def session(self, size: tuple[int, int]):
        if size not in self._sessions:
            self._sessions[size], emulated = make_session(self.files[size], self.device)
            self.emulated |= emulated
        return self._sessions[size]

    def predict_batch(self, images: list[Image.Image]) -> list[Prediction]:
        """One session run for images of one processing size if the export has a dynamic batch, else one by one."""
        sizes = {self.size_for(image) for image in images}
        if not self.dynamic_batch or len(sizes) != 1:
            return [self.predict(image) for image in images]
        size = sizes.pop()
        x = torch.cat([preprocess(image, size) for image in images]).numpy()
        depth, normals = (
            torch.from_numpy(np.asarray(a)) for a in self.session(size).run(["depth", "normals"], {"image": x})
        )
        return [postprocess(depth[i : i + 1], normals[i : i + 1], image.size) for i, image in enumerate(images)]

    def predict(self, image: Image.Image) -> Prediction:
        size = self.size_for(image)
        session = self.session(size)
        with self.timer("preprocess"):
            x = preprocess(image, size).numpy()
        with self.timer("model"):
            depth, normals = session.run(["depth", "normals"], {"image": x})
        with self.timer("postprocess"):
            return postprocess(torch.from_numpy(np.asarray(depth)), torch.from_numpy(np.asarray(normals)), image.size)


def _size(key: str) -> tuple[int, int]:
    w, h = key.rsplit("_", 1)[1].split("x")
    return int(w), int(h)
