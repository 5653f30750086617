"""The one precision vocabulary: ``fp32``, ``bf16``, ``fp8`` on the command line and in artifacts.

``fp8`` means FP8 E4M3 linears inside a BF16 model (its compute dtype). Older spellings
(``float32``, ``bfloat16``, as torch writes them into manifests) are accepted when reading.
torch is imported only by the functions that need it, so the CLI can list the names cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import InvalidInput

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "bf16", "fp8")
DTYPE_PRECISIONS = ("fp32", "bf16")  # plain dtypes (no quantisation)
ALIASES = {"float32": "fp32", "fp32": "fp32", "bfloat16": "bf16", "bf16": "bf16", "fp8": "fp8"}


def parse_precision(name: str, allowed: tuple[str, ...] = PRECISIONS) -> str:
    """A precision name (any spelling) -> its canonical form, checked against ``allowed``."""
    canonical = ALIASES.get(str(name).lower().removeprefix("torch."))
    if canonical is None or canonical not in allowed:
        raise InvalidInput(f"precision {name!r} not supported; choose one of {', '.join(allowed)}")
    return canonical


def torch_dtype(precision: str) -> torch.dtype:
    """The compute dtype of a precision (fp8 linears compute in BF16)."""
    import torch  # noqa: PLC0415

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}[parse_precision(precision)]


def precision_of(dtype: torch.dtype) -> str:
    """torch.float32 -> ``fp32``, torch.bfloat16 -> ``bf16``."""
    return parse_precision(str(dtype))
