"""FP8 E4M3 linears: fake quantisation in PyTorch, standard ONNX Q/DQ at export, real FP8 GEMMs on GPUs.

``FP8Linear`` (per-tensor, static: the deployment recipe, exported to ONNX) stores its weight
quantised (``float8_e4m3fn`` + per-tensor scale) and quantises its input with the calibrated
scale: ``q = clamp(x / s, +-448)`` cast to E4M3. On CUDA GPUs with compute capability >= 8.9 the
product is a real FP8 GEMM (``torch._scaled_mm``); elsewhere both operands are dequantised and
multiplied in the compute dtype: in FP32 the same arithmetic up to accumulation order, in BF16 with
the dequantised operands ``q * s`` rounded to BF16 as well (up to 2^-8 relative each), which the
GEMM does not do (per layer ~3e-3 relative L2 apart, measured in ``tests/test_fp8_gemm.py``). Under
``torch.onnx.export`` the same steps become ``QuantizeLinear``/``DequantizeLinear`` nodes (opset
19, FLOAT8E4M3FN), the pattern TensorRT's strongly typed builder fuses into FP8 GEMMs and ONNX
Runtime runs as written.

``FP8RowwiseLinear`` (per-row, dynamic: torchao's ``Float8DynamicActivationFloat8WeightConfig(
PerRow())`` recipe, written here because torchao is not installed on the GPU machines) scales each
weight row by its own amax and each input token by its amax at run time: no calibration, and an
outlier token no longer flattens the others. It runs ``torch._scaled_mm`` with row-wise scales on
GPUs (optionally with fast accumulation) and the same fake quantisation elsewhere; it is a
PyTorch-engine recipe (benchmark, compiled engines), not exported to ONNX.

Which GEMM a module runs is its ``gemm`` attribute (:data:`GEMM_MODES`; :func:`set_fp8_gemm` sets it
model-wide): ``"auto"`` (default) ``torch._scaled_mm`` on CUDA GPUs with compute capability >= 8.9 and
the dequantised matmul elsewhere, ``"scaled_mm"`` always the real FP8 GEMM call, on any device (torch
also runs it on the CPU, which is how tests run the GPU's exact calls: per-tensor scales in every
torch this project takes, row-wise ones from some release after 2.11, which refuses them on the CPU
with "only supports per-tensor scaling for CPU backend": :func:`rowwise_scaled_mm_runs` tells), and
``"dequantized"`` never.
The GEMM path pads the rows (M) with zeros to a multiple of 16 and slices them off again; K and N
(the weight's shape) must be multiples of 16 (cuBLASLt), else the module records at construction that
it runs dequantised only (``gemm_unsupported``) and refuses ``"scaled_mm"``. The choice depends only
on module attributes fixed before tracing and on tensor shapes and devices, never on tensor values, so
``torch.compile(fullgraph=True)`` and ``torch.export`` trace it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.onnx.ops import symbolic

from ..artifacts.scales import Fp8Scales, LayerScales
from ..errors import InvalidInput

FP8 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite float8_e4m3fn value
FP8_OPSET = 19


GEMM_MODES = ("auto", "scaled_mm", "dequantized")
GEMM_ALIGN = 16  # FP8 GEMMs on CUDA: K and N multiples of 16 (torch checks them); M is padded to it too


def fp8_gemm_device(device: torch.device) -> bool:
    """CUDA with compute capability >= 8.9 (Ada, Hopper): where ``torch._scaled_mm`` runs FP8 GEMMs."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


@functools.cache
def rowwise_scaled_mm_runs(device_type: str = "cpu") -> bool:
    """Whether this torch runs ``torch._scaled_mm`` with row-wise scales on ``device_type`` (one 16x16 call)."""
    a = torch.zeros(16, 16, device=device_type).to(FP8)
    try:
        torch._scaled_mm(
            a, a.t(), scale_a=torch.ones(16, 1, device=device_type), scale_b=torch.ones(1, 16, device=device_type),
            out_dtype=torch.bfloat16,
        )  # fmt: skip
    except (RuntimeError, NotImplementedError, ValueError):
        return False
    return True


