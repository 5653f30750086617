"""build-trt without TensorRT: precision/graph checks, profiles, the install hint, the sidecar contract, and the
runtime's own logic (I/O check, weight-streaming budget). The build and the TensorRT calls need TensorRT and an
NVIDIA GPU (not on this machine: DESIGN.md section 4); the engine's binding and batching run in
``test_engine_conformance.py`` behind a stand-in runtime."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from typer.testing import CliRunner

from fe2e_deploy.artifacts.contract import ContractError
from fe2e_deploy.artifacts.tensorrt import GpuIdentity, TensorRTPlan, read_plan_sidecar
from fe2e_deploy.cli import app
from fe2e_deploy.compile.tensorrt_build import check_precision, inspect_graph, plan_profile
from fe2e_deploy.engines import load_engine
from fe2e_deploy.engines.options import EngineOptions, parse_budget
from fe2e_deploy.engines.tensorrt import PlanTensor, check_plan_io, weight_streaming_budget
from fe2e_deploy.errors import InvalidInput
from fe2e_deploy.graph_io import FE2E, BatchProfile

runner = CliRunner()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


@pytest.fixture(scope="module")
def bf16_graph(shared_exports):
    """A static BF16 export of the fused graph and the DiT at 32x32 (a dynamic one next to it: shared_exports)."""
    return shared_exports["onnx-bf16"] / "fe2e_32x32.onnx"


@pytest.mark.slow
def test_graph_facts_precision_rules_and_profiles(bf16_graph):
    facts = inspect_graph(bf16_graph)
    assert facts.precision == "bf16" and not facts.has_fp8_qdq and facts.entry.resolution == "32x32"
    assert facts.entry.inputs["image"].shape == [1, 3, 32, 32] and facts.batch == BatchProfile.fixed(1)
    check_precision(facts, "bf16")
    with pytest.raises(ValueError, match="needs a graph with FP8 Q/DQ"):
        check_precision(facts, "fp8")
    with pytest.raises(ValueError, match="fp16"):
        check_precision(facts, "fp16")
    assert plan_profile(facts, max_batch=8) == BatchProfile.fixed(1)  # a static export keeps its batch
    dynamic = inspect_graph(bf16_graph.parent.parent / "onnx-bf16-dynamic" / "fe2e_32x32.onnx")
    assert dynamic.entry.inputs["image"].shape == ["batch", 3, 32, 32]
    assert plan_profile(dynamic, max_batch=4) == BatchProfile(1, 4, 4)
    assert plan_profile(dynamic, max_batch=4, opt_batch=2) == BatchProfile(1, 2, 4)
    with pytest.raises(ValueError, match="--opt-batch 5"):
        plan_profile(dynamic, max_batch=4, opt_batch=5)
    with pytest.raises(ValueError, match="--max-batch 65: the export takes batches of 1 to 64"):
        plan_profile(dynamic, max_batch=65)
    with pytest.raises(ValueError, match="a dit graph; build-trt builds the fused graph"):
        inspect_graph(bf16_graph.parent / "dit_32x32.onnx")


@pytest.mark.slow
@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here; the missing-extra path cannot run")
def test_build_without_tensorrt_names_the_extra_and_exits_3(bf16_graph, tmp_path):
    result = runner.invoke(app, ["build-trt", str(bf16_graph), "-o", str(tmp_path / "fe2e.plan")])
    assert result.exit_code == 3
    assert "pip install 'fe2e-deploy[tensorrt]'" in result.output
    assert not (tmp_path / "fe2e.plan").exists()


@pytest.mark.slow
def test_build_refuses_missing_graph_and_existing_plan(bf16_graph, tmp_path):
    result = runner.invoke(app, ["build-trt", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "a.plan")])
    assert result.exit_code == 2 and "none.onnx" in result.output
    (tmp_path / "b.plan").write_bytes(b"old")
    result = runner.invoke(app, ["build-trt", str(bf16_graph), "-o", str(tmp_path / "b.plan")])
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (tmp_path / "b.plan").read_bytes() == b"old"


def sidecar(**changes) -> dict:
    document = {
        "format": "fe2e-tensorrt-plan",
        "format_version": 2,
        "fe2e_deploy": "0.1.0",
        "tensorrt": "10.13.0",
        "gpu": H100,
        "precision": "bf16",
        "graph": "fe2e",
        "resolution": "32x32",
        "batch": {"min": 1, "opt": 4, "max": 4},
        "source": {"onnx": "export/fe2e_32x32.onnx", "precision": "bf16"},
        "weight_streaming": False,
        "builder_optimization_level": 3,
        "build_seconds": 12.5,
    }
    return document | changes


def test_sidecar_contract(tmp_path):
    plan = tmp_path / "fe2e.plan"
    plan.write_bytes(b"plan")
    with pytest.raises(FileNotFoundError, match="fe2e.plan.json: not found"):
        read_plan_sidecar(plan)
    TensorRTPlan.path_of(plan).write_text("{broken")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_plan_sidecar(plan)
    TensorRTPlan.path_of(plan).write_text(json.dumps(sidecar()))
    read = read_plan_sidecar(plan)
    assert read.size == (32, 32) and read.batch == BatchProfile(1, 4, 4) and read.gpu == GpuIdentity(**H100)
    assert TensorRTPlan.from_json(read.to_json()) == read  # written and read through one class
    read.check_gpu(plan, GpuIdentity(**H100))
    with pytest.raises(ValueError, match="built for NVIDIA H100.*NVIDIA L4.*rebuild"):
        read.check_gpu(plan, GpuIdentity("NVIDIA L4", "8.9"))
    cases = {
        "format_version": (sidecar(format_version=3), "version 3, this fe2e-deploy reads version 2"),
        "missing": ({k: v for k, v in sidecar().items() if k != "resolution"}, "field 'resolution' is missing"),
        "mistyped": (sidecar(build_seconds="fast"), "field 'build_seconds' is 'fast', not a number"),
        "nested": (sidecar(gpu={"name": 3, "compute_capability": "9.0"}), "field 'gpu.name' is 3"),
        "unknown": (sidecar(colour="red"), "unknown field 'colour'"),
        "bad profile": (sidecar(batch={"min": 4, "opt": 1, "max": 2}), "1 <= min <= opt <= max"),
        "precision": (sidecar(precision="fp32"), "precision 'fp32' is none of bf16, fp8"),
        "another format": (sidecar(format="fe2e-onnx-export"), "format 'fe2e-onnx-export' is not"),
    }
    for name, (document, message) in cases.items():
        with pytest.raises(ContractError, match=message) as info:
            TensorRTPlan.from_json(document, "x.plan.json")
        assert "x.plan.json" in str(info.value) and "fe2e-deploy build-trt" in str(info.value), name


def test_sidecars_of_the_earlier_version_are_read(tmp_path):
    """fe2e-deploy 0.1 wrote no version, batch as a number or {min, max}, the source's dtype."""
    old = {k: v for k, v in sidecar().items() if k not in ("format_version", "graph")}
    old["source"] = {"onnx": "export/fe2e_32x32.onnx", "dtype": "bfloat16"}
    assert TensorRTPlan.from_json(old | {"batch": 1}).batch == BatchProfile.fixed(1)
    assert TensorRTPlan.from_json(old | {"batch": {"min": 1, "max": 8}}).batch == BatchProfile(1, 1, 8)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_plan_engine_without_cuda_is_a_clear_error(tmp_path):
    plan = tmp_path / "fe2e.plan"
    plan.write_bytes(b"plan")
    TensorRTPlan.path_of(plan).write_text(json.dumps(sidecar()))
    with pytest.raises(ValueError, match="need a CUDA GPU"):
        load_engine(plan)
    with pytest.raises(ValueError, match="computes in bf16"):
        load_engine(plan, dtype="fp32")
    with pytest.raises(ValueError, match="built for 32x32, asked for 64x64"):
        load_engine(plan, processing_res=(64, 64))
    with pytest.raises(ValueError, match="needs a plan built with --weight-streaming"):
        load_engine(plan, device="cuda", weight_streaming_budget="0.5")


