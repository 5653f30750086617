"""Model configuration: the official Step1X-Edit / FLUX-VAE hyperparameters, presets and JSON files.

Field names are the official ones (``Step1XParams``, the connector's constructor and the FLUX
``AutoEncoder``'s constructor), so a ``model_config.json`` reads like the official code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import InvalidInput

#: Width of the connector's pooled projection (``global_proj_out``); fixed in the official module.
POOLED_DIM = 768

#: FE2E's latent geometry (fixed by the constraints ``validate`` enforces): the VAE downsamples 8x
#: (4 levels), latents have 16 channels, tokens pack 2x2 latent pixels, so processing sizes are
#: multiples of 16.
LATENT_DOWNSAMPLE = 8
LATENT_CHANNELS = 16
RESOLUTION_MULTIPLE = 16
#: FE2E's three processing resolutions (``processing.fe2e_processing_size``), (width, height).
FE2E_RESOLUTIONS = ((1024, 768), (1216, 352), (864, 576))
#: Seeds are 0 to 2**63-1 (torch's generators take at most 64 bits; one range for every command).
MAX_SEED = 2**63 - 1
#: Latest --start / --end accepted (seconds; 31 years): beyond any clip, and its timestamps stay 64-bit integers.
MAX_SECONDS = 1e9


class ConfigError(InvalidInput):
    """A model configuration that is malformed or violates a constraint of the official modules."""


def finite_number(value: float, name: str, *, positive: bool = False) -> float:
    """``value`` as a float if it is finite (and > 0 with ``positive``), else a ``ValueError`` naming ``name``.

    For numbers a user gives (options such as ``--multiplier``, ``--lr``): NaN and Inf pass every
    ``<``/``>`` check and would only surface later as NaN outputs.
    """
    number = float(value)
    if not math.isfinite(number):
        raise InvalidInput(f"{name} must be a finite number, got {value}")
    if positive and number <= 0:
        raise InvalidInput(f"{name} must be > 0, got {value}")
    return number


@dataclass(frozen=True)
class DiTConfig:
    """Step1X-Edit DiT (FLUX-style double/single stream transformer), official names."""

    in_channels: int = 64
    out_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10_000
    qkv_bias: bool = True

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)


@dataclass(frozen=True)
class ConnectorConfig:
    """Qwen2.5-VL -> DiT connector (token refiner + pooled projection), official names."""

    in_channels: int = 3584
    hidden_size: int = 4096
    heads_num: int = 32
    depth: int = 2


@dataclass(frozen=True)
class VAEConfig:
    """FLUX VAE (``AutoEncoder`` of the official code), official names."""

    resolution: int = 256
    in_channels: int = 3
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.ch * m for m in self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass(frozen=True)
class ModelConfig:
    """The three parts of FE2E: DiT, connector and VAE."""

    dit: DiTConfig = field(default_factory=DiTConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out = {}
        for part in ("dit", "connector", "vae"):
            out[part] = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(getattr(self, part)).items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a JSON object with 'dit', 'connector' and 'vae'")
        sections = ("dit", "connector", "vae")
        unknown = set(data) - set(sections)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; expected dit, connector, vae")
        missing = [name for name in sections if name not in data]
        if missing:
            raise ConfigError(f"{source}: section(s) {', '.join(missing)} missing; a config gives dit, connector, vae")
        parts = {}
        for name, klass in (("dit", DiTConfig), ("connector", ConnectorConfig), ("vae", VAEConfig)):
            parts[name] = _part_from_dict(klass, data[name], f"{source}: {name}")
        try:
            return cls(**parts)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _part_from_dict(klass: type, values: Any, where: str) -> Any:
    """One section of a config file: every key given (a missing key is an error, not the full-size default)."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected an object, got {type(values).__name__}")
    known = {f.name: f for f in fields(klass)}
    unknown = set(values) - set(known)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    missing = [key for key in known if key not in values]
    if missing:
        keys = ", ".join(f"{where}.{key}" for key in missing)
        raise ConfigError(f"{keys} missing (a config file gives every key of every section, as init-tiny writes)")
    kwargs = {}
    for key, value in values.items():
        default = known[key].default
        if isinstance(default, tuple):
            if not isinstance(value, list | tuple) or not all(isinstance(v, int) for v in value):
                raise ConfigError(f"{where}.{key}: expected a list of integers, got {value!r}")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected true/false, got {value!r}")
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
        elif isinstance(default, float):
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f"{where}.{key}: expected a finite number, got {value!r}")
            value = float(value)
        kwargs[key] = value
    return klass(**kwargs)


