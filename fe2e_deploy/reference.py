"""The reference FE2E pipeline (eager PyTorch, the official path): one deterministic step for depth and normals.

An image goes: resize (FE2E's rule) -> [-1, 1] -> VAE encode (posterior mean) -> reference
latent. The target latent z0 = 0 and the reference are packed 2x2 into tokens and concatenated
(target first); one DiT forward at t = 1 under the empty prompt gives a velocity v. The depth
latent is z0 + (t_prev - t_curr) * v = -v on the target half; the normal latent is v on the
reference half. Both are decoded, clamped to [-1, 1]; depth = mean over RGB of x * 0.5 + 0.5
(affine-invariant log depth in [0, 1]), normals = unit vectors, both resized to the input size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL
from PIL import Image

from .config import ModelConfig
from .loading import PromptEmbedding, load_dit, load_prompt_embedding, load_vae
from .lora import apply_lora_unmerged, read_kohya_lora
from .models.dit import Step1XEditDiT
from .models.packing import latent_ids, pack, unpack
from .models.vae import decode, encode_mean
from .processing import Prediction, depth_from_decoded, postprocess, preprocess
from .timing import NO_TIMER

T_CURR, T_PREV = 1.0, 0.0  # the one-step schedule
CFG_SCALE = 6.0  # the official default; a no-op here because cond and uncond prompts are both empty


class FE2EPipeline:
    """Reference (eager PyTorch) FE2E inference."""

    def __init__(
        self,
        dit: Step1XEditDiT,
        vae: AutoencoderKL,
        prompt: PromptEmbedding,
        device: str | torch.device = "cpu",
        cfg_batch: bool = False,
    ):
        self.dit, self.vae, self.prompt = dit, vae, prompt
        self.device = torch.device(device)
        self.cfg_batch = cfg_batch
        self.timer = NO_TIMER  # benchmark swaps in a StageTimer

    @classmethod
    def from_files(
        cls,
        config: ModelConfig,
        dit_path: str | Path,
        vae_path: str | Path,
        prompt_path: str | Path,
        lora_path: str | Path | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        cfg_batch: bool = False,
        progress: bool = False,
    ) -> FE2EPipeline:
        """Load the official files; the VAE stays FP32 as in the official code, ``dtype`` is the DiT's."""
        prompt = load_prompt_embedding(prompt_path, config.connector.in_channels)
        lora = read_kohya_lora(lora_path, config) if lora_path else None
        dit = load_dit(config, dit_path, dtype, device, progress)
        if lora:
            apply_lora_unmerged(dit, lora)
        vae = load_vae(config, vae_path, torch.float32, device, progress)
        return cls(dit, vae, prompt, device, cfg_batch)

    def preprocess(self, image: Image.Image, processing_res: tuple[int, int] | None = None) -> torch.Tensor:
        return preprocess(image, processing_res).to(self.device)

    @torch.inference_mode()
    def encode(self, image: torch.Tensor) -> torch.Tensor:
        return encode_mean(self.vae, image).float()

    def velocity(self, ref_latent: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """The DiT's velocity ``[copies * B, 2N, 64]`` at t = 1 for image tokens [z0 = 0, reference].

        ``copies = 2`` is the official CFG batch (cond then uncond, both with the empty prompt).
        Not under inference mode: ``train-lora`` calls it with gradients.
        """
        b, _, h, w = ref_latent.shape
        dtype = self.dit.dtype
        ref = pack(ref_latent).to(dtype)
        img = torch.cat([torch.zeros_like(ref), ref], dim=1).repeat(copies, 1, 1)
        ids = latent_ids(h, w).to(self.device)
        img_ids = torch.cat([ids, ids], dim=0)
        txt_ids = torch.zeros(self.prompt.length, 3, device=self.device)
        batch = copies * b
        embeds = self.prompt.embeds.to(self.device, dtype)[None].expand(batch, -1, -1)
        mask = self.prompt.mask.to(self.device)[None].expand(batch, -1)
        t = torch.full((batch,), T_CURR, device=self.device, dtype=dtype)
        return self.dit(img, img_ids, txt_ids, t, embeds, mask)

    @torch.inference_mode()
    def predict_latents(self, ref_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference latent ``[B, 16, h, w]`` -> (depth latent, normal latent), same shape, float32."""
        b, _, h, w = ref_latent.shape
        n = (h // 2) * (w // 2)
        z0 = torch.zeros(b, n, 4 * ref_latent.shape[1], device=self.device)
        if self.cfg_batch:  # the official batch of 2: [cond, uncond], both with the empty prompt
            cond, uncond = self.velocity(ref_latent, copies=2).float().chunk(2)
            guided = uncond + CFG_SCALE * (cond - uncond)
            depth_tokens = z0 + (T_PREV - T_CURR) * guided[:, :n]
            normal_tokens = cond[:, n:]
        else:
            v = self.velocity(ref_latent).float()
            depth_tokens = z0 + (T_PREV - T_CURR) * v[:, :n]
            normal_tokens = v[:, n:]
        return unpack(depth_tokens, h, w), unpack(normal_tokens, h, w)

    @torch.inference_mode()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return decode(self.vae, latent).float().clamp(-1, 1)

    @torch.inference_mode()
    def __call__(self, image: Image.Image, processing_res: tuple[int, int] | None = None) -> Prediction:
        width, height = image.size
        with self.timer("preprocess"):
            x = self.preprocess(image, processing_res)
        with self.timer("vae_encode"):
            ref_latent = self.encode(x)
        with self.timer("dit"):
            depth_latent, normal_latent = self.predict_latents(ref_latent)
        with self.timer("vae_decode"):
            depth = depth_from_decoded(self.decode(depth_latent))
            normals = self.decode(normal_latent)
        with self.timer("postprocess"):
            return postprocess(depth, normals, (width, height))
