"""Arithmetic cost of FE2E's DiT forward and the dense BF16 peaks it is compared with.

Counted: every matrix product of the double/single blocks (qkv, projections, MLPs, the fused
``linear1``/``linear2``), attention's two BMMs (QK^T and PV) and ``img_in``/final projection, at
2 FLOPs per multiply-add. Not counted: norms, RoPE, softmax, activations (elementwise, < 1%).
At 1024x768 for the full-size config: 6784 tokens, 87.6 TFLOP of linears + 32.2 TFLOP of attention
per image (FE2E's design brief gives the same ~120 TFLOP). The official path runs the connector,
embedders and modulation too, and CFG batch 2; its rate is counted on the same per-image work, so
rates compare like for like; the work it *executes* (twice the DiT's, CFG batch 2) is reported
beside it. FP8 engines still run attention in BF16, so their rate against the FP8 peak is a bound
on how far the linears could go, not a utilisation.
"""

from __future__ import annotations

from .config import ModelConfig

#: Dense (no sparsity) BF16 tensor-core peaks in TFLOP/s, by a substring of the device name (first match wins).
BF16_DENSE_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),  # SXM5 ("NVIDIA H100 80GB HBM3")
    ("H200", 989.4),
    ("H20", 148.0),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("L4", 121.0),
)


#: Dense FP8 (E4M3) tensor-core peaks in TFLOP/s, twice the BF16 ones (no FP8 on A100); same matching.
FP8_DENSE_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 1513.0),
    ("H100 NVL", 1671.0),
    ("H100", 1978.9),
    ("H200", 1978.9),
    ("H20", 296.0),
    ("GH200", 1978.9),
    ("B200", 4500.0),
    ("L40S", 733.0),
    ("L40", 362.0),
    ("L4", 242.5),
)


def dit_flops(config: ModelConfig, txt_len: int, width: int, height: int) -> dict[str, float]:
    """FLOPs of one DiT forward for one image at a processing resolution: ``linear``, ``attention``, ``total``."""
    d = config.dit
    hidden, mlp = d.hidden_size, d.mlp_hidden_dim
    n = (height // 16) * (width // 16)  # packed tokens of one latent (8x VAE, 2x2 packing)
    seq = txt_len + 2 * n  # [text, target, reference]
    double = 3 * hidden * hidden + hidden * hidden + 2 * hidden * mlp  # qkv, proj, MLP: per token, per stream
    single = hidden * (3 * hidden + mlp) + (hidden + mlp) * hidden  # linear1, linear2
    linear = seq * (d.depth * double + d.depth_single_blocks * single)
    linear += n * d.in_channels * hidden + 2 * n * hidden * d.out_channels  # img_in (reference), final layer
    attention = (d.depth + d.depth_single_blocks) * 2 * seq * seq * hidden  # QK^T and PV over all heads
    return {"linear": 2.0 * linear, "attention": 2.0 * attention, "total": 2.0 * (linear + attention), "tokens": seq}


def _peak(table: tuple[tuple[str, float], ...], device_name: str) -> float | None:
    for key, peak in table:
        if key in device_name:
            return peak
    return None


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense BF16 peak of a GPU by name, or None when unknown (CPUs included)."""
    return _peak(BF16_DENSE_PEAK_TFLOPS, device_name)


def fp8_peak_tflops(device_name: str) -> float | None:
    """The dense FP8 peak of a GPU by name, or None when unknown or without FP8 tensor cores (CPUs, A100)."""
    return _peak(FP8_DENSE_PEAK_TFLOPS, device_name)
