"""The reference FE2E pipeline: one deterministic DiT step predicting depth and normals together.

An image goes: resize (FE2E's rule) -> [-1, 1] -> VAE encode (posterior mean) -> reference
latent. The target latent z0 = 0 and the reference are packed 2x2 into tokens and concatenated
(target first); one DiT forward at t = 1 under the empty prompt gives a velocity v. The depth
latent is z0 + (t_prev - t_curr) * v = -v on the target half; the normal latent is v on the
reference half. Both are decoded, clamped to [-1, 1]; depth = mean over RGB of x * 0.5 + 0.5
(affine-invariant log depth in [0, 1]), normals = unit vectors, both resized to the input size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from PIL import Image

from .config import ModelConfig
from .loading import PromptEmbedding, load_dit, load_prompt_embedding, load_vae
from .lora import apply_lora_unmerged, read_kohya_lora
from .models.dit import Step1XEditDiT
from .models.packing import latent_ids, pack, unpack
from .models.vae import decode, encode_mean
from .timing import NO_TIMER

T_CURR, T_PREV = 1.0, 0.0  # the one-step schedule
CFG_SCALE = 6.0  # the official default; a no-op here because cond and uncond prompts are both empty
RESOLUTION_MULTIPLE = 16  # 8x VAE downsampling x 2x2 token packing


def fe2e_processing_size(width: int, height: int) -> tuple[int, int]:
    """FE2E's resize rule (official ``input_process_image``): (width, height) to process at."""
    if width <= 1024 and height <= 768:
        return 1024, 768
    if width <= 1280 and height <= 960:
        return 1216, 352
    if width <= 6048 and height <= 4032:
        return 864, 576
    # Larger images are kept; the official code then fails unless both sides are multiples of 16.
    return (
        max(RESOLUTION_MULTIPLE, width // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE),
        max(RESOLUTION_MULTIPLE, height // RESOLUTION_MULTIPLE * RESOLUTION_MULTIPLE),
    )


def parse_resolution(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> (1024, 768), both positive multiples of 16."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"resolution {text!r} is not WIDTHxHEIGHT (e.g. 1024x768)") from None
    if w <= 0 or h <= 0 or w % RESOLUTION_MULTIPLE or h % RESOLUTION_MULTIPLE:
        raise ValueError(f"resolution {text!r}: width and height must be positive multiples of {RESOLUTION_MULTIPLE}")
    return w, h


@dataclass
class Prediction:
    depth: np.ndarray  # [H, W] float32 in [0, 1], affine-invariant in log depth
    normals: np.ndarray  # [H, W, 3] float32 unit vectors, components in [-1, 1]


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
    ) -> FE2EPipeline:
        """Load the official files; the VAE stays FP32 as in the official code, ``dtype`` is the DiT's."""
        prompt = load_prompt_embedding(prompt_path, config.connector.in_channels)
        lora = read_kohya_lora(lora_path, config) if lora_path else None
        dit = load_dit(config, dit_path, dtype, device)
        if lora:
            apply_lora_unmerged(dit, lora)
        vae = load_vae(config, vae_path, torch.float32, device)
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


def depth_from_decoded(decoded: torch.Tensor) -> torch.Tensor:
    """Decoded depth image ``[B, 3, h, w]`` in [-1, 1] -> ``[B, 1, h, w]`` in [0, 1] (mean over RGB)."""
    return (decoded * 0.5 + 0.5).mean(dim=1, keepdim=True)


def preprocess(image: Image.Image, processing_res: tuple[int, int] | None = None) -> torch.Tensor:
    """RGB image -> ``[1, 3, h, w]`` in [-1, 1] at FE2E's processing size (or ``processing_res``)."""
    image = image.convert("RGB")
    size = processing_res or fe2e_processing_size(*image.size)
    if image.size != size:
        image = image.resize(size, Image.Resampling.BICUBIC)  # PIL's default, as the official code
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()
    return x * 2 - 1


def resize_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B, C, h, w]`` to (width, height), antialiased when shrinking."""
    width, height = size
    if x.shape[-2:] == (height, width):
        return x
    shrink = height < x.shape[-2] or width < x.shape[-1]
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=shrink)


def postprocess(depth: torch.Tensor, normals: torch.Tensor, size: tuple[int, int]) -> Prediction:
    """Depth ``[1, 1, h, w]`` in [0, 1] and decoded normals ``[1, 3, h, w]`` -> maps at ``size``."""
    depth = resize_to(depth, size).clamp(0, 1)
    normals = resize_to(normals, size)
    normals = normals / torch.linalg.vector_norm(normals, dim=1, keepdim=True).clamp_min(1e-6)
    return Prediction(
        depth=depth[0, 0].cpu().numpy().astype(np.float32),
        normals=normals[0].permute(1, 2, 0).cpu().numpy().astype(np.float32),
    )
