"""The reference pipeline (official files, eager PyTorch) behind the engine template."""

from __future__ import annotations

from dataclasses import replace

import torch

from ..model_files import ModelFiles
from ..precision import DTYPE_PRECISIONS, parse_precision, torch_dtype
from ..processing import depth_from_decoded
from ..reference import FE2EPipeline
from ..timing import NO_TIMER, NoTimer, StageTimer
from .base import Engine
from .options import EngineOptions


class EagerEngine(Engine):
    """The official path: connector + DiT (CFG batch 2 on request) + FP32 VAE, any processing size, any batch."""

    marks_stages = True

    def __init__(
        self,
        pipeline: FE2EPipeline,
        options: EngineOptions | None = None,
        *,
        timer: NoTimer | StageTimer = NO_TIMER,
        name: str = "eager",
        **fields: object,
    ):
        options = EngineOptions.of(options, **fields)
        super().__init__(options, timer)
        self.pipeline, self.name = pipeline, name
        self.pipeline.timer = timer
        self.device = pipeline.device

    @classmethod
    def from_model_files(
        cls,
        files: ModelFiles,
        options: EngineOptions | None = None,
        *,
        timer: NoTimer | StageTimer = NO_TIMER,
        cfg_batch: bool = False,
        name: str | None = None,
        **fields: object,
    ) -> EagerEngine:
        """Load the official files; ``options.dtype`` (fp32 or bf16, default fp32) is the DiT's, the VAE stays FP32.

        ``options.processing_res`` defaults to the size the model was trained at, when it has one (the demo model).
        """
        options = EngineOptions.of(options, **fields).resolved()
        precision = parse_precision(options.dtype or "fp32", DTYPE_PRECISIONS)
        if options.processing_res is None and files.processing_res is not None:
            options = replace(options, processing_res=files.processing_res)
        pipe = FE2EPipeline.from_files(
            files.config,
            files.dit,
            files.vae,
            files.prompt,
            files.lora,
            torch_dtype(precision),
            options.device,
            cfg_batch,
            options.progress,
        )
        return cls(pipe, options, timer=timer, name=name or f"eager-{precision}")

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        with self.timer("vae_encode"):
            ref_latent = self.pipeline.encode(x)
        with self.timer("dit"):
            depth_latent, normal_latent = self.pipeline.predict_latents(ref_latent)
        with self.timer("vae_decode"):
            return depth_from_decoded(self.pipeline.decode(depth_latent)), self.pipeline.decode(normal_latent)

    def _release(self) -> None:
        del self.pipeline
