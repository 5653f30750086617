"""The FP8 GEMM path (``torch._scaled_mm``), run on the CPU exactly as a GPU would call it, against dequantisation.

Every ``_scaled_mm`` call is recorded (operand shapes, dtypes, strides, scale shapes, bias, out
dtype, fast accumulation) by wrapping ``torch._scaled_mm``; the CPU kernel (ATen's emulation:
both operands dequantised to FP32, FP32 matmul, bias added in FP32, one cast to the output dtype)
computes what cuBLASLt computes up to FP32 rounding (summation order, where the scales are applied),
and ignores fast accumulation, whose accuracy on a GPU nothing here can measure.

Why BF16 comparisons of whole models are loose: the dequantised path rounds the dequantised
operands ``q * s`` to BF16 before multiplying (each up to 2^-8 relative), the FP8 GEMM does not;
one layer's outputs then differ by ~1e-3, and the next FP8 quantiser turns a BF16-ulp difference
into a whole E4M3 step for the elements it moves across a rounding boundary (see
``test_fp8.test_free_running_fp8_comparison_is_ill_conditioned``). The tight checks are per layer
(every FP8 linear fed the same input: the "aligned" comparison), in FP32, and AOTInductor against
eager on the same path.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator

import pytest
import torch
from conftest import strip_tiny
from torch import nn

from fe2e_deploy.config import load_model_config
from fe2e_deploy.loading.stripped import load_stripped
from fe2e_deploy.merge import merge_lora
from fe2e_deploy.model_files import DEMO_MODEL_DIR, DEMO_RESOLUTION
from fe2e_deploy.models.fp8 import (
    FP8,
    GEMM_MODES,
    FP8Linear,
    FP8RowwiseLinear,
    quantize_dit,
    quantize_dit_rowwise,
    set_fp8_gemm,
)
from fe2e_deploy.models.fused import FE2EGraph
from fe2e_deploy.processing import preprocess
from fe2e_deploy.quantize.calibrate import calibrate_fp8, quantizable_linears
from fe2e_deploy.scenes import render_scene, synthetic_scene
from fe2e_deploy.strip import strip_model
from fe2e_deploy.tiny import FILES

BF16_ROUNDING = 2.0**-8  # rounding to BF16 (8 significant bits): relative error <= 2^-8
TINY_RES = (64, 48)
#: measured: aligned per layer <= 3.6e-3 (BF16), <= 5.6e-8 (FP32)
ALIGNED_BOUND = {torch.bfloat16: 1e-2, torch.float32: 1e-6}
#: end to end, scaled_mm vs dequantised; measured (depth / normals): tiny BF16 <= 0.032 / 0.059,
#: demo BF16 <= 0.0062 / 0.016 (chaotic: see the module docstring); FP32 <= 1.7e-6 / 6.2e-6
END_TO_END_BOUND = {("tiny", torch.bfloat16): 0.15, ("demo", torch.bfloat16): 0.05}
FP32_END_TO_END_BOUND = 1e-4


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def max_abs(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max())


def pad16(m: int) -> int:
    return -(-m // 16) * 16


@pytest.fixture
def gemm_calls(monkeypatch) -> Iterator[list[dict]]:
    """Every ``torch._scaled_mm`` call made meanwhile, with its arguments (the call itself runs unchanged)."""
    calls: list[dict] = []
    real = torch._scaled_mm

    def recording(a, b, **kwargs):
        calls.append({"a": a, "b": b, **kwargs})
        return real(a, b, **kwargs)

    monkeypatch.setattr(torch, "_scaled_mm", recording)
    yield calls


def check_call(call: dict, m: int, k: int, n: int, dtype: torch.dtype, rowwise: bool, bias: bool) -> None:
    """The call a GPU needs: FP8 A row-major [M, K] and B column-major [K, N], all multiples of 16, FP32 scales."""
    a, b, scale_a, scale_b = call["a"], call["b"], call["scale_a"], call["scale_b"]
    mp = pad16(m)
    assert a.dtype == FP8 and b.dtype == FP8
    assert tuple(a.shape) == (mp, k) and a.stride() == (k, 1)  # row-major
    assert tuple(b.shape) == (k, n) and b.stride() == (1, k)  # column-major (weight_fp8.t())
    assert mp % 16 == 0 and k % 16 == 0 and n % 16 == 0
    assert scale_a.dtype == torch.float32 and scale_b.dtype == torch.float32
    if rowwise:
        assert tuple(scale_a.shape) == (mp, 1) and tuple(scale_b.shape) == (1, n)
        assert scale_a.is_contiguous() and scale_b.is_contiguous()
        assert torch.all(scale_a[m:] == 1)  # a padded (zero) row has scale 1
    else:
        assert scale_a.dim() == 0 and scale_b.dim() == 0
    assert torch.all(a[m:].float() == 0)  # the padded rows are zeros
    assert call["out_dtype"] == dtype
    if bias and dtype != torch.float32:  # fused into the GEMM: a 16-bit bias of the output dtype
        assert call["bias"] is not None and call["bias"].dtype == dtype and tuple(call["bias"].shape) == (n,)
    else:  # none, or FP32 output (cuBLASLt refuses a bias there): added after the GEMM
        assert call["bias"] is None


def exact_product(call: dict, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(FP64 result of the call's own FP8 operands and scales, FP64 sum of |terms|) for error bounds."""
    a = call["a"].double() * call["scale_a"].double()
    b = call["b"].double() * call["scale_b"].double()
    exact, magnitude = a @ b, a.abs() @ b.abs()
    if bias is not None:
        exact, magnitude = exact + bias.double(), magnitude + bias.double().abs()
    return exact, magnitude


