"""``TINY=1 scripts/device_benchmark.sh``: every line of the GPU call, run on this CPU with the tiny config."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[1]
REQUIRED = ("engine", "resolution", "e2e_median_s", "dit_tflops", "peak_mem_bytes", "depth_rel_l2", "device")
ENGINES = ["stripped-bf16", "reference", "compiled-bf16", "fp8-row", "fp8-tensor", "fp8-row-fastacc"]
#: Three resolutions, as the GPU call runs three: every engine compiles at each (Dynamo's caches over sizes).
RESOLUTIONS = ["64x48", "96x64", "128x32"]


def write_wheel(folder: Path, name: str = "fe2e_probe_wheel", version: str = "1.0") -> Path:
    """A minimal valid pure-Python wheel (stands in for the carried diffusers wheel, no network needed)."""
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{name}-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in files.items()
    )
    files[f"{name}-{version}.dist-info/RECORD"] = (record + f"{name}-{version}.dist-info/RECORD,,\n").encode()
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return wheel


def test_tiny_device_benchmark_script_runs_every_engine_at_three_resolutions(tmp_path):
    out = tmp_path / "out"
    write_wheel(tmp_path / "wheels")
    env = {**os.environ, "TINY": "1", "OUT": str(out), "WHEELS": str(tmp_path / "wheels"), "PYTHON": sys.executable}
    env["SITE"] = str(tmp_path / "site")
    env["RESOLUTIONS"] = " ".join(RESOLUTIONS)
    # A budget no loaded CI machine reaches: this test checks that every stage runs, not how fast (the script's
    # default budget of 240 s skipped the last engines on a machine busy with other jobs).
    env["BUDGET"], env["LIMIT"] = "1500", "1700"
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "device_benchmark.sh")], env=env, capture_output=True, text=True, timeout=1800
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    for marker in ("== probe", "python ", "torch ", "installed 1 wheel(s)", "fe2e_deploy 0.", "benchmark exit code 0"):
        assert marker in log, marker
    assert (tmp_path / "site" / "fe2e_probe_wheel" / "__init__.py").is_file()  # the carried wheel was installed
    lines = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    engines = [line for line in lines if line.get("kind") != "attention"]
    want = [(engine, res) for res in RESOLUTIONS for engine in ENGINES]
    assert [(line["engine"], line["resolution"]) for line in engines] == want, [line.get("skipped") for line in lines]
    for line in engines:
        assert all(line.get(key) is not None for key in REQUIRED), line
        assert line["top_kernels"] and line["stages"]["dit"]["median"] > 0
        assert line["build_peak_mem_bytes"] > 0 and line["steady_peak_mem_bytes"] > 0
        assert line["first_run_stages"]["dit"] > 0
    for res in RESOLUTIONS:
        rows = {line["engine"]: line for line in engines if line["resolution"] == res}
        assert all(0 < rows[e]["depth_rel_l2"] < 0.2 and rows[e]["normals_mean_angle_deg"] < 20 for e in ENGINES[1:])
        assert rows["reference"]["dit_tflop_executed"] == pytest.approx(2 * rows["reference"]["dit_tflop"])
        # the GPU's FP8 GEMM calls (torch._scaled_mm) run here for the row-wise engines, dequantised per-tensor
        assert [rows[e]["fp8_gemm"] for e in ENGINES[3:]] == ["scaled_mm", "dequantized", "scaled_mm"]
        attention = [line for line in lines if line.get("kind") == "attention" and line["resolution"] == res]
        assert any("tflops" in line for line in attention), attention
    table = (out / "bench_table.txt").read_text()
    assert all(engine in table for engine in ENGINES)
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "device_benchmark.log").read_text().count("== results") == 1


def test_device_results_are_kept_under_benchmarks_by_date_and_gpu(tmp_path):
    """``keep_device_results.sh``: the returned JSON lines copied as benchmarks/DATE-GPU[-checks].jsonl, never over."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    script = repo / "scripts" / "keep_device_results.sh"
    script.write_text((ROOT / "scripts" / "keep_device_results.sh").read_text())
    back = tmp_path / "files_at"
    back.mkdir()
    line = {"engine": "stripped-bf16", "device": "NVIDIA H100 80GB HBM3", "measured_at": "2026-12-08T01:02:03+00:00"}
    (back / "bench.jsonl").write_text(json.dumps(line) + "\n" + '{"cut off mid-wr')
    (back / "checks.jsonl").write_text(json.dumps({"check": "scaled_mm", **line}) + "\n")
    run = subprocess.run(["bash", str(script), str(back)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    kept = sorted(p.name for p in (repo / "benchmarks").iterdir())
    assert kept == ["2026-12-08-nvidia-h100-80gb-hbm3-checks.jsonl", "2026-12-08-nvidia-h100-80gb-hbm3.jsonl"]
    assert (repo / "benchmarks" / kept[1]).read_bytes() == (back / "bench.jsonl").read_bytes()
    again = subprocess.run(["bash", str(script), str(back)], capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "not replaced" in again.stdout + again.stderr
