"""Numeric modes and kernel choices on CUDA GPUs, made on purpose rather than inherited from defaults.

- :func:`exact_fp32`: PyTorch lets cuDNN convolutions use TF32 by default (10-bit mantissa), so an
  "FP32" reference on a GPU is not FP32 unless TF32 is switched off around it (matmuls too).
- :func:`preferred_attention`: scaled-dot-product attention tries FlashAttention-2 before cuDNN's
  fused attention in older releases; on Hopper (sm 9.x) cuDNN's kernel is reported ~1.9x faster at
  FLUX's shape (24 heads x 4608 tokens x 128, BF16: 631 vs 329 TFLOP/s, pytorch/pytorch#142132), so
  it goes first there; the other backends stay as fallbacks for shapes or dtypes it does not take.
  ``benchmark --synthetic-weights`` measures every backend at FE2E's own shape. CPUs keep PyTorch's
  choice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import InvalidInput

HOPPER_ATTENTION_ORDER = (
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA GPU is visible, else ``cpu``; ``cuda`` without a visible GPU is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    kind = device.split(":")[0]
    if kind not in ("cpu", "cuda"):
        raise InvalidInput(f"device {device!r} not supported; use auto, cpu or cuda (cuda:N)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"device {device!r}: no CUDA GPU is visible to torch {torch.__version__} (use --device cpu)")
    return device


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """TF32 off for matmuls and cuDNN (convolutions) inside the block; the previous settings restored after."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def attention_order(device: torch.device | str) -> tuple[SDPBackend, ...] | None:
    """The SDPA backend priority used on ``device`` (None: PyTorch's default order)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    major, _ = torch.cuda.get_device_capability(device)
    return HOPPER_ATTENTION_ORDER if major == 9 else None


def preferred_attention(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context that sets :func:`attention_order` (also at torch.compile trace time), or does nothing."""
    order = attention_order(device)
    return sdpa_kernel(list(order), set_priority=True) if order else contextlib.nullcontext()
