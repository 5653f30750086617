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

from fe2e_deploy import synthetic_benchmark
from fe2e_deploy.cli import app
from fe2e_deploy.config import PRESETS
from fe2e_deploy.engines.eager import EagerEngine
from fe2e_deploy.engines.stripped import StrippedEngine
from fe2e_deploy.flops import bf16_peak_tflops, dit_flops
from fe2e_deploy.loading import load_dit, load_vae
from fe2e_deploy.loading.dit_layout import dit_layout
from fe2e_deploy.loading.stripped import load_stripped
from fe2e_deploy.processing import Prediction
from fe2e_deploy.reference import FE2EPipeline
from fe2e_deploy.scenes import synthetic_scene
from fe2e_deploy.strip import strip_in_memory, strip_model
from fe2e_deploy.synthetic import SyntheticModel
from fe2e_deploy.synthetic_benchmark import (
    ATTENTION_FIRST_S,
    ENGINES,
    SyntheticSettings,
    TimeEstimates,
    dit_rates,
    format_records,
    read_records,
    run_synthetic_benchmark,
)

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


def fake_record(build: float, first: dict[str, float], steady: dict[str, float]) -> dict:
    """An engine's record as ``measure_engine`` writes it (only what the estimator and the loop read)."""
    stages = {name: {"median": seconds, "p90": seconds, "min": seconds, "n": 10} for name, seconds in steady.items()}
    total = sum(steady.values())
    return {
        "e2e_median_s": total, "e2e_p90_s": total, "e2e_min_s": total, "images_per_s": 1 / total, "stages": stages,
        "build_s": build, "first_run_s": sum(first.values()), "first_run_stages": first,
        "build_peak_mem_bytes": 1, "steady_peak_mem_bytes": 1, "peak_mem_bytes": 1,
    }  # fmt: skip


#: A full-size run as it might go on an H100 (seconds): stripped-bf16 and the reference eager, compiled-bf16
#: 300 s cold (a 255 s VAE compile in its first run, 25 s for the blocks), each FP8 engine ~30 s.
STEADY = {"vae_encode": 0.03, "dit": 0.2, "vae_decode": 0.07}
FULL_SIZE = {
    "stripped-bf16": (15.0, fake_record(10, STEADY, STEADY)),
    "reference": (20.0, fake_record(12, {**STEADY, "dit": 0.5}, {**STEADY, "dit": 0.45})),
    "compiled-bf16": (300.0, fake_record(15, {"vae_encode": 75, "dit": 25, "vae_decode": 180}, STEADY)),
    "fp8-row": (30.0, fake_record(8, {"vae_encode": 0.03, "dit": 18, "vae_decode": 0.07}, {**STEADY, "dit": 0.12})),
    "fp8-tensor": (32.0, fake_record(10, {"vae_encode": 0.03, "dit": 18, "vae_decode": 0.07}, STEADY)),
    "fp8-row-fastacc": (30.0, fake_record(8, {"vae_encode": 0.03, "dit": 18, "vae_decode": 0.07}, STEADY)),
}


def simulate(monkeypatch, settings: SyntheticSettings, costs=FULL_SIZE, attention_s: float = 3.0) -> list[dict]:
    """The benchmark's loop over engines with each one's measurement replaced by its cost on a simulated clock."""
    clock = [0.0]

    def measure(engine_name, synth, image, res, device, settings):
        seconds, record = costs[engine_name]
        clock[0] += seconds
        h, w = res[1] // 16, res[0] // 16
        return dict(record), Prediction(np.full((h, w), 0.5, np.float32), np.tile([0, 0, 1.0], (h, w, 1)).astype("f4"))

    def attention(*args):
        clock[0] += attention_s
        return [{"engine": "attention-flash", "kind": "attention", "backend": "FLASH", "median_s": 1e-3, "tflops": 1}]

    monkeypatch.setattr(synthetic_benchmark, "measure_engine", measure)
    monkeypatch.setattr(synthetic_benchmark, "attention_records", attention)
    monkeypatch.setattr(synthetic_benchmark, "synthetic_scene", lambda w, h, seed: None)
    return run_synthetic_benchmark(settings, log=lambda _: None, clock=lambda: clock[0])


def test_time_budget_at_full_size_skips_no_fp8_engine_after_a_300_s_cold_compile(monkeypatch):
    """The rule (TimeEstimates): an FP8 engine is costed from its own DiT compile (compiled-bf16's blocks' share
    of its first run, then the last FP8 engine's), not from compiled-bf16's whole first run, whose VAE compile the
    FP8 engines reuse; attention from its own history. 15 + 20 + 300 + 92 + 3 = 430 s of a 450 s budget."""
    settings = SyntheticSettings(preset="step1x-edit", device="cpu", time_budget=450, runs=10, warmup=2, profile=True)
    records = simulate(monkeypatch, settings)
    assert [r["engine"] for r in records] == list(ENGINES[:-1]) + ["attention-flash"]
    assert not [r for r in records if "skipped" in r]
    estimates = TimeEstimates(settings)
    for engine in ENGINES[:3]:
        estimates.update(engine, FULL_SIZE[engine][1])
    # compiled-bf16's build + its blocks' compile + 14 runs (2 warm-up, 10 timed, 1 sampled, 1 profiled)
    assert estimates.seconds("fp8-row") == pytest.approx(15 + 25 - 0.2 + 14 * 0.3)
    assert estimates.seconds("attention") == ATTENTION_FIRST_S
    estimates.update("fp8-row", FULL_SIZE["fp8-row"][1])
    assert estimates.seconds("fp8-tensor") == pytest.approx(8 + 18 - 0.12 + 14 * 0.22)  # the last FP8 engine's


