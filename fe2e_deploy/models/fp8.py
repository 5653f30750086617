"""FP8 E4M3 linears: fake quantisation in PyTorch, standard ONNX Q/DQ at export, real FP8 GEMMs on GPUs.

``FP8Linear`` (per-tensor, static: the deployment recipe, exported to ONNX) stores its weight
quantised (``float8_e4m3fn`` + per-tensor scale) and quantises its input with the calibrated
scale: ``q = clamp(x / s, +-448)`` cast to E4M3. On CUDA GPUs with compute capability >= 8.9 the
product is a real FP8 GEMM (``torch._scaled_mm``); elsewhere both operands are dequantised and
multiplied in the compute dtype, the exact same arithmetic up to accumulation order. Under
``torch.onnx.export`` the same steps become ``QuantizeLinear``/``DequantizeLinear`` nodes (opset
19, FLOAT8E4M3FN), the pattern TensorRT's strongly typed builder fuses into FP8 GEMMs and ONNX
Runtime runs as written.

``FP8RowwiseLinear`` (per-row, dynamic: torchao's ``Float8DynamicActivationFloat8WeightConfig(
PerRow())`` recipe, written here because torchao is not installed on the GPU machines) scales each
weight row by its own amax and each input token by its amax at run time: no calibration, and an
outlier token no longer flattens the others. It runs ``torch._scaled_mm`` with row-wise scales on
GPUs (optionally with fast accumulation) and the same fake quantisation elsewhere; it is a
PyTorch-engine recipe (benchmark, compiled engines), not exported to ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx.ops import symbolic

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite float8_e4m3fn value
FP8_OPSET = 19


def fp8_gemm_device(device: torch.device) -> bool:
    """CUDA with compute capability >= 8.9 (Ada, Hopper): where ``torch._scaled_mm`` runs FP8 GEMMs."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def fp8_gemm_shape(x: torch.Tensor, gemm_device: bool) -> bool:
    """``gemm_device`` (decided when the module was placed) and the 16-multiple shapes ``_scaled_mm`` needs.

    Only tensor shapes are looked at per call, so ``torch.compile(fullgraph=True)`` traces it.
    """
    rows = x.numel() // x.shape[-1]
    return gemm_device and x.is_cuda and rows % 16 == 0 and x.shape[-1] % 16 == 0


class _PlacedFP8(nn.Module):
    """Remembers whether its device runs FP8 GEMMs; refreshed whenever the module moves (``.to``, ``.cuda``)."""

    gemm_device = False

    def _place(self) -> None:
        self.gemm_device = fp8_gemm_device(self.weight_fp8.device)

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        self._place()
        return out


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


class FP8Linear(_PlacedFP8):
    """A Linear with FP8 (E4M3) weight and input, per-tensor scales; output in the compute dtype."""

    def __init__(self, linear: nn.Linear, input_scale: float, weight_scale: float):
        super().__init__()
        dtype, device = linear.weight.dtype, linear.weight.device  # scales live with the weight (_scaled_mm wants that)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_scale", torch.tensor(weight_scale, dtype=dtype, device=device))
        self.register_buffer("input_scale", torch.tensor(input_scale, dtype=dtype, device=device))
        self.register_buffer("weight_fp8", quantize_fp8(linear.weight.detach(), self.weight_scale))
        self.register_buffer("zero_point", torch.zeros((), dtype=FP8, device=device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self._place()

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the matmul's output (and of the fake-quantised operands); reading it costs nothing."""
        return self.weight_scale.dtype

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight in the compute dtype (what the fake-quantised matmul sees); allocates it."""
        return (self.weight_fp8.float() * self.weight_scale.float()).to(self.weight_scale.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
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
        elif fp8_gemm_shape(x, self.gemm_device):
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


def rowwise_scales(x: torch.Tensor) -> torch.Tensor:
    """Per-row FP8 scales ``amax(|row|) / 448`` of a 2-D tensor, FP32 ``[rows, 1]`` (zero rows get scale 1)."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


class FP8RowwiseLinear(_PlacedFP8):
    """A Linear with per-output-row FP8 weight scales and per-token dynamic FP8 input scales (torchao's PerRow)."""

    def __init__(self, linear: nn.Linear, fast_accum: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._dtype = linear.weight.dtype
        self.fast_accum = fast_accum
        weight = linear.weight.detach()
        scale = rowwise_scales(weight)  # [N, 1] FP32
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, N], the layout _scaled_mm takes
        self.register_buffer("weight_fp8", (weight.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self._place()

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            raise NotImplementedError("row-wise dynamic FP8 is a PyTorch-engine recipe; export uses per-tensor FP8")
        dtype = self._dtype
        rows = x.to(dtype).reshape(-1, x.shape[-1])
        x_scale = rowwise_scales(rows)  # [M, 1] FP32, computed per call (dynamic)
        x_fp8 = (rows.float() / x_scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
        if fp8_gemm_shape(rows, self.gemm_device) and dtype == torch.bfloat16:  # row-wise scaling: BF16 out
            out = torch._scaled_mm(
                x_fp8,
                self.weight_fp8.t(),
                scale_a=x_scale,
                scale_b=self.weight_scale,
                out_dtype=dtype,
                use_fast_accum=self.fast_accum,
            )
            out = out if self.bias is None else out + self.bias.to(dtype)
        else:  # the same quantised operands, dequantised and multiplied in the compute dtype
            w = (self.weight_fp8.float() * self.weight_scale.t()).to(dtype)
            out = F.linear((x_fp8.float() * x_scale).to(dtype), w, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


def _replace_linear(dit: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = dit.get_submodule(parent_name) if parent_name else dit
    if isinstance(parent, nn.Sequential):
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)


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
        _replace_linear(dit, name, FP8Linear(linear, entry["input_scale"], entry["weight_scale"]))
    return dit


def quantize_dit_rowwise(dit: nn.Module, names: list[str], fast_accum: bool = False) -> nn.Module:
    """Replace the Linears ``names`` by :class:`FP8RowwiseLinear` (in place; no calibration needed)."""
    modules = dict(dit.named_modules())
    for name in names:
        if not isinstance(modules.get(name), nn.Linear):
            raise ValueError(f"{name} is not a Linear layer of the model")
        _replace_linear(dit, name, FP8RowwiseLinear(modules[name], fast_accum))
    return dit
