"""FP8: shipped calibration scenes, max calibration, fake-quantised linears, the FP8 Q/DQ graph in ONNX Runtime."""

from __future__ import annotations

import json
import math
import weakref
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import strip_tiny
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from fe2e_deploy.artifacts.scales import load_scales
from fe2e_deploy.cli import app
from fe2e_deploy.compile.onnx_check import check_export, compare, compare_aligned, quantizer_taps
from fe2e_deploy.compile.onnx_export import export_onnx
from fe2e_deploy.compile.tensorrt_build import check_precision, inspect_graph
from fe2e_deploy.engines.ort_session import make_session
from fe2e_deploy.files.hashing import sha256_file
from fe2e_deploy.loading.stripped import load_stripped
from fe2e_deploy.models import fp8
from fe2e_deploy.models.fp8 import FP8Linear, FP8RowwiseLinear, quantize_dit, quantize_fp8
from fe2e_deploy.models.fused import DiTStep, FE2EGraph
from fe2e_deploy.processing import preprocess
from fe2e_deploy.quantize.calibrate import calibration_images, quantizable_linears
from fe2e_deploy.scenes import COUNT, render_scene, scene_name, synthetic_scene, write_scenes

runner = CliRunner()
SHIPPED = Path(__file__).parents[1] / "calibration" / "images"
N_LINEARS = 20  # tiny config: 2 double blocks x 8 linears + 2 single blocks x 2 (img_in, final_layer excluded)
OUT_DIT, OUT_FE2E = ("depth_latent", "normal_latent"), ("depth", "normals")


def same_picture(a: Image.Image, b: Image.Image) -> bool:
    """Equal sizes, and at most 0.1% of the values off by more than one level."""
    x, y = np.asarray(a.convert("RGB"), np.int16), np.asarray(b.convert("RGB"), np.int16)
    return x.shape == y.shape and float((np.abs(x - y) > 1).mean()) < 1e-3


@pytest.fixture(scope="module")
def stripped(tiny_dir, tiny_config, tmp_path_factory):
    return strip_tiny(tiny_dir, tiny_config, tmp_path_factory.mktemp("fp8") / "stripped")


