"""build-trt without TensorRT: precision/graph checks, the install hint, sidecar checks. The build
itself needs TensorRT and an NVIDIA GPU (not on this machine: DESIGN.md section 4)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from conftest import strip_tiny
from typer.testing import CliRunner

from fe2e_deploy.artifacts.sidecar import sidecar_path
from fe2e_deploy.artifacts.tensorrt import check_sidecar
from fe2e_deploy.cli import app
from fe2e_deploy.compile.onnx_export import export_onnx
from fe2e_deploy.compile.tensorrt_build import check_precision, inspect_graph
from fe2e_deploy.engines import load_engine

runner = CliRunner()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.fixture(scope="module")
def bf16_graph(tiny_dir, tiny_config, tmp_path_factory):
    root = tmp_path_factory.mktemp("trt")
    strip_tiny(tiny_dir, tiny_config, root / "s", torch.bfloat16, lora=False)
    export_onnx(root / "s", root / "e", resolutions=((32, 32),), graphs=("fe2e",), progress=False)
    return root / "e" / "fe2e_32x32.onnx"


def test_graph_facts_and_precision_rules(bf16_graph):
    facts = inspect_graph(bf16_graph)
    assert facts.dtype == "bfloat16" and not facts.has_fp8_qdq and facts.resolution == "32x32"
    assert facts.inputs == {"image": [1, 3, 32, 32]}
    check_precision(facts, "bf16")
    with pytest.raises(ValueError, match="needs a graph with FP8 Q/DQ"):
        check_precision(facts, "fp8")
    with pytest.raises(ValueError, match="fp16"):
        check_precision(facts, "fp16")


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here; the missing-extra path cannot run")
def test_build_without_tensorrt_names_the_extra_and_exits_3(bf16_graph, tmp_path):
    result = runner.invoke(app, ["build-trt", str(bf16_graph), "-o", str(tmp_path / "fe2e.plan")])
    assert result.exit_code == 3
    assert "pip install 'fe2e-deploy[tensorrt]'" in result.output
    assert not (tmp_path / "fe2e.plan").exists()


def test_build_refuses_missing_graph_and_existing_plan(bf16_graph, tmp_path):
    result = runner.invoke(app, ["build-trt", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "a.plan")])
    assert result.exit_code == 2 and "none.onnx" in result.output
    (tmp_path / "b.plan").write_bytes(b"old")
    result = runner.invoke(app, ["build-trt", str(bf16_graph), "-o", str(tmp_path / "b.plan")])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (tmp_path / "b.plan").read_bytes() == b"old"


def test_sidecar_must_match_this_gpu(tmp_path):
    plan = tmp_path / "fe2e.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(FileNotFoundError, match="missing sidecar"):
        check_sidecar(plan)
    sidecar_path(plan).write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        check_sidecar(plan)
    built = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    sidecar = {"format": "fe2e-tensorrt-plan", "gpu": built, "precision": "bf16", "resolution": "32x32"}
    sidecar_path(plan).write_text(json.dumps(sidecar))
    assert check_sidecar(plan, gpu=built)["resolution"] == "32x32"
    with pytest.raises(ValueError, match="built for NVIDIA H100.*rebuild"):
        check_sidecar(plan, gpu={"name": "NVIDIA L4", "compute_capability": "8.9"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_plan_engine_without_cuda_is_a_clear_error(tmp_path):
    plan = tmp_path / "fe2e.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(ValueError, match="need a CUDA GPU"):
        load_engine(plan)


def test_help_lists_every_option():
    text = runner.invoke(app, ["build-trt", "--help"]).output
    for option in ("--out", "--precision", "--opt-level", "--timing-cache", "--weight-streaming", "--max-batch"):
        assert option in text