def seeded_linear(k: int, n: int, seed: int, bias: bool, dtype: torch.dtype) -> nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(k, n, bias=bias).requires_grad_(False)
    linear.weight.copy_(torch.randn(n, k, generator=generator) / k**0.5)
    if bias:
        linear.bias.copy_(torch.randn(n, generator=generator) * 0.5)
    return linear.to(dtype)


def seeded_input(lead: tuple[int, ...], k: int, seed: int) -> torch.Tensor:
    """Gaussian activations with a few outlier tokens (what makes per-token scales differ)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, k, generator=generator)
    x.view(-1, k)[::3] *= 8.0
    return x


def fp8_layer(kind: str, linear: nn.Linear, x: torch.Tensor, **kwargs) -> nn.Module:
    if kind == "tensor":
        x_amax, w_amax = float(x.abs().max()), float(linear.weight.float().abs().max())
        return FP8Linear(linear, x_amax / 448, w_amax / 448, **kwargs)
    return FP8RowwiseLinear(linear, **kwargs)


LEADS = [(5,), (2, 7), (32,), (3, 16)]  # rows 5, 14 (padded to 16), 32, 48: 2-D and 3-D inputs


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("kind", ["tensor", "row"])
def test_scaled_mm_layer_matches_dequantized(kind, dtype, bias, gemm_calls):
    k, n = 96, 48
    linear = seeded_linear(k, n, seed=1, bias=bias, dtype=dtype)
    for i, lead in enumerate(LEADS):
        x = seeded_input(lead, k, seed=10 + i).to(dtype)
        layer = fp8_layer(kind, linear, x)
        m = x.numel() // k
        with torch.no_grad():
            assert set_fp8_gemm(layer, "dequantized") == 1
            deq = layer(x)
            assert not gemm_calls
            set_fp8_gemm(layer, "scaled_mm")
            got = layer(x)
        assert len(gemm_calls) == 1 and got.shape == (*lead, n) and got.dtype == dtype
        call = gemm_calls.pop()
        check_call(call, m, k, n, dtype, kind == "row", bias)
        assert call["use_fast_accum"] is False
        # The GEMM's own result: its FP8 operands and FP32 scales multiplied exactly, rounded once to
        # the output dtype (CPU: FP32 dequantisation and accumulation, 2^-24 per term).
        exact, magnitude = exact_product(call, linear.bias)
        exact, magnitude, flat = exact[:m], magnitude[:m], got.reshape(m, n).double()
        rounding = BF16_ROUNDING * exact.abs() if dtype == torch.bfloat16 else 0
        assert torch.all((flat - exact).abs() <= rounding + 1e-5 * magnitude)
        # Against the dequantised path: its BF16 operands q * s are rounded (2^-8 each), then both
        # outputs (2^-8 each): within 2^-6 of the sum of |terms| in BF16
        # (2^-7 + 2^-8 + 2^-8 = 2^-6); FP32: the same operands, summation order only.
        bound = 2.0**-6 + 1e-5 if dtype == torch.bfloat16 else 1e-5
        deq_flat = deq.reshape(m, n).double()
        assert torch.all((flat - deq_flat).abs() <= bound * magnitude)
        rel = rel_l2(got, deq)
        print(
            f"{kind} {str(dtype)[6:]} bias={bias} rows={m}: scaled_mm vs dequantized rel L2 {rel:.2e}, "
            f"max abs {max_abs(got, deq):.2e}; vs exact: scaled_mm {rel_l2(flat, exact):.2e}, "
            f"dequantized {rel_l2(deq_flat, exact):.2e}"
        )
        assert rel < (1e-2 if dtype == torch.bfloat16 else 1e-6)  # measured <= 4e-3 (BF16), <= 6e-8 (FP32)


def test_modes_and_shapes_the_gemm_cannot_take(gemm_calls):
    x = seeded_input((4,), 20, seed=0)
    odd = FP8Linear(seeded_linear(20, 24, seed=0, bias=True, dtype=torch.float32), 0.01, 0.01)
    assert odd.gemm == "auto" and odd.gemm_unsupported and "K=20, N=24" in odd.gemm_unsupported
    assert "dequantized only" in repr(odd)
    with pytest.raises(ValueError, match="multiples of 16"):
        FP8RowwiseLinear(seeded_linear(32, 24, seed=0, bias=False, dtype=torch.float32), gemm="scaled_mm")
    good = FP8RowwiseLinear(seeded_linear(32, 32, seed=0, bias=False, dtype=torch.bfloat16))
    model = nn.ModuleDict({"good": good, "odd": odd, "plain": nn.Linear(4, 4)})
    with pytest.raises(ValueError, match=r"odd: K=20, N=24"):
        set_fp8_gemm(model, "scaled_mm")
    assert good.gemm == "auto"  # refused as a whole: nothing changed
    with pytest.raises(ValueError, match="auto, scaled_mm, dequantized"):
        set_fp8_gemm(model, "fast")
    assert GEMM_MODES == ("auto", "scaled_mm", "dequantized")
    assert set_fp8_gemm(model, "dequantized") == 2 and "gemm=dequantized" in repr(good)
    with torch.no_grad():
        auto = FP8Linear(seeded_linear(32, 32, seed=2, bias=True, dtype=torch.bfloat16), 0.02, 0.01)
        y = seeded_input((5,), 32, seed=3)
        on_cpu = auto(y)  # "auto" on the CPU: dequantised, no GEMM call
        set_fp8_gemm(auto, "dequantized")
        assert torch.equal(on_cpu, auto(y)) and not gemm_calls
        odd(x)  # runs dequantised
        odd.gemm = "scaled_mm"  # past set_gemm's check: the forward refuses rather than fall back
        with pytest.raises(RuntimeError, match="impossible"):
            odd(x)
    assert not gemm_calls


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_fast_accumulation_reaches_the_call_and_the_cpu_ignores_it(dtype, gemm_calls):
    linear = seeded_linear(256, 64, seed=4, bias=True, dtype=dtype)
    x = seeded_input((3, 11), 256, seed=5).to(dtype)
    outputs = {}
    for fast in (False, True):
        layer = FP8RowwiseLinear(linear, fast_accum=fast, gemm="scaled_mm")
        with torch.no_grad():
            outputs[fast] = layer(x)
        assert gemm_calls.pop()["use_fast_accum"] is fast
    # Bit for bit: the CPU kernel accumulates in FP32 either way. On Hopper, fast accumulation
    # changes the result (lower-precision partial sums); by how much is not testable here.
    assert torch.equal(outputs[False], outputs[True])
    per_tensor = fp8_layer("tensor", linear, x, gemm="scaled_mm")
    with torch.no_grad():
        per_tensor(x)
    assert gemm_calls.pop()["use_fast_accum"] is False  # FP8Linear: precise accumulation


@pytest.mark.parametrize("kind", ["tensor", "row"])
def test_torch_compile_fullgraph_traces_the_gemm(kind):
    linear = seeded_linear(64, 32, seed=6, bias=True, dtype=torch.bfloat16)
    x = seeded_input((2, 7), 64, seed=7).to(torch.bfloat16)
    layer = fp8_layer(kind, linear, x, gemm="scaled_mm")
    graphs = []

    def backend(gm: torch.fx.GraphModule, _inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(layer, fullgraph=True, backend=backend)(x)
        eager = layer(x)
    torch._dynamo.reset()
    assert len(graphs) == 1 and torch.equal(compiled, eager)
    targets = [node.target for node in graphs[0].graph.nodes if node.op == "call_function"]
    assert torch._scaled_mm in targets


# --- whole models: the tiny model and the embedded demo model --------------------------------------------


@pytest.fixture(scope="module")
def tiny_stripped(tiny_dir, tiny_config, tmp_path_factory):
    return strip_tiny(tiny_dir, tiny_config, tmp_path_factory.mktemp("fp8_gemm") / "stripped")


@pytest.fixture(scope="module")
def tiny_scales(tiny_stripped):
    return calibrate_fp8(tiny_stripped, processing_res=TINY_RES, max_images=2, progress=False)


@pytest.fixture(scope="module")
def demo_stripped(tmp_path_factory):
    """The embedded demo model merged and stripped as ``quickstart`` does (FP32)."""
    tmp = tmp_path_factory.mktemp("fp8_demo")
    files = {role: DEMO_MODEL_DIR / name for role, name in FILES.items()}
    config = load_model_config(files["config"])
    merged = tmp / "merged_dit.safetensors"
    merge_lora(files["dit"], files["lora"], merged, config, progress=False)
    strip_model(merged, files["prompt"], files["vae"], tmp / "stripped", config, dtype=torch.float32, progress=False)
    return tmp / "stripped"


@pytest.fixture(scope="module")
def demo_scales(demo_stripped):
    return calibrate_fp8(demo_stripped, processing_res=DEMO_RESOLUTION, max_images=2, progress=False)


def fp8_model(stripped, kind: str, dtype: torch.dtype, scales):
    """The stripped model, DiT cast to ``dtype``, its quantisable linears FP8 (calibrated per-tensor or per-row)."""
    model = load_stripped(stripped)
    model.dit.cast_weights(dtype)
    if kind == "tensor":
        quantize_dit(model.dit, scales)
    else:
        quantize_dit_rowwise(model.dit, list(quantizable_linears(model.dit)))
    return model


def compare_model(name, stripped, scales, size, image, kind, dtype, gemm_calls) -> None:
    model = fp8_model(stripped, kind, dtype, scales)
    graph = FE2EGraph(model.vae, model.dit, *size).eval()
    layers = {n: m for n, m in model.dit.named_modules() if isinstance(m, FP8Linear | FP8RowwiseLinear)}
    assert set_fp8_gemm(model.dit, "dequantized") == len(layers) > 0
    aligned: dict[str, float] = {}

    def aligned_check(module, args, output, layer=None):
        """The same input through the FP8 GEMM (``forward``: no hook recursion)."""
        module.gemm = "scaled_mm"
        aligned[layer] = rel_l2(module.forward(*args), output)
        module.gemm = "dequantized"

    hooks = [m.register_forward_hook(lambda *a, n=n: aligned_check(*a, layer=n)) for n, m in layers.items()]
    with torch.no_grad():
        deq = graph(image)
        for hook in hooks:
            hook.remove()
        gemm_calls.clear()
        set_fp8_gemm(model.dit, "scaled_mm")
        got = graph(image)
    # one GEMM per FP8 linear, each with 16-multiple shapes; rows padded where the token counts need it
    assert len(gemm_calls) == len(layers)
    img = 2 * (size[0] // 16) * (size[1] // 16)  # target + reference tokens, batch 1
    txt = model.dit.txt.shape[0]
    assert {tuple(c["a"].shape)[0] for c in gemm_calls} <= {pad16(img), pad16(txt), pad16(img + txt)}
    assert all(c["a"].shape[1] % 16 == 0 and c["b"].shape[1] % 16 == 0 for c in gemm_calls)
    assert all(c["out_dtype"] == dtype for c in gemm_calls)
    worst = max(aligned, key=aligned.get)
    tag = f"{name} {kind} {str(dtype)[6:]}"
    print(f"{tag}: aligned per layer, worst rel L2 {aligned[worst]:.2e} ({worst}); rows {img} img + {txt} txt")
    assert len(aligned) == len(layers) and aligned[worst] < ALIGNED_BOUND[dtype]
    for a, b, what in zip(got, deq, ("depth", "normals"), strict=True):
        rel = rel_l2(a, b)
        print(f"{tag}: {what} scaled_mm vs dequantized rel L2 {rel:.2e}, max abs {max_abs(a, b):.2e}")
        assert rel < END_TO_END_BOUND.get((name, dtype), FP32_END_TO_END_BOUND)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("kind", ["tensor", "row"])
def test_tiny_model_scaled_mm_vs_dequantized(tiny_stripped, tiny_scales, kind, dtype, gemm_calls):
    image = preprocess(synthetic_scene(*TINY_RES, seed=0), TINY_RES)
    compare_model("tiny", tiny_stripped, tiny_scales, TINY_RES, image, kind, dtype, gemm_calls)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("kind", ["tensor", "row"])
def test_demo_model_scaled_mm_vs_dequantized(demo_stripped, demo_scales, kind, dtype, gemm_calls):
    image = preprocess(render_scene(7), DEMO_RESOLUTION)  # a built-in scene not calibrated on
    compare_model("demo", demo_stripped, demo_scales, DEMO_RESOLUTION, image, kind, dtype, gemm_calls)


# --- AOTInductor ------------------------------------------------------------------------------------------


def test_exported_graph_keeps_the_fp8_gemm_calls(tiny_stripped, tiny_scales):
    """torch.export keeps aten._scaled_mm with the GPU's operand layouts and padded row counts (no compile)."""
    model = fp8_model(tiny_stripped, "tensor", torch.bfloat16, tiny_scales)
    assert set_fp8_gemm(model.dit, "scaled_mm") == 20
    graph = FE2EGraph(model.vae, model.dit, 32, 32).eval()
    image = preprocess(synthetic_scene(32, 32, seed=1), (32, 32))
    with torch.no_grad():
        program = torch.export.export(graph, (image,))
    nodes = [n for n in program.graph_module.graph.nodes if n.op == "call_function"]
    gemms = [n for n in nodes if n.target == torch.ops.aten._scaled_mm.default]
    assert len(gemms) == 20
    for node in gemms:
        a, b = node.args[0].meta["val"], node.args[1].meta["val"]
        assert a.dtype == b.dtype == FP8 and a.shape[0] % 16 == 0 and a.shape[1] % 16 == 0 and b.shape[1] % 16 == 0
        assert b.stride() == (1, b.shape[0]) and node.meta["val"].dtype == torch.bfloat16
    img, txt = 2 * 2 * 2, model.dit.txt.shape[0]  # 32x32: 2 x 2 x 2 image tokens, batch 1
    rows = {node.args[0].meta["val"].shape[0] for node in gemms}
    assert rows == {pad16(img), pad16(txt), pad16(img + txt)} and img % 16 and (img + txt) % 16  # padded rows