def scaled_mm_unsupported(in_features: int, out_features: int) -> str | None:
    """Why a ``[out_features, in_features]`` FP8 weight cannot go through ``torch._scaled_mm``, or None if it can."""
    if in_features % GEMM_ALIGN or out_features % GEMM_ALIGN:
        return (
            f"K={in_features}, N={out_features}: torch._scaled_mm (cuBLASLt) needs K and N multiples of "
            f"{GEMM_ALIGN}; this layer runs dequantised only"
        )
    return None


def pad_rows(rows: torch.Tensor, multiple: int = GEMM_ALIGN) -> torch.Tensor:
    """``rows`` ``[M, K]`` with zero rows appended up to a multiple of ``multiple`` (itself when M already is).

    A zero row quantises to zero (row-wise: with scale 1, see :func:`rowwise_scales`) and gives a zero
    output row; the other rows' outputs do not depend on it. Only the shape is looked at.
    """
    pad = -rows.shape[0] % multiple
    return F.pad(rows, (0, 0, 0, pad)) if pad else rows


def scaled_mm(
    a_fp8: torch.Tensor,
    weight_fp8: torch.Tensor,
    scale_a: torch.Tensor,
    scale_b: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    fast_accum: bool = False,
) -> torch.Tensor:
    """``(a_fp8 * scale_a) @ (weight_fp8 * scale_b).T + bias`` as one ``torch._scaled_mm`` call, in ``out_dtype``.

    Operands as cuBLASLt wants them: A row-major ``[M, K]``, B ``weight_fp8.t()`` (column-major
    ``[K, N]``); scales FP32, scalars (per-tensor) or ``[M, 1]`` and ``[1, N]`` (row-wise).

    Bias: for 16-bit outputs it goes into the GEMM (``bias=``, in the output dtype; the epilogue adds
    it to the FP32 accumulator before the one rounding, as the dequantised ``F.linear`` does); for FP32
    outputs it is added afterwards, because torch's CUDA ``_scaled_mm`` refuses a bias with an FP32
    output ("Bias is not supported when out_dtype is set to Float32") and wants a BF16 bias for a
    BF16 output. torch checks both before it picks cuBLASLt or the row-wise CUTLASS kernel (which
    takes a BF16 bias), so per-tensor and row-wise scaling follow the same rule, the one torchao's FP8
    inference linear follows. The CPU kernel takes any bias and adds it in FP32 before its one cast.
    """
    fused = bias is not None and out_dtype != torch.float32
    out = torch._scaled_mm(
        a_fp8,
        weight_fp8.t(),  # column-major [K, N], as cuBLASLt wants the second operand
        scale_a=scale_a,
        scale_b=scale_b,
        bias=bias.to(out_dtype) if fused else None,
        out_dtype=out_dtype,
        use_fast_accum=fast_accum,
    )
    return out + bias.to(out_dtype) if bias is not None and not fused else out


