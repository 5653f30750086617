"""FP8 E4M3 linears: fake quantisation in PyTorch, standard ONNX Q/DQ at export.

``FP8Linear`` stores its weight quantised (``float8_e4m3fn`` + per-tensor scale) and quantises its
input with the calibrated scale: ``q = clamp(x / s, +-448)`` cast to E4M3, dequantised back, then
the matmul in the compute dtype. Under ``torch.onnx.export`` the same steps become
``QuantizeLinear``/``DequantizeLinear`` nodes (opset 19, FLOAT8E4M3FN), the pattern TensorRT's
strongly typed builder fuses into FP8 GEMMs and ONNX Runtime runs as written.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx.ops import symbolic

from .calibrate import E4M3_MAX

FP8 = torch.float8_e4m3fn
FP8_OPSET = 19


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


class FP8Linear(nn.Module):
    """A Linear with FP8 (E4M3) weight and input, per-tensor scales; output in the compute dtype."""

    def __init__(self, linear: nn.Linear, input_scale: float, weight_scale: float):
        super().__init__()
        dtype = linear.weight.dtype
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_scale", torch.tensor(weight_scale, dtype=dtype))
        self.register_buffer("input_scale", torch.tensor(input_scale, dtype=dtype))
        self.register_buffer("weight_fp8", quantize_fp8(linear.weight.detach(), self.weight_scale))
        self.register_buffer("zero_point", torch.zeros((), dtype=FP8))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight in the compute dtype (what the matmul sees)."""
        return (self.weight_fp8.float() * self.weight_scale.float()).to(self.weight_scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.weight_scale.dtype
        x = x.to(dtype)
        if torch.onnx.is_in_onnx_export():
            q = symbolic(
                "QuantizeLinear", (x, self.input_scale, self.zero_point), {}, dtype=FP8, shape=x.shape, version=19
            )
            x = symbolic("DequantizeLinear", (q, self.input_scale), {}, dtype=dtype, shape=x.shape, version=19)
            w = symbolic(
                "DequantizeLinear",
                (self.weight_fp8, self.weight_scale),
                {},
                dtype=dtype,
                shape=self.weight_fp8.shape,
                version=19,
            )
        else:
            x = (quantize_fp8(x, self.input_scale).float() * self.input_scale.float()).to(dtype)
            w = self.weight
        return F.linear(x, w, self.bias)


def quantize_dit(dit: nn.Module, scales: dict) -> nn.Module:
    """Replace every Linear named in ``scales["layers"]`` by an :class:`FP8Linear` (in place)."""
    layers = scales["layers"]
    modules = dict(dit.named_modules())
    missing = sorted(set(layers) - set(modules))
    if missing:
        raise ValueError(f"scales name module(s) the model does not have, e.g. {missing[0]} (scales of another model?)")
    for name, entry in layers.items():
        linear = modules[name]
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"{name} is not a Linear layer")
        parent_name, _, leaf = name.rpartition(".")
        parent = dit.get_submodule(parent_name) if parent_name else dit
        fp8 = FP8Linear(linear, entry["input_scale"], entry["weight_scale"])
        if isinstance(parent, nn.Sequential):
            parent[int(leaf)] = fp8
        else:
            setattr(parent, leaf, fp8)
    return dit
