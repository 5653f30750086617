"""The reference pipeline (official files, eager PyTorch) behind the engine template."""

from __future__ import annotations

import torch

from ..model_files import ModelFiles
from ..precision import DTYPE_PRECISIONS, parse_precision, torch_dtype
from ..processing import depth_from_decoded
from ..reference import FE2EPipeline
from ..timing import NoTimer, StageTimer
from .base import Engine


class EagerEngine(Engine):
    """The official path: connector + DiT (CFG batch 2 on request) + FP32 VAE, any processing size, any batch."""

    marks_stages = True
    max_batch = None

    def __init__(self, pipeline: FE2EPipeline, processing_res: tuple[int, int] | None = None, name: str = "eager"):
        self.pipeline, self.processing_res, self.name = pipeline, processing_res, name
        self.device = pipeline.device

    @classmethod
    def from_model_files(
        cls,
        files: ModelFiles,
        dtype: str | None = "fp32",
        device: str = "cpu",
        processing_res: tuple[int, int] | None = None,
        cfg_batch: bool = False,
        progress: bool = False,
    ) -> EagerEngine:
        """Load the official files; ``dtype`` (fp32 or bf16, default fp32) is the DiT's, the VAE stays FP32."""
        precision = parse_precision(dtype or "fp32", DTYPE_PRECISIONS)
        pipe = FE2EPipeline.from_files(
            files.config,
            files.dit,
            files.vae,
            files.prompt,
            files.lora,
            torch_dtype(precision),
            device,
            cfg_batch,
            progress,
        )
        return cls(pipe, processing_res, name=f"eager-{precision}")

    @property
    def timer(self) -> NoTimer | StageTimer:
        return self.pipeline.timer

    @timer.setter
    def timer(self, value: NoTimer | StageTimer) -> None:
        self.pipeline.timer = value

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        with self.timer("vae_encode"):
            ref_latent = self.pipeline.encode(x)
        with self.timer("dit"):
            depth_latent, normal_latent = self.pipeline.predict_latents(ref_latent)
        with self.timer("vae_decode"):
            return depth_from_decoded(self.pipeline.decode(depth_latent)), self.pipeline.decode(normal_latent)
