"""Official checkpoint names -> our model's parameters, one rule per official tensor.

diffusers ships converters for FLUX/LDM checkpoints, but they work on a whole in-memory state dict
(they pop and concatenate across it); loading a 25 GB checkpoint on a 24 GiB machine needs a
per-tensor mapping, so the rules live here and the loader applies them one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

RuleKind = Literal["copy", "split", "swap_halves", "conv1x1"]


@dataclass(frozen=True)
class TensorRule:
    """How one official tensor becomes one or more model parameters.

    ``copy``: same tensor. ``split``: rows split, in order, over ``targets`` (fused qkv, linear1).
    ``swap_halves``: ``[a; b] -> [b; a]`` (FLUX's final adaLN is (shift, scale), diffusers' is
    (scale, shift)). ``conv1x1``: a ``[c, c, 1, 1]`` conv weight used as a linear ``[c, c]``.
    """

    official: str
    targets: tuple[str, ...]
    kind: RuleKind = "copy"

    def official_shape(self, params: dict[str, torch.Size]) -> tuple[int, ...]:
        shapes = [tuple(params[t]) for t in self.targets]
        if self.kind == "split":
            return (sum(s[0] for s in shapes), *shapes[0][1:])
        if self.kind == "conv1x1":
            return (*shapes[0], 1, 1)
        return shapes[0]

    def convert(self, tensor: torch.Tensor, params: dict[str, torch.Size]) -> Iterator[tuple[str, torch.Tensor]]:
        if self.kind == "copy":
            yield self.targets[0], tensor
        elif self.kind == "split":
            sizes = [params[t][0] for t in self.targets]
            yield from zip(self.targets, torch.split(tensor, sizes, dim=0), strict=True)
        elif self.kind == "swap_halves":
            first, second = tensor.chunk(2, dim=0)
            yield self.targets[0], torch.cat([second, first], dim=0)
        else:
            yield self.targets[0], tensor.reshape(tensor.shape[:2])

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`convert`: the target tensors (in ``targets`` order) -> the official tensor."""
        if self.kind == "split":
            return torch.cat(parts, dim=0)
        if self.kind == "swap_halves":
            scale, shift = parts[0].chunk(2, dim=0)
            return torch.cat([shift, scale], dim=0)
        if self.kind == "conv1x1":
            return parts[0].reshape(*parts[0].shape, 1, 1)
        return parts[0]


@dataclass(frozen=True)
class CheckpointLayout:
    """All rules of one checkpoint plus the model's parameter shapes they target."""

    rules: dict[str, TensorRule]
    params: dict[str, torch.Size]

    def __post_init__(self) -> None:
        targeted = [t for rule in self.rules.values() for t in rule.targets]
        untargeted = set(self.params) - set(targeted)
        unknown = set(targeted) - set(self.params)
        if untargeted or unknown or len(targeted) != len(set(targeted)):
            raise AssertionError(f"layout does not cover the model: {sorted(untargeted)[:5]} {sorted(unknown)[:5]}")

    def official_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: rule.official_shape(self.params) for name, rule in self.rules.items()}


def parameter_shapes(module: nn.Module, prefix: str = "") -> dict[str, torch.Size]:
    return {prefix + name: t.shape for name, t in module.state_dict().items()}


def copy_rules(names: list[str], official_prefix: str = "", target_prefix: str = "") -> dict[str, TensorRule]:
    """Identity rules for modules that use the official names (the connector)."""
    return {official_prefix + n: TensorRule(official_prefix + n, (target_prefix + n,)) for n in names}
