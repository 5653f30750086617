"""Seeded random weights in the official layouts, made tensor by tensor on any device: no weight files.

Speed does not depend on the weights' values, and no machine here can download the real ones, so
full-size numbers are measured on random weights of the official shapes. Writing them to disk and
reading them back costs 25 GB (DiT) and minutes per stage; instead a :class:`SyntheticCheckpoint`
behaves like an opened safetensors file (``keys`` / ``get_slice`` / ``get_tensor``) whose tensors
are generated on demand, directly on the target device, from a seed and the tensor's name. Every
loader that reads official checkpoints (``loading.load_dit``, ``loading.load_vae``, ``strip``)
accepts one in place of a path, so models are built meta -> on the device -> filled in place,
exactly as from files. The same name and seed give the same tensor on the same device, so the
reference model and the stripped model built from one checkpoint hold the same weights.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass

import torch

from .artifacts.stripped import SourceRecord
from .config import ModelConfig, load_model_config
from .load_gate import opening
from .loading.dit_layout import dit_layout
from .loading.prompt import PromptEmbedding
from .loading.vae_layout import vae_layout
from .tiny import check_seed, random_official_tensor

#: The real ``no_info.npz`` holds 640 tokens (Step1X-Edit's Qwen2.5-VL context length).
PROMPT_TOKENS = 640
#: Valid tokens of the synthetic empty prompt (the chat template around an empty instruction).
PROMPT_VALID_TOKENS = 32


class _Slice:
    def __init__(self, shape: tuple[int, ...]):
        self._shape = shape

    def get_shape(self) -> list[int]:
        return list(self._shape)


class SyntheticCheckpoint:
    """An official checkpoint of seeded random tensors, generated on ``device`` when read (FP32)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], seed: int, device: str | torch.device, label: str):
        self.shapes, self.seed, self.device, self.label = dict(shapes), seed, torch.device(device), label

    def __enter__(self) -> SyntheticCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __str__(self) -> str:
        return f"synthetic {self.label} (seed {self.seed})"

    def keys(self) -> list[str]:
        return list(self.shapes)

    def get_slice(self, name: str) -> _Slice:
        return _Slice(self.shapes[name])

    def get_tensor(self, name: str) -> torch.Tensor:
        if name not in self.shapes:
            raise KeyError(f"{self}: no tensor {name!r}")
        # modulo 2**64: torch seeds are 64-bit; the same value as before for every seed below 2**44
        seed = (self.seed * 1_000_003 + zlib.crc32(name.encode())) % 2**64
        generator = torch.Generator(device=self.device).manual_seed(seed)
        return random_official_tensor(name, self.shapes[name], generator)

    def describe(self) -> SourceRecord:
        """What a stripped folder or report records as this source (the digest stands for its contents)."""
        digest = hashlib.sha256(json.dumps([self.label, self.seed, sorted(self.shapes.items())]).encode())
        return SourceRecord(path=str(self), synthetic=self.label, seed=self.seed, sha256=digest.hexdigest())

    def parameter_count(self) -> int:
        return sum(torch.Size(s).numel() for s in self.shapes.values())


@dataclass(frozen=True)
class SyntheticModel:
    """The DiT and VAE checkpoints and the empty-prompt embedding of a config, seeded, on one device."""

    config: ModelConfig
    preset: str
    seed: int
    device: torch.device

    @classmethod
    def create(cls, preset: str, seed: int = 0, device: str | torch.device = "cpu") -> SyntheticModel:
        """``preset``: ``step1x-edit`` (12.4 B), ``tiny``, or a ``model_config.json`` path; ``seed``: 0 to 2**63-1."""
        seed = check_seed(seed)
        config = load_model_config(preset)
        opening("synthetic weights", preset)
        return cls(config, str(preset), seed, torch.device(device))

    @property
    def dit(self) -> SyntheticCheckpoint:
        shapes = dit_layout(self.config).official_shapes()
        return SyntheticCheckpoint(shapes, self.seed, self.device, f"{self.preset} DiT")

    @property
    def vae(self) -> SyntheticCheckpoint:
        shapes = vae_layout(self.config.vae).official_shapes()
        return SyntheticCheckpoint(shapes, self.seed + 1, self.device, f"{self.preset} VAE")

    def prompt(self, tokens: int = PROMPT_TOKENS, valid: int = PROMPT_VALID_TOKENS) -> PromptEmbedding:
        """A random empty-prompt embedding with the real file's shape ([640, in_channels], 32 valid tokens)."""
        generator = torch.Generator(device=self.device).manual_seed(self.seed + 2)
        embeds = torch.randn(tokens, self.config.connector.in_channels, generator=generator, device=self.device)
        mask = (torch.arange(tokens, device=self.device) < min(valid, tokens)).long()
        return PromptEmbedding(embeds, mask)


def describe_prompt(prompt: PromptEmbedding) -> SourceRecord:
    """A record of an in-memory prompt embedding (its shape and a hash of its values)."""
    digest = hashlib.sha256(prompt.embeds.detach().float().cpu().numpy().tobytes())
    digest.update(prompt.mask.detach().cpu().numpy().tobytes())
    return SourceRecord(path="in-memory prompt embedding", shape=list(prompt.embeds.shape), sha256=digest.hexdigest())
