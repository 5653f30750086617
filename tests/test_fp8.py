"""FP8: shipped calibration scenes, max calibration, fake-quantised linears, the FP8 Q/DQ graph in ONNX Runtime."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import strip_tiny
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.models.fused import DiTStep, FE2EGraph
from fe2e_deploy.onnx_check import check_export
from fe2e_deploy.onnx_export import export_onnx
from fe2e_deploy.ort_session import make_session
from fe2e_deploy.pipeline import preprocess
from fe2e_deploy.quantize.calibrate import calibration_images, load_scales
from fe2e_deploy.quantize.fp8 import FP8Linear, quantize_dit
from fe2e_deploy.quantize.synthetic_scenes import COUNT, render_scene, scene_name, write_scenes
from fe2e_deploy.strip import load_stripped, sha256_file
from fe2e_deploy.trt_build import check_precision, inspect_graph

runner = CliRunner()
SHIPPED = Path(__file__).parents[1] / "calibration" / "images"
N_LINEARS = 20  # tiny config: 2 double blocks x 8 linears + 2 single blocks x 2 (img_in, final_layer excluded)


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


def test_fp8_linear_matches_fp8_grid_and_saturates():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32).requires_grad_(False)
    x = torch.randn(5, 64)
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
        # dequantised weight values lie on the scaled E4M3 grid
        grid = fp8.weight / fp8.weight_scale
        assert torch.equal(grid, grid.to(torch.float8_e4m3fn).float())


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


def test_fp8_qdq_graph_runs_in_onnx_runtime_and_matches(stripped, scales, tmp_path):
    out = tmp_path / "onnx_fp8"
    export_onnx(stripped, out, resolutions=((64, 48),), graphs=("dit", "fe2e"), fp8_scales=scales, progress=False)
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
    # the DiT graph against the fake-quantised PyTorch model, directly
    quant = load_stripped(stripped)
    quantize_dit(quant.dit, load_scales(scales))
    x = torch.randn(1, 16, 6, 8)
    session, _ = make_session(out / "dit_64x48.onnx")
    got = session.run(None, {"ref_latent": x.numpy()})
    with torch.no_grad():
        want = DiTStep(quant.dit, 6, 8)(x)
    for g, w in zip(got, want, strict=True):
        rel = np.linalg.norm(g - w.numpy()) / np.linalg.norm(w.numpy())
        print(f"ONNX Runtime FP8 Q/DQ vs PyTorch fake quant (DiT latent): relative L2 {rel:.2e}")
        assert rel < 1e-2
    for r in check_export(out, stripped):  # seeded scenes (fe2e) and latents (dit), ORT vs fake-quantised PyTorch
        print(r.row())
        assert r.ok, r.row()
    facts = inspect_graph(out / "fe2e_64x48.onnx")
    assert facts.has_fp8_qdq
    check_precision(facts, "fp8")
    with pytest.raises(ValueError, match="without FP8 Q/DQ"):
        check_precision(facts, "bf16")


def test_scales_must_belong_to_the_stripped_model(tiny_dir, tiny_config, scales, tmp_path):
    other = strip_tiny(tiny_dir, tiny_config, tmp_path / "other", lora=False)
    with pytest.raises(ValueError, match="calibrated on another stripped model"):
        export_onnx(other, tmp_path / "x", resolutions=((32, 32),), graphs=("dit",), fp8_scales=scales, progress=False)
    doc = load_scales(scales)
    doc["layers"]["double_blocks.9.img_attn.qkv"] = doc["layers"]["double_blocks.0.img_attn.qkv"]
    with pytest.raises(ValueError, match="double_blocks.9"):
        quantize_dit(load_stripped(other).dit, doc)
    bad = json.loads(scales.read_text())
    bad["layers"]["double_blocks.0.img_attn.qkv"]["input_scale"] = 0.0
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="invalid scales"):
        load_scales(tmp_path / "bad.json")


def test_cli_errors(stripped, scales, tmp_path):
    result = runner.invoke(app, ["calibrate", str(stripped), "-o", str(scales)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, ["calibrate", str(stripped), "-o", str(tmp_path / "s.json"), "--images", str(tmp_path)])
    assert result.exit_code == 2 and "no .jpg" in result.output
    result = runner.invoke(app, ["calibrate", str(tmp_path), "-o", str(tmp_path / "s.json")])
    assert result.exit_code == 2 and "not a stripped model" in result.output
    result = runner.invoke(app, ["export", str(stripped), "-o", str(tmp_path / "e"), "--precision", "fp8"])
    assert result.exit_code == 2 and "go together" in result.output