@pytest.mark.slow
def test_aoti_package_runs_the_fp8_gemm(aoti_fp8, shared_stripped, shared_scales):
    """The session's FP8 engine folder is built with ``build(fp8_gemm="scaled_mm")`` (conftest): its package calls
    AOTInductor's C shim of ``_scaled_mm`` once per FP8 linear and agrees with the eager model on the same path.

    The build keeps eager's BF16 down/up-casts between fused ops (``emulate_precision_casts``), so the package can
    be compared with eager tightly; without it, fused kernels skip those roundings and the FP8 quantisers amplify
    the difference (measured once, on scene seed 0: 3.1e-2 / 5.8e-2 rel L2 against eager scaled_mm).
    """
    from fe2e_deploy.artifacts.aoti import AotiEngineDescription
    from fe2e_deploy.artifacts.scales import load_scales
    from fe2e_deploy.engines import load_engine
    from fe2e_deploy.engines.aoti import prepare_model

    assert AotiEngineDescription.read(aoti_fp8 / AotiEngineDescription.FILE).fp8_gemm == "scaled_mm"
    with zipfile.ZipFile(aoti_fp8 / "fe2e_32x32.pt2") as archive:
        wrapper = "".join(archive.read(n).decode() for n in archive.namelist() if n.endswith("wrapper.cpp"))
    assert wrapper.count("aoti_torch_cpu__scaled_mm") == 20  # the extern FP8 GEMM, once per linear
    image = preprocess(synthetic_scene(32, 32, seed=1), (32, 32))
    with load_engine(aoti_fp8, processing_res=(32, 32)) as engine:
        compiled = engine.run_maps(image, (32, 32))
    model = prepare_model(shared_stripped, "fp8", load_scales(shared_scales), "cpu")
    graph = FE2EGraph(model.vae, model.dit, 32, 32).eval()
    with torch.no_grad():
        set_fp8_gemm(model.dit, "scaled_mm")
        eager = graph(image)
        set_fp8_gemm(model.dit, "dequantized")
        deq = graph(image)
    for c, e, d, what in zip(compiled, eager, deq, ("depth", "normals"), strict=True):
        print(
            f"AOTI fp8 scaled_mm {what}: vs eager scaled_mm rel L2 {rel_l2(c, e):.2e} (max abs {max_abs(c, e):.2e}); "
            f"vs eager dequantized rel L2 {rel_l2(c, d):.2e} (max abs {max_abs(c, d):.2e})"
        )
        assert rel_l2(c, e) < 1e-4  # measured 5.0e-7 / 1.3e-6: FP32 summation order
        assert rel_l2(c, d) < 0.2  # measured 2.5e-2 / 6.2e-2: BF16 operand rounding, amplified (module docstring)


