"""FP8: max calibration, fake-quantised linears, and the FP8 Q/DQ ONNX graph in ONNX Runtime."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.models.fused import DiTStep
from fe2e_deploy.onnx_check import check_export
from fe2e_deploy.onnx_export import export_onnx
from fe2e_deploy.ort_session import make_session
from fe2e_deploy.quantize.calibrate import load_scales
from fe2e_deploy.quantize.fp8 import FP8Linear, quantize_dit
from fe2e_deploy.strip import load_stripped, strip_model
from fe2e_deploy.trt_build import check_precision, inspect_graph

runner = CliRunner()


def strip_tiny(tiny_dir, tiny_config, out, seed_lora=True):
    names = ("dit.safetensors", "empty_prompt.npz", "vae.safetensors")
    lora = tiny_dir / "lora.safetensors" if seed_lora else None
    strip_model(*(tiny_dir / n for n in names), out, tiny_config, lora, torch.float32, progress=False)
    return out


@pytest.fixture(scope="module")
def stripped(tiny_dir, tiny_config, tmp_path_factory):
    return strip_tiny(tiny_dir, tiny_config, tmp_path_factory.mktemp("fp8") / "stripped")


@pytest.fixture(scope="module")
def scales(stripped, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp8") / "fp8_scales.json"
    args = ["calibrate", str(stripped), "-o", str(out), "--processing-res", "64x48", "--max-images", "3"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


def test_calibration_scales_are_sane(scales):
    doc = json.loads(scales.read_text())
    assert len(doc["images"]) == 3 and doc["resolutions"] == ["64x48"]
    assert doc["excluded"] == ["final_layer.linear", "img_in"]
    assert len(doc["layers"]) == 20  # 2 double blocks x 8 linears + 2 single blocks x 2
    for name, entry in doc["layers"].items():
        assert not name.startswith(("img_in", "final_layer"))
        for key in ("input_scale", "weight_scale"):
            assert math.isfinite(entry[key]) and entry[key] > 0
        assert entry["input_scale"] == pytest.approx(entry["input_amax"] / 448)


def test_fake_quantisation_is_close_but_not_identical(stripped, scales):
    ref = torch.randn(1, 16, 6, 8)
    plain = load_stripped(stripped)
    quant = load_stripped(stripped)
    quantize_dit(quant.dit, load_scales(scales))
    assert isinstance(quant.dit.double_blocks[0].img_attn.qkv, FP8Linear)
    assert isinstance(quant.dit.double_blocks[0].img_mlp[2], FP8Linear)
    assert not isinstance(quant.dit.img_in, FP8Linear)
    with torch.no_grad():
        a, b = DiTStep(plain.dit, 6, 8)(ref), DiTStep(quant.dit, 6, 8)(ref)
    for x, y, what in zip(a, b, ("depth", "normal"), strict=True):
        rel = float((x - y).norm() / x.norm())
        print(f"FP8 fake-quant vs FP32 {what} latent: relative L2 {rel:.4f}")
        assert 1e-4 < rel < 0.2


def test_fp8_qdq_graph_runs_in_onnx_runtime_and_matches(stripped, scales, tmp_path):
    out = tmp_path / "onnx_fp8"
    export_onnx(stripped, out, resolutions=((64, 48),), graphs=("dit", "fe2e"), fp8_scales=scales, progress=False)
    model = onnx.load(str(out / "dit_64x48.onnx"), load_external_data=False)
    assert model.opset_import[0].version == 19
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == 20 and ops.count("DequantizeLinear") == 40
    assert sum(t.data_type == onnx.TensorProto.FLOAT8E4M3FN for t in model.graph.initializer) >= 20
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
        print(f"ONNX Runtime FP8 Q/DQ vs PyTorch fake quant: relative L2 {rel:.2e}")
        assert rel < 1e-2
    for r in check_export(out, stripped):
        print(r.row())
        assert r.ok, r.row()
    facts = inspect_graph(out / "fe2e_64x48.onnx")
    assert facts.has_fp8_qdq
    check_precision(facts, "fp8")
    with pytest.raises(ValueError, match="without FP8 Q/DQ"):
        check_precision(facts, "bf16")


def test_scales_must_belong_to_the_stripped_model(tiny_dir, tiny_config, scales, tmp_path):
    other = strip_tiny(tiny_dir, tiny_config, tmp_path / "other", seed_lora=False)
    with pytest.raises(ValueError, match="calibrated on another stripped model"):
        export_onnx(other, tmp_path / "x", resolutions=((32, 32),), graphs=("dit",), fp8_scales=scales, progress=False)
    doc = load_scales(scales)
    doc["layers"]["double_blocks.9.img_attn.qkv"] = doc["layers"]["double_blocks.0.img_attn.qkv"]
    with pytest.raises(ValueError, match="double_blocks.9"):
        quantize_dit(load_stripped(other).dit, doc)


def test_cli_errors(stripped, scales, tmp_path):
    result = runner.invoke(app, ["calibrate", str(stripped), "-o", str(scales)])
    assert result.exit_code == 2 and "--overwrite" in result.output
    result = runner.invoke(app, ["calibrate", str(stripped), "-o", str(tmp_path / "s.json"), "--images", str(tmp_path)])
    assert result.exit_code == 2 and "no .jpg" in result.output
    result = runner.invoke(app, ["export", str(stripped), "-o", str(tmp_path / "e"), "--precision", "fp8"])
    assert result.exit_code == 2 and "go together" in result.output