class _PlacedFP8(nn.Module):
    """Remembers whether its device runs FP8 GEMMs (refreshed whenever the module moves) and its GEMM mode.

    ``gemm_unsupported`` (set at construction from the weight's shape) is why ``torch._scaled_mm``
    cannot run this layer, or None; ``gemm`` is one of :data:`GEMM_MODES`.
    """

    gemm_device = False
    gemm = "auto"
    gemm_unsupported: str | None = None
    in_features: int
    out_features: int

    def _place(self) -> None:
        self.gemm_device = fp8_gemm_device(self.weight_fp8.device)

    def _apply(self, fn, recurse: bool = True):
        out = super()._apply(fn, recurse)
        self._place()
        return out

    def _init_gemm(self, gemm: str) -> None:
        self.gemm_unsupported = scaled_mm_unsupported(self.in_features, self.out_features)
        self.set_gemm(gemm)
        self._place()

    def set_gemm(self, mode: str) -> None:
        """Choose the GEMM (:data:`GEMM_MODES`); ``"scaled_mm"`` is refused for a layer that cannot run it."""
        if mode not in GEMM_MODES:
            raise ValueError(f"FP8 GEMM mode {mode!r}: choose one of {', '.join(GEMM_MODES)}")
        if mode == "scaled_mm" and self.gemm_unsupported:
            raise ValueError(f"FP8 GEMM mode 'scaled_mm' impossible: {self.gemm_unsupported}")
        self.gemm = mode

    def _auto_gemm(self, dtype: torch.dtype) -> bool:
        """Whether ``"auto"`` may use the FP8 GEMM for this compute dtype (any dtype cuBLASLt outputs)."""
        return True

    def _use_scaled_mm(self, x: torch.Tensor, dtype: torch.dtype) -> bool:
        """The GEMM path? Decided from attributes fixed before tracing and ``x``'s device, never its values."""
        if self.gemm == "scaled_mm":
            if self.gemm_unsupported:  # the attribute was set by hand, past set_gemm
                raise RuntimeError(f"FP8 GEMM mode 'scaled_mm' impossible: {self.gemm_unsupported}")
            return True
        return (
            self.gemm == "auto"
            and self.gemm_device
            and x.is_cuda
            and self.gemm_unsupported is None
            and self._auto_gemm(dtype)
        )

    def extra_repr(self) -> str:
        only = ", dequantized only" if self.gemm_unsupported else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, gemm={self.gemm}{only}"


def set_fp8_gemm(model: nn.Module, mode: str) -> int:
    """Set the GEMM mode (:data:`GEMM_MODES`) of every FP8 linear of ``model``; returns how many there are.

    ``"scaled_mm"`` is refused (ValueError naming the layer, nothing changed) if a layer cannot run it.
    Set it before ``torch.compile`` / ``torch.export``: the traced graph keeps the path chosen then.
    """
    if mode not in GEMM_MODES:
        raise ValueError(f"FP8 GEMM mode {mode!r}: choose one of {', '.join(GEMM_MODES)}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, _PlacedFP8)]
    if mode == "scaled_mm":
        for name, layer in layers:
            if layer.gemm_unsupported:
                raise ValueError(f"{name or type(layer).__name__}: {layer.gemm_unsupported}")
    for _, layer in layers:
        layer.set_gemm(mode)
    return len(layers)


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x.float() / scale.float()).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)


#: Elements of a weight quantised at a time: bounds one layer's FP32 temporaries to 16 MiB each.
QUANTIZE_CHUNK = 1 << 22