@pytest.fixture(scope="module")
def scales(stripped, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp8") / "fp8_scales.json"
    args = ["calibrate", str(stripped), "-o", str(out), "--images", str(SHIPPED), "--processing-res", "64x48"]
    result = runner.invoke(app, [*args, "--max-images", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


def test_shipped_calibration_images_are_the_synthetic_scenes(tmp_path):
    shipped = sorted(SHIPPED.glob("*.png"))
    assert [p.name for p in shipped] == [scene_name(i) for i in range(COUNT)]
    assert sum(p.stat().st_size for p in shipped) < 1_000_000
    for i, path in enumerate(shipped):  # regenerated: equal up to last-ulp differences of numpy's sin/pow on other CPUs
        assert same_picture(Image.open(path), render_scene(i)), path.name
    # varied: mean colours and edge content differ from scene to scene
    means = np.array([np.asarray(render_scene(i), np.float32).mean((0, 1)) for i in range(COUNT)])
    assert np.ptp(means, axis=0).max() > 20
    written = write_scenes(tmp_path, count=2, width=64, height=48)
    assert [Image.open(p).size for p in written] == [(64, 48), (64, 48)]
    builtin = calibration_images(None, max_images=2)
    assert [name for name, _ in builtin] == [f"builtin:{scene_name(i)}" for i in range(2)]
    assert same_picture(builtin[1][1], Image.open(shipped[1]))


def test_calibration_scales_are_sane(stripped, scales):
    doc = json.loads(scales.read_text())
    assert doc["num_images"] == 3 and doc["images"] == [str(p) for p in sorted(SHIPPED.glob("*.png"))[:3]]
    assert doc["resolutions"] == ["64x48"]
    assert doc["excluded"] == ["final_layer.linear", "img_in"]
    assert doc["stripped"]["weights_sha256"] == sha256_file(stripped / "stripped_dit.safetensors")
    assert doc["stripped"]["sources"]["dit"]["sha256"]
    assert len(doc["layers"]) == N_LINEARS
    for name, entry in doc["layers"].items():
        assert not name.startswith(("img_in", "final_layer"))
        for key in ("input_scale", "weight_scale", "input_amax", "weight_amax"):
            assert math.isfinite(entry[key]) and entry[key] > 0, (name, key)
        assert entry["input_scale"] == pytest.approx(entry["input_amax"] / 448)
        assert entry["weight_scale"] == pytest.approx(entry["weight_amax"] / 448)
    model = load_stripped(stripped)
    weight = model.dit.double_blocks[0].img_attn.qkv.weight
    assert doc["layers"]["double_blocks.0.img_attn.qkv"]["weight_amax"] == pytest.approx(float(weight.abs().max()))


def test_custom_exclude_patterns(stripped, tmp_path):
    out = tmp_path / "s.json"
    args = ["calibrate", str(stripped), "-o", str(out), "--processing-res", "32x32", "--max-images", "1"]
    result = runner.invoke(app, [*args, "--exclude", "single_blocks.*", "--exclude", "img_in", "--no-progress"])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["excluded"] == ["img_in", *(f"single_blocks.{i}.linear{j}" for i in (0, 1) for j in (1, 2))]
    assert "final_layer.linear" in doc["layers"] and len(doc["layers"]) == 17
    assert doc["images"][0] == f"builtin:{scene_name(0)}"  # no --images: the built-in scenes
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "t.json"), "--exclude", "double_block.*.qkv"])
    assert result.exit_code == 2 and "match no Linear" in result.output


def seeded_linear(in_features: int, out_features: int, seed: int) -> tuple[nn.Linear, torch.Generator]:
    """An nn.Linear with N(0, 1/in) weights and bias from its own generator (no global RNG); returns the generator."""
    generator = torch.Generator().manual_seed(seed)
    linear = nn.Linear(in_features, out_features).requires_grad_(False)
    linear.weight.copy_(torch.randn(out_features, in_features, generator=generator) / in_features**0.5)
    linear.bias.copy_(torch.randn(out_features, generator=generator) * 0.1)
    return linear, generator


def test_fp8_linear_matches_fp8_grid_and_saturates():
    linear, generator = seeded_linear(64, 32, seed=0)
    x = torch.randn(5, 64, generator=generator)
    x_amax, w_amax = float(x.abs().max()), float(linear.weight.abs().max())
    fp8 = FP8Linear(linear, x_amax / 448, w_amax / 448)
    assert fp8.weight_fp8.dtype == torch.float8_e4m3fn
    with torch.no_grad():
        exact, got = linear(x), fp8(x)
        rel = float((got - exact).norm() / exact.norm())
        assert 1e-4 < rel < 0.05  # E4M3 has 3 mantissa bits: per-element error <= 6.25%, averaged down
        # out-of-range inputs saturate at the calibrated amax (no inf/NaN from the E4M3 cast)
        big = x * 10
        assert torch.allclose(fp8(big), fp8(big.clamp(-x_amax, x_amax)))
        # dequantised weight values lie on the scaled E4M3 grid (up to the FP32 rounding of (q * s) / s;
        # E4M3 values are 2^-3 apart relatively, so a value off the grid would be far outside 2^-22)
        grid = fp8.weight / fp8.weight_scale
        torch.testing.assert_close(grid, grid.to(torch.float8_e4m3fn).float(), rtol=2**-22, atol=0)