def validate(config: ModelConfig) -> None:
    """Check the constraints of the official modules (and of diffusers' Flux classes we build on)."""
    d, c, v = config.dit, config.connector, config.vae
    problems = []
    if d.vec_in_dim != POOLED_DIM:
        problems.append(f"dit.vec_in_dim must be {POOLED_DIM} (the connector's pooled projection), got {d.vec_in_dim}")
    if c.hidden_size != d.context_in_dim:
        problems.append(f"connector.hidden_size ({c.hidden_size}) must equal dit.context_in_dim ({d.context_in_dim})")
    if d.hidden_size % d.num_heads:
        problems.append(f"dit.hidden_size {d.hidden_size} is not divisible by dit.num_heads {d.num_heads}")
    elif sum(d.axes_dim) != d.head_dim:
        problems.append(f"sum(dit.axes_dim)={sum(d.axes_dim)} must equal the head dim {d.head_dim}")
    if any(a % 2 for a in d.axes_dim):
        problems.append(f"every dit.axes_dim entry must be even (RoPE pairs), got {list(d.axes_dim)}")
    if d.in_channels != 4 * v.z_channels:
        problems.append(
            f"dit.in_channels ({d.in_channels}) must be 4 * vae.z_channels ({4 * v.z_channels}): 2x2 packing"
        )
    if d.out_channels != d.in_channels:
        problems.append(f"dit.out_channels ({d.out_channels}) must equal dit.in_channels ({d.in_channels})")
    # diffusers' FluxTransformer2DModel hard-codes these three.
    if d.mlp_ratio != 4.0:
        problems.append(f"dit.mlp_ratio must be 4.0 (diffusers' Flux blocks), got {d.mlp_ratio}")
    if d.theta != 10_000:
        problems.append(f"dit.theta must be 10000 (diffusers' Flux RoPE), got {d.theta}")
    if not d.qkv_bias:
        problems.append("dit.qkv_bias must be true (Step1X-Edit and diffusers' Flux attention use biases)")
    if c.hidden_size % c.heads_num:
        problems.append(f"connector.hidden_size {c.hidden_size} is not divisible by heads_num {c.heads_num}")
    if len(v.ch_mult) != 4:
        problems.append(f"vae.ch_mult must have 4 levels (8x downsampling), got {list(v.ch_mult)}")
    if any(ch % 32 for ch in v.block_out_channels):
        problems.append(f"vae channels {list(v.block_out_channels)} must be multiples of 32 (GroupNorm(32))")
    if v.in_channels != 3 or v.out_ch != 3:
        problems.append("vae.in_channels and vae.out_ch must be 3 (RGB)")
    if not (math.isfinite(v.scale_factor) and v.scale_factor != 0):
        problems.append(
            f"vae.scale_factor must be a finite non-zero number (latents are divided by it), got {v.scale_factor}"
        )
    if not math.isfinite(v.shift_factor):
        problems.append(f"vae.shift_factor must be a finite number, got {v.shift_factor}")
    for name, value in (
        ("dit.depth", d.depth),
        ("dit.depth_single_blocks", d.depth_single_blocks),
        ("connector.depth", c.depth),
        ("vae.num_res_blocks", v.num_res_blocks),
    ):
        if value < 1:
            problems.append(f"{name} must be >= 1, got {value}")
    if problems:
        raise ConfigError("invalid model config:\n  - " + "\n  - ".join(problems))


PRESETS: dict[str, ModelConfig] = {
    "step1x-edit": ModelConfig(),
    "tiny": ModelConfig(
        dit=DiTConfig(
            context_in_dim=64, hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=(8, 12, 12)
        ),
        connector=ConnectorConfig(in_channels=48, hidden_size=64, heads_num=2, depth=2),
        vae=VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
    ),
}


def load_model_config(spec: str | Path) -> ModelConfig:
    """A preset name (``step1x-edit``, ``tiny``) or the path of a ``model_config.json``."""
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"model config {spec!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
    try:
        data = json.loads(path.read_text())
    except PermissionError as exc:
        raise ConfigError(f"{path}: permission denied (the file exists but cannot be read)") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    return ModelConfig.from_dict(data, source=str(path))
