"""FP8 E4M3 linears: fake quantisation in PyTorch, standard ONNX Q/DQ at export.

``FP8Linear`` stores its weight quantised (``float8_e4m3fn`` + per-tensor scale) and quantises its
input with the calibrated scale: ``q = clamp(x / s, +-448)`` cast to E4M3. On CUDA GPUs with
compute capability >= 8.9 the product is a real FP8 GEMM (``torch._scaled_mm``; not run on the
machines of this project so far); elsewhere both operands are dequantised and multiplied in the
compute dtype, the exact same arithmetic up to accumulation order. Under ``torch.onnx.export`` the same steps become
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


def fp8_gemm_supported(x: torch.Tensor) -> bool:
    """CUDA with compute capability >= 8.9 (Ada, Hopper) and the 16-multiple shapes ``_scaled_mm`` needs."""
    if not x.is_cuda or torch.cuda.get_device_capability(x.device) < (8, 9):
        return False
    rows = x.numel() // x.shape[-1]
    return rows % 16 == 0 and x.shape[-1] % 16 == 0


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
            # Q/DQ on the input, DQ on the FLOAT8E4M3FN weight initializer; F.linear then exports as
            # DQ(W) -> Transpose -> MatMul, the same pattern ModelOpt's TensorRT FP8 export produces.
            q = symbolic(
                "QuantizeLinear",
                (x, self.input_scale, self.zero_point),
                {},
                dtype=FP8,
                shape=x.shape,
                version=FP8_OPSET,
            )
            x = symbolic("DequantizeLinear", (q, self.input_scale), {}, dtype=dtype, shape=x.shape, version=FP8_OPSET)
            w = symbolic(
                "DequantizeLinear",
                (self.weight_fp8, self.weight_scale),
                {},
                dtype=dtype,
                shape=self.weight_fp8.shape,
                version=FP8_OPSET,
            )
        elif fp8_gemm_supported(x):
            return self._scaled_mm(x, dtype)
        else:
            x = (quantize_fp8(x, self.input_scale).float() * self.input_scale.float()).to(dtype)
            w = self.weight
        return F.linear(x, w, self.bias)

    def _scaled_mm(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A real FP8 GEMM (cuBLASLt through ``torch._scaled_mm``), FP32 accumulation, output in ``dtype``."""
        rows = x.reshape(-1, x.shape[-1])
        out = torch._scaled_mm(
            quantize_fp8(rows, self.input_scale),
            self.weight_fp8.t(),  # column-major [K, N], as cuBLASLt wants the second operand
            scale_a=self.input_scale.float(),
            scale_b=self.weight_scale.float(),
            out_dtype=dtype,
        )
        if self.bias is not None:
            out = out + self.bias.to(dtype)
        return out.reshape(*x.shape[:-1], self.out_features)


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
