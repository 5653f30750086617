"""``fe2e_deploy.device_checks`` and ``scripts/device_checks.sh`` on the CPU: every check reports, what a CPU can run
runs (with its numbers), the CUDA-only parts say so, a failing check is recorded and does not stop the others.

Measured on this 2-core CPU (torch 2.13.0+cpu, seed 0): ``_scaled_mm`` against the exact product of its FP8
operands 1.66e-3 (BF16 output rounding; per-tensor and per-row alike), against the unquantised BF16 matmul
3.6e-2 - 3.8e-2, fast accumulation bit-identical; SDPA FLASH / MATH (BF16) against FP32 2.2e-3 / 1.7e-3; the
AOTInductor FP8 package (32x32, dequantised GEMMs here) against eager FP8 7.8e-3 depth / 0.94 deg, against eager
BF16 2.4e-2 / 3.9 deg.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fe2e_deploy.device_checks as dc

ROOT = Path(__file__).parents[1]


def by_check(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        out.setdefault(record["check"], []).append(record)
    return out


def assert_cpu_records(records: list[dict]) -> dict[str, list[dict]]:
    """Statuses passed or skipped for a CUDA reason, and the numbers the CPU measures."""
    checks = by_check(records)
    for record in records:
        assert record["status"] in ("passed", "skipped"), record
        if record["status"] == "skipped":
            assert record["reason"].startswith(dc.NEEDS_CUDA), record
        assert record["device"].startswith("cpu") and record["seconds"] >= 0
    if "scaled_mm" in checks:
        assert [r["variant"] for r in checks["scaled_mm"]] == list(dc.GEMM_SHAPES)
        for record in checks["scaled_mm"]:
            assert record["status"] == "passed" and record["m"] == dc.REDUCED_TOKENS
            assert (record["k"], record["n"]) == tuple(
                s // dc.REDUCED_DIVISOR for s in dc.GEMM_SHAPES[record["variant"]]
            )
            assert record["fast_accum_bit_identical"] == {"tensor": True, "row": True}
            for label in ("tensor", "tensor-fast", "row", "row-fast"):
                gemm = record["gemms"][label]
                assert gemm["rel_l2_vs_dequantized_fp32"] < 3e-3  # measured 1.66e-3
                assert gemm["rel_l2_vs_dequantized_bf16"] < 1e-2  # measured 2.7e-3 - 3.0e-3
                assert 1e-2 < gemm["rel_l2_vs_bf16"] < 6e-2  # measured 3.6e-2 - 3.8e-2: FP8 rounding, not zero
            assert record["gemms"]["tensor-fast"]["rel_l2_vs_precise"] == 0.0
            assert record["gemms"]["row"]["module_rel_l2_vs_call"] == 0.0
            assert "ms" not in record["gemms"]["row"]  # no CPU timings
    if "cudnn_attention" in checks:
        (record,) = checks["cudnn_attention"]
        assert record["status"] == "skipped" and "cudnn_attention" not in record["backends"]
        assert record["backends"]["flash_attention"]["rel_l2_vs_fp32"] < 5e-3  # measured 2.2e-3
        assert record["backends"]["math"]["rel_l2_vs_fp32"] < 5e-3  # measured 1.7e-3
    if "cuda_graph" in checks:
        (record,) = checks["cuda_graph"]
        assert record["status"] == "skipped" and record["compile_mode"] is None
        assert record["static_buffer_rerun_identical"] is True and record["nongraph_ms"] > 0
    if "fp8_memory" in checks:
        for record in checks["fp8_memory"]:
            assert record["status"] == "skipped" and "RSS" in record["reason"]
            assert record["bf16"]["peak_bytes"] > 0 and record["fp8"]["peak_bytes"] > 0
            assert record["quantised_linears"] == 20 if record["config"] == "tiny" else record["quantised_linears"] > 0
            assert record["fp8_vs_bf16_maps"]["depth_rel_l2"] < 0.2 and record["fp8_gemm"] == "dequantized"
    return checks


def test_cpu_checks_run_what_a_cpu_can(tmp_path):
    """Everything but the AOTInductor compile, in process (tiny config only: ~30 s here)."""
    settings = dc.CheckSettings(
        device="cpu", mid=None, checks=("scaled_mm", "cudnn_attention", "cuda_graph", "fp8_memory")
    )
    lines: list[str] = []
    records = dc.run_checks(settings, tmp_path / "checks.jsonl", log=lines.append)
    assert [json.loads(line) for line in (tmp_path / "checks.jsonl").read_text().splitlines()] == records
    checks = assert_cpu_records(records)
    assert list(checks) == ["scaled_mm", "cudnn_attention", "cuda_graph", "fp8_memory"]
    assert [r["config"] for r in checks["fp8_memory"]] == ["tiny"]  # --preset-mid none: tiny only
    table = lines[-1]
    assert table.startswith("check") and "5 passed, 0 failed, 3 skipped of 8 records" in table


def test_a_failing_check_is_recorded_and_the_others_run(tmp_path, monkeypatch, capsys):
    def boom(*args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(dc, "check_attention", boom)
    monkeypatch.setattr(dc, "check_scaled_mm", lambda name, *args: {"status": "passed", "summary": f"fake {name}"})
    code = dc.main(
        ["--out", str(tmp_path), "--device", "cpu", "--preset-mid", "none", "--checks", "cudnn_attention,scaled_mm"]
    )
    assert code == 1
    records = dc.read_records(tmp_path / "checks.jsonl")
    assert [(r["check"], r["status"]) for r in records] == [("cudnn_attention", "failed")] + [
        ("scaled_mm", "passed")
    ] * 5
    assert records[0]["error"] == "RuntimeError: boom"
    out = capsys.readouterr().out
    assert "Traceback" in out and "5 passed, 1 failed, 0 skipped of 6 records" in out
    assert "1 failed" in (tmp_path / "checks_table.txt").read_text()
    # a last line cut off by a kill is ignored; --summary prints the table and says whether a check failed
    with open(tmp_path / "checks.jsonl", "a") as fh:
        fh.write('{"check": "aoti", "sta')
    assert dc.main(["--summary", str(tmp_path / "checks.jsonl")]) == 1
    assert "5 passed, 1 failed, 0 skipped of 6 records" in capsys.readouterr().out


def test_the_budget_skips_what_would_not_fit(tmp_path, monkeypatch):
    def slow(name, *args):
        time.sleep(0.2)
        return {"status": "passed"}

    monkeypatch.setattr(dc, "check_scaled_mm", slow)
    settings = dc.CheckSettings(device="cpu", mid=None, checks=("scaled_mm",), budget=0.3)
    records = dc.run_checks(settings, None, log=lambda _: None)
    assert [r["status"] for r in records] == ["passed", "skipped", "skipped", "skipped", "skipped"]
    assert records[1]["reason"].startswith("skipped: time budget (needs about ")  # seconds: as the machine ran it
    with pytest.raises(ValueError, match="unknown check"):
        dc.run_checks(dc.CheckSettings(device="cpu", checks=("nope",)))


@pytest.mark.slow
def test_script_on_the_cpu_reports_every_check(tmp_path):
    """``DEVICE=cpu scripts/device_checks.sh`` with the tiny config: every check, the AOTInductor package compiled
    for the CPU (~50 s of the ~90 s here)."""
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "DEVICE": "cpu", "PRESET_MID": "none", "PYTHON": sys.executable}
    env["LIMIT"] = "900"  # this test checks that every check runs, not how fast a loaded machine is
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_checks.sh")], env=env, capture_output=True, text=True, timeout=1000
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    records = dc.read_records(out / "checks.jsonl")
    checks = assert_cpu_records(records)
    assert list(checks) == list(dc.CHECKS)
    (aoti,) = checks["aoti"]
    assert aoti["status"] == "passed" and aoti["fp8_gemm"] == "dequantized" and aoti["scaled_mm_calls"] == {}
    assert aoti["vs_eager_same_recipe"]["depth_rel_l2"] < 2e-2  # measured 7.8e-3 (bound 5e-2)
    assert aoti["vs_eager_bf16"]["normals_mean_angle_deg"] < 8  # measured 3.9 deg (bound 15)
    assert aoti["package_bytes"] > 0 and aoti["build_s"] > 0
    table = (out / "checks_table.txt").read_text()
    assert "6 passed, 0 failed, 3 skipped of 9 records" in table  # fp8_memory: tiny only (PRESET_MID=none)
    assert table in (out / "device_checks.log").read_text() and "device checks exit code 0" in log
