"""Synthetic weights (no files), the in-memory strip, and ``benchmark --synthetic-weights``."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.config import PRESETS
from fe2e_deploy.engines.eager import EagerEngine
from fe2e_deploy.engines.stripped import StrippedEngine
from fe2e_deploy.flops import bf16_peak_tflops, dit_flops
from fe2e_deploy.loading import load_dit, load_vae
from fe2e_deploy.loading.dit_layout import dit_layout
from fe2e_deploy.loading.stripped import load_stripped
from fe2e_deploy.reference import FE2EPipeline
from fe2e_deploy.scenes import synthetic_scene
from fe2e_deploy.strip import strip_in_memory, strip_model
from fe2e_deploy.synthetic import SyntheticModel
from fe2e_deploy.synthetic_benchmark import SyntheticSettings, format_records, read_records, run_synthetic_benchmark

runner = CliRunner()
REQUIRED = (
    "engine",
    "resolution",
    "e2e_median_s",
    "dit_tflops",
    "peak_mem_bytes",
    "depth_rel_l2",
    "normals_mean_angle_deg",
    "device",
)


def test_synthetic_checkpoint_is_seeded_per_name_and_official_shaped():
    synth = SyntheticModel.create("tiny", seed=3)
    a, b = synth.dit, SyntheticModel.create("tiny", seed=3).dit
    assert set(a.keys()) == set(dit_layout(synth.config).official_shapes())
    name = "double_blocks.0.img_attn.qkv.weight"
    assert torch.equal(a.get_tensor(name), b.get_tensor(name))  # same seed and name: same tensor, any order
    assert not torch.equal(a.get_tensor(name), SyntheticModel.create("tiny", seed=4).dit.get_tensor(name))
    assert tuple(a.get_tensor(name).shape) == tuple(a.get_slice(name).get_shape())
    prompt = synth.prompt()
    assert prompt.embeds.shape == (640, synth.config.connector.in_channels) and int(prompt.mask.sum()) == 32
    with pytest.raises(KeyError, match="no tensor"):
        a.get_tensor("nope")


def test_strip_in_memory_equals_strip_to_files(tmp_path):
    """The in-memory strip (what the GPU benchmark builds) holds exactly what `strip` writes and loads back."""
    synth = SyntheticModel.create("tiny", seed=1)
    out = tmp_path / "stripped"
    strip_model(synth.dit, synth.prompt(), synth.vae, out, synth.config, dtype=torch.float32, progress=False)
    written = load_stripped(out)
    memory = strip_in_memory(synth.dit, synth.prompt(), synth.vae, synth.config, dtype=torch.float32)
    mine, theirs = written.dit.state_dict(), memory.dit.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    vae_a, vae_b = written.vae.state_dict(), memory.vae.state_dict()
    assert vae_a.keys() == vae_b.keys() and all(torch.equal(vae_a[k], vae_b[k]) for k in vae_a)
    assert written.meta.sources.dit.synthetic == "tiny DiT" and written.meta.sources.dit.seed == 1
    assert memory.meta.sources == written.meta.sources
    with safe_open(str(out / "vae.safetensors"), "pt") as fh:  # the synthetic VAE is written in the official layout
        assert "decoder.conv_out.weight" in set(fh.keys())


def test_stripped_synthetic_model_reproduces_the_official_path():
    """Synthetic weights: the official-style path (unstripped, CFG batch 2) == the in-memory stripped model."""
    synth = SyntheticModel.create("tiny")
    dit = load_dit(synth.config, synth.dit, torch.float32, progress=False)
    vae = load_vae(synth.config, synth.vae, progress=False)
    reference = EagerEngine(FE2EPipeline(dit, vae, synth.prompt(), cfg_batch=True), processing_res=(64, 48))
    stripped = strip_in_memory(synth.dit, synth.prompt(), synth.vae, synth.config, dtype=torch.float32)
    image = synthetic_scene(80, 60, seed=2)
    want, got = reference.predict(image), StrippedEngine(stripped, processing_res=(64, 48)).predict(image)
    np.testing.assert_allclose(got.depth, want.depth, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got.normals, want.normals, atol=1e-3, rtol=0)


def test_dit_flops_match_the_design_figures():
    full = dit_flops(PRESETS["step1x-edit"], 640, 1024, 768)
    assert full["tokens"] == 6784  # 640 text + 2 x 3072 image tokens
    assert full["linear"] == pytest.approx(87.6e12, rel=2e-3) and full["attention"] == pytest.approx(32.2e12, rel=2e-3)
    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.4 and bf16_peak_tflops("cpu") is None


def test_peak_memory_sees_allocations_outside_torch_counters():
    """In a fresh process (a long test session keeps freed pages resident, which a new block may reuse)."""
    code = (
        "import json, numpy as np\n"
        "from fe2e_deploy.memory import PeakMemory\n"
        "with PeakMemory('cpu', interval=0.001) as m:\n"
        "    block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB that no torch counter sees\n"
        "print(json.dumps([m.baseline, m.peak]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    baseline, peak = json.loads(out.stdout.strip().splitlines()[-1])
    assert peak - baseline >= 60 * 2**20, (baseline, peak)


@pytest.mark.slow
def test_benchmark_cli_writes_one_json_line_per_engine(tmp_path):
    out = tmp_path / "bench.jsonl"
    args = ["benchmark", "--synthetic-weights", "tiny", "--device", "cpu", "--resolution", "32x32"]
    args += ["--engines", "stripped-bf16,reference,attention", "--runs", "2", "--warmup", "1", "--json", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    engines = [line for line in lines if line.get("kind") != "attention"]
    assert [line["engine"] for line in engines] == ["stripped-bf16", "reference"]
    for line in engines:
        assert all(line.get(key) is not None for key in REQUIRED), line
        assert line["resolution"] == "32x32" and line["device"].startswith("cpu") and line["peak_mem_bytes"] > 0
        assert set(line["stages"]) == {"preprocess", "vae_encode", "dit", "vae_decode", "postprocess"}
    base, ref = engines
    assert base["depth_rel_l2"] == 0.0 and base["normals_mean_angle_deg"] < 0.05  # the baseline against itself
    assert 0 < ref["depth_rel_l2"] < 0.05 and ref["speedup_vs_reference"] == pytest.approx(1.0)
    assert ref["dit_tflop"] == pytest.approx(dit_flops(PRESETS["tiny"], 640, 32, 32)["total"] / 1e12)
    attention = [line for line in lines if line.get("kind") == "attention"]
    assert {a["backend"] for a in attention} >= {"MATH"} and any("median_s" in a for a in attention)
    assert "reference" in result.output and "e2e med ms" in result.output
    assert [r["engine"] for r in read_records(out)] == [line["engine"] for line in lines]
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_time_budget_skips_what_would_not_fit(tmp_path):
    settings = SyntheticSettings(
        preset="tiny", device="cpu", resolutions=((32, 32),), engines=("stripped-bf16", "reference"), runs=1,
        warmup=0, time_budget=1e-3,
    )  # fmt: skip
    records = run_synthetic_benchmark(settings, tmp_path / "b.jsonl", log=lambda _: None)
    assert records[0]["engine"] == "stripped-bf16" and "e2e_median_s" in records[0]  # nothing measured yet: it runs
    assert records[1]["engine"] == "reference" and records[1]["skipped"].startswith("skipped: needs about")
    assert len(read_records(tmp_path / "b.jsonl")) == 2 and "skipped" in format_records(records)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown engine"):
        SyntheticSettings(preset="tiny", device="cpu", engines=("fast",)).validate()
    with pytest.raises(ValueError, match="warmup >= 1"):
        SyntheticSettings(preset="tiny", device="cpu", engines=("compiled-bf16",), warmup=0).validate()
    result = runner.invoke(app, ["benchmark", "--synthetic-weights", "tiny", "--engine", "x", "--device", "cpu"])
    assert result.exit_code == 2 and "drop --engine" in result.output
    result = runner.invoke(app, ["benchmark", "--synthetic-weights", "huge", "--device", "cpu"])
    assert result.exit_code == 2 and "neither a preset" in result.output