def _row_blocks(weight: torch.Tensor) -> range:
    """Start rows of the blocks of at most :data:`QUANTIZE_CHUNK` elements of a 2-D ``weight``."""
    rows = max(1, QUANTIZE_CHUNK // max(weight.shape[1], 1))
    return range(0, weight.shape[0], rows)


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``weight`` ``[N, K]`` to E4M3 with ``scale`` (a scalar, or ``[N, 1]`` per row), a block of rows at a time.

    The same values as :func:`quantize_fp8` on the whole tensor (the operation is elementwise), without an
    FP32 copy of the whole weight: at full size (a 3072 x 21504 ``linear1``) that copy alone is 264 MB.
    """
    out = torch.empty(weight.shape, dtype=FP8, device=weight.device)
    step = _row_blocks(weight).step
    for start in _row_blocks(weight):
        rows = slice(start, start + step)
        out[rows] = quantize_fp8(weight[rows], scale if scale.dim() == 0 else scale[rows])
    return out


def weight_rowwise_scales(weight: torch.Tensor) -> torch.Tensor:
    """:func:`rowwise_scales` of a weight ``[N, K]``, a block of rows at a time (no full-size temporaries)."""
    step = _row_blocks(weight).step
    return torch.cat([rowwise_scales(weight[start : start + step]) for start in _row_blocks(weight)])


def weight_amax(weight: torch.Tensor) -> torch.Tensor:
    """``max |weight|`` of a 2-D weight as an FP32 scalar, a block of rows at a time."""
    step = _row_blocks(weight).step
    blocks = [weight[start : start + step].detach().abs().amax().float() for start in _row_blocks(weight)]
    return torch.stack(blocks).amax()


class FP8Linear(_PlacedFP8):
    """A Linear with FP8 (E4M3) weight and input, per-tensor scales; output in the compute dtype."""

    def __init__(self, linear: nn.Linear, input_scale: float, weight_scale: float, gemm: str = "auto"):
        super().__init__()
        dtype, device = linear.weight.dtype, linear.weight.device  # scales live with the weight (_scaled_mm wants that)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_scale", torch.tensor(weight_scale, dtype=dtype, device=device))
        self.register_buffer("input_scale", torch.tensor(input_scale, dtype=dtype, device=device))
        self.register_buffer("weight_fp8", quantize_weight(linear.weight.detach(), self.weight_scale))
        self.register_buffer("zero_point", torch.zeros((), dtype=FP8, device=device))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self._init_gemm(gemm)

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
        elif self._use_scaled_mm(x, dtype):
            return self._scaled_mm(x, dtype)
        else:
            x = (quantize_fp8(x, self.input_scale).float() * self.input_scale.float()).to(dtype)
            w = self.weight
        return F.linear(x, w, self.bias)

    def _scaled_mm(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """A real FP8 GEMM (cuBLASLt through ``torch._scaled_mm``), FP32 accumulation, output in ``dtype``."""
        rows = x.reshape(-1, x.shape[-1])
        out = scaled_mm(
            quantize_fp8(pad_rows(rows), self.input_scale),
            self.weight_fp8,
            self.input_scale.float(),
            self.weight_scale.float(),
            self.bias,
            dtype,
        )
        return out[: rows.shape[0]].reshape(*x.shape[:-1], self.out_features)


def rowwise_scales(x: torch.Tensor) -> torch.Tensor:
    """Per-row FP8 scales ``amax(|row|) / 448`` of a 2-D tensor, FP32 ``[rows, 1]`` (zero rows get scale 1)."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True).float()
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


class FP8RowwiseLinear(_PlacedFP8):
    """A Linear with per-output-row FP8 weight scales and per-token dynamic FP8 input scales (torchao's PerRow).

    ``fast_accum`` is passed as ``use_fast_accum`` to every GEMM. On Hopper it selects cuBLASLt's fast
    accumulation (``CUBLASLT_MATMUL_DESC_FAST_ACCUM``; the row-wise CUTLASS kernel's FastAccum schedule):
    the tensor cores' FP8 partial sums are not promoted to FP32 registers at intervals but stay in the
    tensor cores' reduced-precision accumulator, faster and less accurate for long K. The CPU kernel
    (ATen's emulation, taken on CPUs without AMX such as this project's test machine) dequantises both
    operands to FP32, multiplies in FP32 and does not use the flag: a CPU test can check that the flag
    reaches the call and that CPU results do not depend on it (bit for bit), never what fast
    accumulation costs in accuracy on a GPU.
    """

    def __init__(self, linear: nn.Linear, fast_accum: bool = False, gemm: str = "auto"):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self._dtype = linear.weight.dtype
        self.fast_accum = fast_accum
        weight = linear.weight.detach()
        scale = weight_rowwise_scales(weight)  # [N, 1] FP32
        self.register_buffer("weight_scale", scale.t().contiguous())  # [1, N], the layout _scaled_mm takes
        self.register_buffer("weight_fp8", quantize_weight(weight, scale))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)
        self._init_gemm(gemm)

    @property
    def compute_dtype(self) -> torch.dtype:
        return self._dtype

    def _auto_gemm(self, dtype: torch.dtype) -> bool:
        # torch's row-wise CUTLASS kernel (sm89, or cuBLAS < 12.9) writes BF16 only: "auto" asks for nothing else
        return dtype == torch.bfloat16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            raise NotImplementedError("row-wise dynamic FP8 is a PyTorch-engine recipe; export uses per-tensor FP8")
        dtype = self._dtype
        rows = x.to(dtype).reshape(-1, x.shape[-1])
        m = rows.shape[0]
        gemm = self._use_scaled_mm(x, dtype)
        if gemm:
            rows = pad_rows(rows)  # zero rows: scale 1, quantised to zero
        x_scale = rowwise_scales(rows)  # [M, 1] FP32, computed per call (dynamic)
        x_fp8 = (rows.float() / x_scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8)
        if gemm:
            # "scaled_mm" with an FP32 compute dtype asks for FP32 output: the CPU runs it; GPUs whose
            # row-wise kernel only writes BF16 refuse it with torch's own error ("auto" never asks).
            out = scaled_mm(x_fp8, self.weight_fp8, x_scale, self.weight_scale, self.bias, dtype, self.fast_accum)
            out = out[:m]
        else:  # the same quantised operands, dequantised and multiplied in the compute dtype
            w = (self.weight_fp8.float() * self.weight_scale.t()).to(dtype)
            out = F.linear((x_fp8.float() * x_scale).to(dtype), w, self.bias)
        return out.reshape(*x.shape[:-1], self.out_features)