def test_fake_quantisation_is_close_but_not_identical(stripped, scales):
    plain = load_stripped(stripped)
    quant = load_stripped(stripped)
    quantize_dit(quant.dit, load_scales(scales))
    assert isinstance(quant.dit.double_blocks[0].img_attn.qkv, FP8Linear)
    assert isinstance(quant.dit.double_blocks[0].img_mlp[2], FP8Linear)
    assert isinstance(quant.dit.single_blocks[1].linear2, FP8Linear)
    assert not isinstance(quant.dit.img_in, FP8Linear) and not isinstance(quant.dit.final_layer.linear, FP8Linear)
    image = preprocess(Image.open(sorted(SHIPPED.glob("*.png"))[5]).convert("RGB"), (64, 48))
    with torch.no_grad():
        ref_latent = FE2EGraph(plain.vae, plain.dit, 64, 48).encoder(image)
        latents = DiTStep(plain.dit, 6, 8)(ref_latent), DiTStep(quant.dit, 6, 8)(ref_latent)
        maps = FE2EGraph(plain.vae, plain.dit, 64, 48)(image), FE2EGraph(quant.vae, quant.dit, 64, 48)(image)
    for (a, b), kind in ((latents, "latent"), (maps, "map")):
        for x, y, what in zip(a, b, ("depth", "normal"), strict=True):
            rel = float((x - y).norm() / x.norm())
            print(
                f"FP8 fake-quant vs FP32 {what} {kind}: relative L2 {rel:.4f}, max abs {float((x - y).abs().max()):.4f}"
            )
            assert 1e-4 < rel < 0.2


