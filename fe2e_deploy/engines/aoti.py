"""The AOTInductor engine: a ``.pt2`` package from ``build --backend aoti`` at its one resolution."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..build_aoti import check_aoti_sidecar
from ..pipeline import Prediction, parse_resolution, postprocess, preprocess
from ..timing import NO_TIMER


class AOTIEngine:
    """image -> depth + normals through a compiled package; every image is resized to its resolution and back."""

    def __init__(self, package: str | Path, device: str = "cpu", processing_res: tuple[int, int] | None = None):
        package = Path(package)
        if not package.is_file():
            raise FileNotFoundError(f"{package}: engine not found")
        self.sidecar = check_aoti_sidecar(package, device)
        self.resolution = parse_resolution(self.sidecar["resolution"])
        if processing_res is not None and processing_res != self.resolution:
            raise ValueError(f"{package}: built for {self.sidecar['resolution']}, asked for {processing_res}")
        self.device = torch.device(device)
        self.runner = torch._inductor.aoti_load_package(str(package))
        self.batch = int(self.sidecar["batch"])
        self.name = f"aoti-{self.sidecar['precision']}"
        self.timer = NO_TIMER

    @torch.inference_mode()
    def predict(self, image: Image.Image) -> Prediction:
        with self.timer("preprocess"):
            x = preprocess(image, self.resolution).to(self.device).contiguous()  # compiled for contiguous input
            x = x.expand(self.batch, -1, -1, -1).contiguous() if self.batch > 1 else x
        with self.timer("model"):
            depth, normals = self.runner(x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        with self.timer("postprocess"):
            return postprocess(depth[:1].float(), normals[:1].float(), image.size)