@pytest.mark.slow
def test_aoti_runs_the_rowwise_fp8_gemm(tmp_path):
    """Per-row FP8 (dynamic per-token input scales) compiled by AOTInductor on the CPU: the package calls
    ``_scaled_mm`` with [M, 1] and [1, N] scales and agrees with eager (one small layer: a short compile)."""
    torch.manual_seed(0)
    layer = nn.Linear(96, 48).to(torch.bfloat16)
    module = nn.Sequential(FP8RowwiseLinear(layer)).eval()
    assert set_fp8_gemm(module, "scaled_mm") == 1
    x = torch.randn(2, 7, 96, dtype=torch.bfloat16)  # 14 rows: padded to 16
    with torch.no_grad():
        program = torch.export.export(module, (x,))
    (gemm,) = [n for n in program.graph_module.graph.nodes if n.target == torch.ops.aten._scaled_mm.default]
    scale_a, scale_b = gemm.args[2].meta["val"], gemm.args[3].meta["val"]
    assert gemm.args[0].meta["val"].shape == (16, 96) and scale_a.shape == (16, 1) and scale_b.shape == (1, 48)
    configs = {"emulate_precision_casts": True}
    path = torch._inductor.aoti_compile_and_package(
        program, package_path=str(tmp_path / "row.pt2"), inductor_configs=configs
    )
    with zipfile.ZipFile(path) as archive:
        wrapper = "".join(archive.read(n).decode() for n in archive.namelist() if n.endswith("wrapper.cpp"))
    assert wrapper.count("aoti_torch_cpu__scaled_mm") == 1
    compiled = torch._inductor.aoti_load_package(path)(x)
    with torch.no_grad():
        eager = module(x)
        set_fp8_gemm(module, "dequantized")
        deq = module(x)
    same_path, dequantized = rel_l2(compiled, eager), rel_l2(compiled, deq)
    print(f"AOTI per-row FP8: vs eager scaled_mm rel L2 {same_path:.2e}, vs dequantized {dequantized:.2e}")
    assert rel_l2(compiled, eager) < 1e-6
    assert rel_l2(compiled, deq) < 1e-2