@pytest.mark.slow
def test_fp8_qdq_graph_runs_in_onnx_runtime_and_matches(stripped, scales, tmp_path):
    out = tmp_path / "onnx_fp8"
    export_onnx(
        stripped,
        out,
        resolutions=((64, 48),),
        graphs=("dit", "fe2e"),
        precision="fp8",
        fp8_scales=scales,
        progress=False,
    )
    for name in ("dit_64x48.onnx", "fe2e_64x48.onnx"):
        onnx.checker.check_model(str(out / name), full_check=True)
    model = onnx.load(str(out / "dit_64x48.onnx"), load_external_data=False)
    assert model.opset_import[0].version == 19
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == N_LINEARS and ops.count("DequantizeLinear") == 2 * N_LINEARS
    fp8 = onnx.TensorProto.FLOAT8E4M3FN
    assert sum(t.data_type == fp8 and len(t.dims) == 2 for t in model.graph.initializer) == N_LINEARS  # FP8 weights
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    matmuls = [[producer.get(i) for i in n.input] for n in model.graph.node if n.op_type == "MatMul"]
    assert sum(m[0] == "DequantizeLinear" for m in matmuls) == N_LINEARS  # the linears: FP8 in
    assert sum(m[0] == "Softmax" for m in matmuls) == 4  # attention PV BMMs: left in the compute dtype
    assert all(m[0] != "DequantizeLinear" for m in matmuls if "Softmax" in m)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "fp8" and (out / manifest["fp8_scales"]).is_file()
    # Both graphs against the fake-quantised PyTorch model, quantiser decisions aligned: a free-running
    # comparison is ill-conditioned (test_free_running_fp8_comparison_is_ill_conditioned).
    quant = load_stripped(stripped)
    quantize_dit(quant.dit, load_scales(scales))
    session, _ = make_session(out / "dit_64x48.onnx")
    for seed in (0, 1, 2):
        x = torch.randn(1, 16, 6, 8, generator=torch.Generator().manual_seed(seed))
        image = preprocess(synthetic_scene(64, 48, seed), (64, 48))
        runs = {
            "dit": compare_aligned(out / "dit_64x48.onnx", DiTStep(quant.dit, 6, 8), (x,), ("ref_latent",), OUT_DIT),
            "fe2e": compare_aligned(
                out / "fe2e_64x48.onnx", FE2EGraph(quant.vae, quant.dit, 64, 48), (image,), ("image",), OUT_FE2E
            ),
        }
        with torch.no_grad():  # free running, for information only: it depends on the input and the CPU
            free = [
                compare(g, w.numpy())[1]
                for g, w in zip(session.run(None, {"ref_latent": x.numpy()}), DiTStep(quant.dit, 6, 8)(x), strict=True)
            ]
        for graph, run in runs.items():
            assert len(run.mismatches) == N_LINEARS and not run.emulated
            assert all(count == 0 for count in run.mismatches.values()), run.mismatches  # Q/DQ bit-exact, every layer
            worst, worst_rel = run.worst_input()  # each linear's input, computed from aligned upstream layers
            print(
                f"ORT vs PyTorch FP8, aligned, {graph}, seed {seed}: worst linear input rel L2 {worst_rel:.2e}, {worst}"
            )
            assert len(run.input_errors) == N_LINEARS and worst_rel < 1e-4
            for (max_abs, rel), what in zip(run.errors(), ("depth", "normal"), strict=True):
                print(
                    f"ORT vs PyTorch FP8, aligned, {graph} {what}, seed {seed}: rel L2 {rel:.2e}, max abs {max_abs:.2e}"
                )
                assert rel < 1e-4  # FP32 round-off (measured 2e-7 to 2e-6); a wrong graph is off by O(1)
        print(f"  free running (dit, seed {seed}): rel L2 {free[0]:.2e} / {free[1]:.2e}")
    # A difference between two quantisers (here a bias of the last txt q/k/v projection) never reaches the
    # outputs of an aligned run, whose next quantised linear (the attention projection) gets ORT's input;
    # the per-layer input comparison is what catches it.
    qkv = quant.dit.double_blocks[1].txt_attn.qkv
    with torch.no_grad():
        qkv.bias.add_(0.05)
    run = compare_aligned(out / "dit_64x48.onnx", DiTStep(quant.dit, 6, 8), (x,), ("ref_latent",), OUT_DIT)
    assert all(rel < 1e-4 for _, rel in run.errors())
    assert run.worst_input()[0] == "dit.double_blocks.1.txt_attn.proj" and run.worst_input()[1] > 1e-2
    for r in check_export(out, stripped):  # seeded scenes (fe2e) and latents (dit), ORT vs fake-quantised PyTorch
        print(r.row())
        assert r.ok and r.aligned and r.quantizers == N_LINEARS and r.quantizer_mismatches == 0, r.row()
        assert r.rel_l2 < 1e-4 and r.tolerance == 1e-3, r.row()  # aligned: the FP32 tolerance applies
    facts = inspect_graph(out / "fe2e_64x48.onnx")
    assert facts.has_fp8_qdq
    check_precision(facts, "fp8")
    with pytest.raises(ValueError, match="without FP8 Q/DQ"):
        check_precision(facts, "bf16")