def test_time_budget_at_a_second_resolution_costs_the_vae_compile_again(monkeypatch):
    """At the next resolution the first compiled engine compiles the VAE again (static shapes): compiled-bf16 is
    costed at its own 300 s and skipped; the FP8 engines are then costed with that VAE compile too, and skipped;
    the eager engines and attention (seconds) still run."""
    settings = SyntheticSettings(
        preset="step1x-edit", device="cpu", resolutions=((1024, 768), (864, 576)), time_budget=600, runs=10,
        warmup=2, profile=True,
    )  # fmt: skip
    records = simulate(monkeypatch, settings)
    second = {r["engine"]: r for r in records if r["resolution"] == "864x576"}
    assert all("skipped" not in second[e] for e in ("stripped-bf16", "reference", "attention-flash"))
    assert all("skipped" in second[e] for e in ("compiled-bf16", "fp8-row", "fp8-tensor", "fp8-row-fastacc"))
    assert second["compiled-bf16"]["skipped"].startswith("skipped: needs about 299 s")


def test_fp8_gemm_per_engine_and_dit_rates():
    settings = SyntheticSettings(preset="tiny", device="cpu", fp8_gemm="fp8-row=scaled_mm, fp8-tensor=dequantized")
    settings.validate()
    assert [settings.gemm_for(e) for e in ("fp8-row", "fp8-tensor", "fp8-row-fastacc")] == [
        "scaled_mm", "dequantized", "auto",
    ]  # fmt: skip
    assert SyntheticSettings(fp8_gemm="scaled_mm").gemm_for("fp8-tensor") == "scaled_mm"
    for bad, message in (("fast", "modes"), ("fp8-rows=scaled_mm", "ENGINE=MODE"), ("fp8-row=fast", "gets 'fast'")):
        with pytest.raises(ValueError, match=message):
            SyntheticSettings(preset="tiny", device="cpu", fp8_gemm=bad).validate()
    synth = SyntheticModel.create("step1x-edit")
    record = {"stages": {"dit": {"median": 0.25}}}
    per_image = dit_flops(synth.config, 640, 1024, 768)["total"] / 1e12
    ref = dit_rates("reference", synth, 1024, 768, record, "NVIDIA H100 80GB HBM3")
    assert ref["dit_tflop_executed"] == pytest.approx(2 * per_image) and ref["dit_tflops"] == pytest.approx(
        per_image / 0.25
    )
    assert (
        ref["dit_fraction_of_bf16_peak"] == pytest.approx(2 * per_image / 0.25 / 989.4)
        and ref["fp8_peak_tflops"] is None
    )
    fp8 = dit_rates("fp8-row", synth, 1024, 768, record, "NVIDIA H100 80GB HBM3")
    assert fp8["dit_tflops_executed"] == fp8["dit_tflops"] and fp8["dit_fraction_of_fp8_peak"] == pytest.approx(
        per_image / 0.25 / 1978.9
    )
    assert dit_rates("fp8-row", synth, 1024, 768, record, "cpu (x86_64, 2 threads)")["fp8_peak_tflops"] is None


def test_a_failing_engine_costs_only_its_own_line(monkeypatch, tmp_path):
    """The one GPU call must not lose every later row to one engine's error (e.g. a kernel a torch lacks)."""
    costs = dict(FULL_SIZE)
    broken = {"fp8-row"}
    measure_ok = None

    def measure(engine_name, *args):
        if engine_name in broken:
            raise RuntimeError("only supports per-tensor scaling for CPU backend\nsecond line")
        return measure_ok(engine_name, *args)

    settings = SyntheticSettings(preset="step1x-edit", device="cpu", runs=10, warmup=2)
    simulate(monkeypatch, settings, costs)  # installs the simulated measurement...
    measure_ok = synthetic_benchmark.measure_engine
    monkeypatch.setattr(synthetic_benchmark, "measure_engine", measure)  # ...which this one wraps
    records = run_synthetic_benchmark(settings, tmp_path / "b.jsonl", log=lambda _: None)
    failed = [r for r in records if "failed" in r]
    assert [r["engine"] for r in failed] == ["fp8-row"]
    assert failed[0]["failed"] == "RuntimeError: only supports per-tensor scaling for CPU backend"
    assert [r["engine"] for r in records if "e2e_median_s" in r] == [e for e in ENGINES[:-1] if e not in broken]
    assert "FAILED: RuntimeError" in format_records(records) and len(read_records(tmp_path / "b.jsonl")) == 7
