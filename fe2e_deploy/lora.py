"""FE2E's LoRA in the kohya (sd-scripts) format: reading it and applying it unmerged with peft.

Kohya names are the official module names with ``.`` -> ``_`` under ``lora_unet_``
(``lora_unet_double_blocks_0_img_attn_qkv.{lora_down.weight, lora_up.weight, alpha}``); the
delta is ``(alpha / rank) * up @ down``. Fused official linears (qkv, single ``linear1``) map to
several diffusers linears: each gets the matching rows of ``up`` and the shared ``down``.
diffusers' own kohya converter is private API, so we reuse our checkpoint layout instead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, inject_adapter_in_model

from .config import ModelConfig, finite_number
from .loading.checkpoint import CheckpointError, non_finite, open_safetensors
from .loading.dit_layout import dit_layout, lora_target_modules
from .loading.dtypes import ACCEPTED, STORAGE_DTYPES

PREFIX = "lora_unet_"


@dataclass(frozen=True)
class LoraPair:
    module: str  # official module name, e.g. double_blocks.0.img_attn.qkv
    down: torch.Tensor  # [rank, in]
    up: torch.Tensor  # [out, rank]
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, multiplier: float = 1.0) -> torch.Tensor:
        """``multiplier * (alpha / rank) * up @ down`` in FP32: what merging adds to the weight."""
        return (self.up.float() @ self.down.float()).mul_(multiplier * self.scale)  # one allocation


KOHYA_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
#: safetensors dtype codes of LoRA tensors: float matrices (FP8-stored too: read as FP32, exactly); ``alpha`` a
#: float (or, as some trainers write it, integer) scalar.
FLOAT_CODES = tuple(STORAGE_DTYPES)
ALPHA_CODES = (*FLOAT_CODES, "I64", "I32", "I16", "I8", "U8")


def check_multiplier(multiplier: float) -> float:
    """``--multiplier`` of merge-lora: a finite number (NaN / Inf would make every merged weight NaN / Inf)."""
    return finite_number(multiplier, "--multiplier")


@dataclass(frozen=True)
class KohyaEntry:
    """One module of a kohya file, checked from the header: tensor names, rank, alpha, official shape."""

    module: str  # official module name
    down_key: str
    up_key: str
    rank: int
    alpha: float
    shape: tuple[int, int]  # of the official weight, [out, in]


def index_kohya_lora(path: str | Path, handle, config: ModelConfig) -> dict[str, KohyaEntry]:
    """Check every name and shape of an open kohya file against ``config``; reads only the alphas."""
    shapes = dit_layout(config).official_shapes()
    modules = {m.replace(".", "_"): m for m in lora_target_modules(config)}
    groups: dict[str, dict[str, str]] = {}
    for key in sorted(handle.keys()):  # noqa: SIM118  (a safe_open handle is not iterable)
        stem, _, part = key.partition(".")
        if not stem.startswith(PREFIX) or part not in KOHYA_PARTS:
            raise CheckpointError(
                f"{path}: tensor {key!r} is not a kohya LoRA tensor for the DiT "
                f"(expected {PREFIX}<module>.lora_down.weight / .lora_up.weight / .alpha)"
            )
        groups.setdefault(stem, {})[part] = key
    if not groups:
        raise CheckpointError(f"{path}: contains no LoRA tensors")
    entries = {}
    for stem, parts in sorted(groups.items()):
        module = modules.get(stem.removeprefix(PREFIX))
        if module is None:
            raise CheckpointError(
                f"{path}: LoRA module {stem!r} matches no Linear of the double/single blocks of this "
                "model (a LoRA for another model or config?)"
            )
        for needed in KOHYA_PARTS[:2]:
            if needed not in parts:
                raise CheckpointError(f"{path}: {stem} has no {needed}")
        down = tuple(handle.get_slice(parts["lora_down.weight"]).get_shape())
        up = tuple(handle.get_slice(parts["lora_up.weight"]).get_shape())
        out_features, in_features = shape = shapes[module + ".weight"]
        if len(down) != 2 or len(up) != 2 or down[0] != up[1]:
            raise CheckpointError(
                f"{path}: {stem}: lora_down {list(down)} and lora_up {list(up)} are not a rank-r pair"
            )
        if down[1] != in_features or up[0] != out_features:
            raise CheckpointError(
                f"{path}: {stem}: LoRA maps {down[1]} -> {up[0]} features but {module} "
                f"is {in_features} -> {out_features}"
            )
        for part, codes in (("lora_down.weight", FLOAT_CODES), ("lora_up.weight", FLOAT_CODES), ("alpha", ALPHA_CODES)):
            code = handle.get_slice(parts[part]).get_dtype() if part in parts else codes[0]
            if code not in codes:
                raise CheckpointError(f"{path}: {parts[part]} has dtype {code}, expected a float type ({ACCEPTED})")
        alpha = _read_alpha(path, handle, parts["alpha"]) if "alpha" in parts else float(down[0])
        entries[module] = KohyaEntry(module, parts["lora_down.weight"], parts["lora_up.weight"], down[0], alpha, shape)
    return entries


def _read_alpha(path, handle, key: str) -> float:
    """The ``alpha`` scalar of one module: one value (shape [] or [1]), finite."""
    shape = list(handle.get_slice(key).get_shape())
    if math.prod(shape) != 1:
        raise CheckpointError(f"{path}: {key} has shape {shape}, expected a scalar")
    alpha = float(handle.get_tensor(key).float().item())
    if not math.isfinite(alpha):
        raise CheckpointError(f"{path}: {key} is {alpha}: alpha contains NaN or Inf")
    return alpha


def _read_matrix(handle, key: str) -> torch.Tensor:
    tensor = handle.get_tensor(key)
    problem = non_finite(tensor)
    if problem:  # files opened with open_safetensors are checked already; other sources are checked here
        raise CheckpointError(f"{handle}: tensor {key} contains NaN or Inf ({problem})")
    return tensor.float()


def read_kohya_pair(handle, entry: KohyaEntry) -> LoraPair:
    """The (down, up) matrices of ``entry`` in FP32, refused if they hold NaN or Inf."""
    return LoraPair(entry.module, _read_matrix(handle, entry.down_key), _read_matrix(handle, entry.up_key), entry.alpha)


def read_kohya_lora(path: str | Path, config: ModelConfig) -> dict[str, LoraPair]:
    """All LoRA pairs of a kohya file, checked against the official shapes of ``config``."""
    with open_safetensors(path) as handle:
        return {m: read_kohya_pair(handle, e) for m, e in index_kohya_lora(path, handle, config).items()}


def apply_lora_unmerged(dit: torch.nn.Module, pairs: dict[str, LoraPair], adapter: str = "fe2e") -> None:
    """Inject peft LoRA layers into ``dit`` (a ``Step1XEditDiT``) holding ``pairs``, base weights untouched."""
    layout = dit_layout(dit.config)
    targets: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}  # diffusers module -> (down, up, alpha)
    for module, pair in pairs.items():
        rule = layout.rules[module + ".weight"]
        ups = dict(rule.convert(pair.up, layout.params))  # rows split like the base weight
        for target, up in ups.items():
            # an up of rank r on split rows keeps rank r; peft's scale is alpha / r as kohya's
            targets[target.removeprefix("transformer.").removesuffix(".weight")] = (pair.down, up, pair.alpha)
    ranks = [d.shape[0] for d, _, _ in targets.values()]
    rank = max(set(ranks), key=ranks.count)
    alpha = next(iter(targets.values()))[2]
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules="^(" + "|".join(re.escape(t) for t in sorted(targets)) + ")$",
        # peft matches these as suffixes at a module boundary
        rank_pattern={re.escape(t): d.shape[0] for t, (d, _, _) in targets.items() if d.shape[0] != rank},
        lora_dropout=0.0,
        init_lora_weights=False,
    )
    transformer = dit.transformer
    inject_adapter_in_model(config, transformer, adapter_name=adapter)
    dtype = transformer.x_embedder.weight.dtype
    with torch.no_grad():
        for name, (down, up, module_alpha) in targets.items():
            layer = transformer.get_submodule(name)
            layer.lora_A[adapter].weight.copy_(down.to(dtype))
            # peft scales by lora_alpha / r; a module with another alpha gets it folded into up
            layer.lora_B[adapter].weight.copy_((up * (module_alpha / alpha)).to(dtype))
    transformer.requires_grad_(False)