def test_plan_io_must_be_the_fused_graphs():
    profile = BatchProfile(1, 2, 4)

    def tensors(batch: int = -1, dtype: str = "FLOAT", depth: str = "depth") -> list[PlanTensor]:
        shapes = FE2E.shapes(batch, (32, 32))
        return [
            PlanTensor("image", True, tuple(shapes["image"]), dtype),
            PlanTensor(depth, False, tuple(shapes["depth"]), "FLOAT"),
            PlanTensor("normals", False, tuple(shapes["normals"]), "FLOAT"),
        ]

    check_plan_io("p.plan", tensors(), FE2E, (32, 32), profile)
    check_plan_io("p.plan", tensors(batch=2), FE2E, (32, 32), BatchProfile.fixed(2))
    with pytest.raises(ValueError, match="tensors are .*'disparity'"):
        check_plan_io("p.plan", tensors(depth="disparity"), FE2E, (32, 32), profile)
    with pytest.raises(ValueError, match="tensor image is an input BF16"):
        check_plan_io("p.plan", tensors(dtype="BF16"), FE2E, (32, 32), profile)
    with pytest.raises(ValueError, match=r"\[2, 3, 32, 32\].*FLOAT \[-1, 3, 32, 32\]"):
        check_plan_io("p.plan", tensors(batch=2), FE2E, (32, 32), profile)  # static plan, dynamic sidecar
    with pytest.raises(ValueError, match="at 64x64"):
        check_plan_io("p.plan", tensors(), FE2E, (64, 64), profile)


def test_weight_streaming_budget():
    gib = 2**30
    assert parse_budget("8GiB") == ("bytes", 8 * gib) and parse_budget("8gb") == ("bytes", 8e9)
    assert parse_budget("0.25") == ("fraction", 0.25) and parse_budget("123456") == ("bytes", 123456)
    for bad in ("lots", "-1", "0", "5 parsecs"):
        with pytest.raises(InvalidInput, match="--weight-streaming-budget"):
            parse_budget(bad)
    with pytest.raises(InvalidInput, match="--weight-streaming-budget"):
        EngineOptions(weight_streaming_budget="lots")
    streamable = 17 * gib  # the stripped 12 B DiT in BF16
    assert weight_streaming_budget("0.5", streamable, free=80 * gib, activations=0) == streamable // 2
    assert weight_streaming_budget("8GiB", streamable, free=80 * gib, activations=0) == 8 * gib
    assert weight_streaming_budget("40GiB", streamable, free=80 * gib, activations=0) == streamable  # at most all
    # default: what fits beside the activations and a 512 MiB margin, e.g. a 24 GiB card with 20 GiB free
    assert weight_streaming_budget(None, streamable, free=20 * gib, activations=6 * gib) == 14 * gib - 512 * 2**20
    assert weight_streaming_budget(None, streamable, free=80 * gib, activations=6 * gib) == streamable
    assert weight_streaming_budget(None, streamable, free=4 * gib, activations=6 * gib) == 0  # all streamed


def test_help_lists_every_option():
    text = runner.invoke(app, ["build-trt", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--out", "--precision", "--opt-level", "--timing-cache", "--weight-streaming", "--max-batch"):
        assert option in text
    assert "--opt-batch" in text
    infer = runner.invoke(app, ["infer", "--help"], env={"COLUMNS": "200"}).output
    assert "--weight-streaming-budget" in infer