def qdq_session(scale: float) -> ort.InferenceSession:
    """ONNX QuantizeLinear -> DequantizeLinear to FLOAT8E4M3FN (opset 19), per-tensor ``scale``, as the export emits."""
    helper = onnx.helper
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s"], ["y"]),
        ],
        "qdq",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None])],
        [
            onnx.numpy_helper.from_array(np.array(scale, np.float32), "s"),
            helper.make_tensor("z", onnx.TensorProto.FLOAT8E4M3FN, [], [0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_free_running_fp8_comparison_is_ill_conditioned():
    """The root cause behind the aligned comparison, deterministically.

    E4M3 values next to 1 are 1 and 1.125; 1.0625 is their midpoint and rounds to even (1). One FP32
    ulp above it rounds to 1.125: a 1e-7 input difference (summation order) becomes a 0.125 step.
    ONNX Runtime and PyTorch agree bit for bit on every input; they disagree only when their inputs do.
    """
    scale = 0.5  # a power of two: x / scale is exact, so x / scale sits exactly on the midpoint
    mid = np.float32(1.0625 * scale)
    x = np.array([np.nextafter(mid, np.float32(0)), mid, np.nextafter(mid, np.float32(1))], np.float32)
    got = qdq_session(scale).run(None, {"x": x})[0]
    want = (quantize_fp8(torch.from_numpy(x), torch.tensor(scale)).float() * scale).numpy()
    np.testing.assert_array_equal(got, want)  # Q/DQ exact on the same input
    np.testing.assert_array_equal(want, np.array([1.0, 1.0, 1.125], np.float32) * scale)  # 1 ulp up: next E4M3 value
    # Through an FP8 linear: one input element 1 ulp apart (relative 1e-8 of the input) moves the
    # output by ~1e-2 relative, far above FP32 round-off; fed the same quantised input, it is identical.
    linear, generator = seeded_linear(32, 16, seed=1)
    fp8 = FP8Linear(linear, scale, float(linear.weight.abs().max()) / 448)
    a = (torch.rand(4, 32, generator=generator) - 0.5) * 0.8  # |x| < 0.4: no element near 1.0625 * 0.5
    a[2, 7] = float(mid)
    b = a.clone()
    b[2, 7] = float(x[2])
    with torch.no_grad():
        ya, yb = fp8(a), fp8(b)
        dq = (quantize_fp8(b, fp8.input_scale).float() * scale).to(torch.float32)
        aligned_a, aligned_b = fp8(dq), fp8(dq)  # the aligned comparison: both quantise ORT's dequantised input
    _, input_rel = compare(b.numpy(), a.numpy())
    _, output_rel = compare(yb.numpy(), ya.numpy())
    print(f"1-ulp input change (rel {input_rel:.1e}) -> FP8 linear output rel {output_rel:.1e}")
    assert input_rel < 1e-7 and output_rel > 1e-3
    assert torch.equal(aligned_a, aligned_b) and torch.equal(fp8(dq), yb)  # re-quantising q * s gives q back


@pytest.mark.slow
def test_quantizers_map_to_fp8_linears_by_name(stripped, scales, tmp_path):
    out = tmp_path / "onnx_fp8"
    export_onnx(
        stripped, out, resolutions=((32, 32),), graphs=("fe2e",), precision="fp8", fp8_scales=scales, progress=False
    )
    header = onnx.load(str(out / "fe2e_32x32.onnx"), load_external_data=False)
    quant = load_stripped(stripped)
    quantize_dit(quant.dit, load_scales(scales))
    taps = quantizer_taps(header, FE2EGraph(quant.vae, quant.dit, 32, 32))
    assert len(taps) == N_LINEARS and taps[0].module == "step.dit.double_blocks.0.img_attn.qkv"
    by_suffix = quantizer_taps(header, quant.dit)  # "step.dit." prefix of the graph, bare DiT names
    assert [t.module for t in by_suffix] == [t.module.removeprefix("step.dit.") for t in taps]
    # the exporter merges equal small initializers, so scale names can be shared: the FP8 weight names the layer
    for tensor in header.graph.initializer:
        if tensor.name.endswith(".input_scale"):
            tensor.name = "shared_scale"
    for node in header.graph.node:
        node.input[:] = ["shared_scale" if i.endswith(".input_scale") else i for i in node.input]
    assert quantizer_taps(header, quant.dit) == by_suffix
    with pytest.raises(ValueError, match="maps to no FP8Linear"):
        quantizer_taps(header, load_stripped(stripped).dit)  # not quantised


def test_scales_must_belong_to_the_stripped_model(tiny_dir, tiny_config, scales, tmp_path):
    other = strip_tiny(tiny_dir, tiny_config, tmp_path / "other", lora=False)
    with pytest.raises(ValueError, match="calibrated on another stripped model"):
        export_onnx(
            other,
            tmp_path / "x",
            resolutions=((32, 32),),
            graphs=("dit",),
            precision="fp8",
            fp8_scales=scales,
            progress=False,
        )
    layers = dict(load_scales(scales).layers)
    layers["double_blocks.9.img_attn.qkv"] = layers["double_blocks.0.img_attn.qkv"]
    with pytest.raises(ValueError, match="double_blocks.9"):
        quantize_dit(load_stripped(other).dit, layers)
    bad = json.loads(scales.read_text())
    bad["layers"]["double_blocks.0.img_attn.qkv"]["input_scale"] = 0.0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"layers.double_blocks.0.img_attn.qkv: scales \(0.0, .*positive and finite"):
        load_scales(tmp_path / "bad.json")


def test_cli_errors(stripped, scales, tmp_path):
    result = runner.invoke(app, ["calibrate", str(stripped), "-o", str(scales)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, ["calibrate", str(stripped), "-o", str(tmp_path / "s.json"), "--images", str(tmp_path)])
    assert result.exit_code == 2 and "no .jpg" in result.output
    result = runner.invoke(app, ["calibrate", str(tmp_path), "-o", str(tmp_path / "s.json")])
    assert result.exit_code == 2 and "not a stripped model" in result.output
    result = runner.invoke(app, ["export", str(stripped), "-o", str(tmp_path / "e"), "--precision", "fp8"])
    assert result.exit_code == 2 and "--precision fp8 needs --scales" in result.output


@pytest.mark.parametrize("recipe", ["tensor", "row"])
def test_quantisation_frees_each_bf16_weight_as_its_fp8_copy_is_made(stripped, scales, recipe):
    """Layer by layer: when a layer's FP8 copy is made, every earlier layer's BF16 weight is gone (at full size
    two copies of the DiT, 17 + 8.6 GB, would not fit a 24 GB card); each weight's values were read first."""
    model = load_stripped(stripped)
    model.dit.cast_weights(torch.bfloat16)
    names = list(quantizable_linears(model.dit))
    weights = [weakref.ref(model.dit.get_submodule(n).weight) for n in names]
    alive_at_each_layer = []
    made = FP8RowwiseLinear if recipe == "row" else FP8Linear
    original_init = made.__init__

    def counting_init(self, linear, *args, **kwargs):
        alive_at_each_layer.append(sum(w() is not None for w in weights))
        original_init(self, linear, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(made, "__init__", counting_init)
        if recipe == "row":
            fp8.quantize_dit_rowwise(model.dit, names)
        else:
            fp8.quantize_dit(model.dit, load_scales(scales).layers)
    assert len(names) == N_LINEARS and alive_at_each_layer == list(range(N_LINEARS, 0, -1))
    assert all(w() is None for w in weights)  # the last one too
    assert not any(
        isinstance(m, nn.Linear) and m.weight is not None and n in names for n, m in model.dit.named_modules()
    )
    with pytest.raises(ValueError, match="is not a Linear layer"):  # checked before anything is replaced
        fp8.quantize_dit_rowwise(load_stripped(stripped).dit, [names[0], "double_blocks.0.img_mod"])


def test_weight_quantisation_by_blocks_of_rows_equals_the_whole_tensor():
    torch.manual_seed(0)
    weight = torch.randn(300, 70, dtype=torch.bfloat16) * 3
    scale = torch.tensor(0.01)
    rows = fp8.rowwise_scales(weight)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fp8, "QUANTIZE_CHUNK", 7 * 70 + 3)  # blocks of 7 rows, the last one ragged
        assert len(fp8._row_blocks(weight)) == 43
        per_tensor, per_row = fp8.quantize_weight(weight, scale), fp8.quantize_weight(weight, rows)
        row_scales, amax = fp8.weight_rowwise_scales(weight), fp8.weight_amax(weight)
    assert torch.equal(per_tensor.view(torch.uint8), quantize_fp8(weight, scale).view(torch.uint8))
    assert torch.equal(per_row.view(torch.uint8), quantize_fp8(weight, rows).view(torch.uint8))
    assert torch.equal(row_scales, rows) and amax == weight.abs().amax().float()
