"""The stripped model in eager PyTorch: the deployment graph (``models.fused.FE2EGraph``) per resolution."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..models.fused import FE2EGraph
from ..pipeline import Prediction, fe2e_processing_size, postprocess, preprocess
from ..strip import load_stripped
from ..timing import NO_TIMER


class StrippedEngine:
    """image -> depth + normals through the stripped folder's weights; one graph per processing size."""

    def __init__(self, folder: str | Path, device: str = "cpu", processing_res: tuple[int, int] | None = None):
        self.model = load_stripped(folder, device)
        self.device, self.processing_res = torch.device(device), processing_res
        self.name = f"stripped-{self.model.meta['dtype']}"
        self._graphs: dict[tuple[int, int], FE2EGraph] = {}
        self.timer = NO_TIMER

    def graph(self, width: int, height: int) -> FE2EGraph:
        if (width, height) not in self._graphs:
            self._graphs[width, height] = FE2EGraph(self.model.vae, self.model.dit, width, height).eval()
        return self._graphs[width, height]

    @torch.inference_mode()
    def predict_batch(self, images: list[Image.Image]) -> list[Prediction]:
        """One batched graph call when every image has the same processing size, else one by one."""
        sizes = {self.processing_res or fe2e_processing_size(*image.size) for image in images}
        if len(sizes) != 1:
            return [self.predict(image) for image in images]
        size = sizes.pop()
        x = torch.cat([preprocess(image, size) for image in images]).to(self.device)
        depth, normals = self.graph(*size)(x)
        return [postprocess(depth[i : i + 1], normals[i : i + 1], image.size) for i, image in enumerate(images)]

    @torch.inference_mode()
    def predict(self, image: Image.Image) -> Prediction:
        size = self.processing_res or fe2e_processing_size(*image.size)
        graph = self.graph(*size)
        with self.timer("preprocess"):
            x = preprocess(image, size).to(self.device)
        with self.timer("vae_encode"):
            ref_latent = graph.encoder(x)
        with self.timer("dit"):
            latents = graph.step(ref_latent)
        with self.timer("vae_decode"):
            depth, normals = graph.decode(*latents)
        with self.timer("postprocess"):
            return postprocess(depth, normals, image.size)