def _replace_linear(dit: nn.Module, name: str, make: Callable[[nn.Linear], nn.Module]) -> None:
    """Replace the Linear ``name`` by ``make(linear)``, then free its weight (before the next layer is made).

    One layer at a time, so quantising never holds two copies of the DiT: at full size the BF16 model
    is 17 GB and its FP8 copy 8.6 GB, which together would not fit a 24 GB card. The replaced Linear is
    left without a weight (``weight`` None), so a reference to it kept elsewhere fails loudly instead of
    holding 2 bytes per parameter; its bias is shared with the new module.
    """
    parent_name, _, leaf = name.rpartition(".")
    parent = dit.get_submodule(parent_name) if parent_name else dit
    linear = parent[int(leaf)] if isinstance(parent, nn.Sequential) else getattr(parent, leaf, None)
    if not isinstance(linear, nn.Linear):
        raise InvalidInput(f"{name} is not a Linear layer of the model")
    new = make(linear)
    if isinstance(parent, nn.Sequential):
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)
    linear.register_parameter("weight", None)


def quantize_dit(dit: nn.Module, scales: Fp8Scales | Mapping[str, LayerScales]) -> nn.Module:
    """Replace every Linear named in the scales (a scales file's contract, or its ``layers``) by an
    :class:`FP8Linear` (in place, layer by layer: each BF16 weight is freed as its FP8 copy is made)."""
    layers = scales.layers if isinstance(scales, Fp8Scales) else scales
    names = {name for name, _ in dit.named_modules()}
    missing = sorted(set(layers) - names)
    if missing:
        raise InvalidInput(
            f"scales name module(s) the model does not have, e.g. {missing[0]} (scales of another model?)"
        )
    for name, entry in layers.items():
        _replace_linear(dit, name, lambda linear, e=entry: FP8Linear(linear, e.input_scale, e.weight_scale))
    return dit


def quantize_dit_rowwise(dit: nn.Module, names: Iterable[str], fast_accum: bool = False) -> nn.Module:
    """Replace the Linears ``names`` by :class:`FP8RowwiseLinear` (in place, layer by layer as
    :func:`quantize_dit`; no calibration needed)."""
    names = list(names)
    modules = dict(dit.named_modules())
    wrong = [name for name in names if not isinstance(modules.get(name), nn.Linear)]
    del modules  # it holds every Linear: keeping it would keep every BF16 weight alive until the end
    if wrong:  # checked before anything is replaced
        raise InvalidInput(f"{wrong[0]} is not a Linear layer of the model")
    for name in names:
        _replace_linear(dit, name, lambda linear: FP8RowwiseLinear(linear, fast_accum))
    return dit
