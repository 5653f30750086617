"""``scripts/device_twin.sh``: the parts that need no environment build (syntax, the row check, the wheel check)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
TWIN = ROOT / "scripts" / "device_twin.sh"
FETCH = ROOT / "scripts" / "fetch_device_wheels.sh"
ENGINES = ["stripped-bf16", "reference", "compiled-bf16", "attention"]
RESOLUTIONS = ["64x48", "96x64"]


def default_engines() -> list[str]:
    text = (ROOT / "scripts" / "device_benchmark.sh").read_text()
    return re.search(r"^ENGINES=\$\{ENGINES:-(.*)\}$", text, re.M).group(1).split(",")


def rows(engines=ENGINES, resolutions=RESOLUTIONS) -> list[dict]:
    """Complete bench.jsonl rows: a measured one per engine and resolution, attention as the benchmark writes it."""
    out = []
    for res in resolutions:
        for i, engine in enumerate(engines):
            common = {"engine": engine, "resolution": res, "device": "cpu", "preset": "tiny", "seed": 0}
            if engine == "attention":
                out.append(
                    {
                        **common,
                        "engine": "attention-cudnn_attention",
                        "kind": "attention",
                        "tokens": 64,
                        "backend": "CUDNN_ATTENTION",
                        "skipped": "No available kernel",
                    }
                )
                out.append(
                    {
                        **common,
                        "engine": "attention-math",
                        "kind": "attention",
                        "tokens": 64,
                        "backend": "MATH",
                        "median_s": 1e-4,
                        "tflops": 0.01,
                    }
                )
            else:
                out.append({**common, "e2e_median_s": 0.1 + 0.01 * i, "e2e_p90_s": 0.12})
    return out


def check(tmp_path: Path, records: list[dict] | str, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "bench.jsonl"
    text = records if isinstance(records, str) else "".join(json.dumps(r) + "\n" for r in records)
    path.write_text(text)
    env = {**os.environ, "CHECK_PYTHON": sys.executable}
    env.pop("RESOLUTIONS", None)
    return subprocess.run(
        ["bash", str(TWIN), "--check", str(path), *args], env=env, capture_output=True, text=True, timeout=60
    )


def check_args() -> tuple[str, str]:
    return ",".join(ENGINES), " ".join(RESOLUTIONS)


@pytest.mark.parametrize("script", [TWIN, FETCH])
def test_scripts_parse(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


def test_complete_file_passes(tmp_path):
    proc = check(tmp_path, rows(), *check_args())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all 8 engine x resolution rows measured" in proc.stdout
    # a backend that does not run on this device is told, not counted as missing
    assert "attention-cudnn_attention @ 64x48: No available kernel" in proc.stdout


def test_missing_row_fails_and_is_named(tmp_path):
    records = [r for r in rows() if not (r["engine"] == "compiled-bf16" and r["resolution"] == "96x64")]
    proc = check(tmp_path, records, *check_args())
    assert proc.returncode == 1
    assert "MISSING  compiled-bf16 @ 96x64" in proc.stdout
    assert "1 of 8 engine x resolution rows missing or skipped" in proc.stdout


def test_skipped_row_fails(tmp_path):
    records = rows()
    for r in records:
        if r["engine"] == "reference" and r["resolution"] == "64x48":
            del r["e2e_median_s"], r["e2e_p90_s"]
            r["skipped"] = "skipped: needs about 90 s, 12 s left of --time-budget"
    proc = check(tmp_path, records, *check_args())
    assert proc.returncode == 1
    assert "SKIPPED  reference @ 64x48: skipped: needs about 90 s" in proc.stdout


def test_attention_needs_one_measured_backend(tmp_path):
    records = [r for r in rows() if not (r["engine"] == "attention-math" and r["resolution"] == "96x64")]
    proc = check(tmp_path, records, *check_args())
    assert proc.returncode == 1
    assert "SKIPPED  attention @ 96x64: No available kernel" in proc.stdout
    # the attention engine skipped as a whole by the time budget (one row named "attention", no kind)
    records = [r for r in rows() if not (r.get("kind") == "attention" and r["resolution"] == "64x48")]
    records.append({"engine": "attention", "resolution": "64x48", "skipped": "skipped: needs about 5 s, 0 s left"})
    proc = check(tmp_path, records, *check_args())
    assert proc.returncode == 1
    assert "SKIPPED  attention @ 64x48: skipped: needs about 5 s" in proc.stdout
    records = [r for r in rows() if not (r.get("kind") == "attention" and r["resolution"] == "64x48")]
    proc = check(tmp_path, records, *check_args())
    assert proc.returncode == 1
    assert "MISSING  attention @ 64x48" in proc.stdout


def test_other_resolution_or_extra_rows_do_not_count(tmp_path):
    records = rows(resolutions=["64x48"]) + rows(resolutions=["128x32"])
    proc = check(tmp_path, records, *check_args())
    assert proc.returncode == 1
    assert proc.stdout.count("MISSING") == len(ENGINES)  # every engine at 96x64
    # resolutions may be given with commas or an upper-case X
    proc = check(tmp_path, rows(), ",".join(ENGINES), "64X48,96x64")
    assert proc.returncode == 0, proc.stdout


def test_bad_or_absent_file_fails(tmp_path):
    text = "".join(json.dumps(r) + "\n" for r in rows()) + "{not json\n"
    proc = check(tmp_path, text, *check_args())
    assert proc.returncode == 1
    assert "line(s) not JSON" in proc.stdout
    proc = subprocess.run(
        ["bash", str(TWIN), "--check", str(tmp_path / "absent.jsonl"), *check_args()],
        env={**os.environ, "CHECK_PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot read" in proc.stdout


def test_default_engines_and_resolutions_are_the_benchmarks(tmp_path):
    engines = default_engines()
    assert "attention" in engines and "stripped-bf16" in engines
    resolutions = ["64x48", "96x64", "128x32"]
    proc = check(tmp_path, rows(engines, resolutions))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"all {len(engines) * 3} engine x resolution rows measured" in proc.stdout
    proc = check(tmp_path, rows(engines, resolutions[:2]))
    assert proc.returncode == 1
    assert f"MISSING  {engines[0]} @ 128x32" in proc.stdout


def test_unknown_argument_is_refused():
    proc = subprocess.run(["bash", str(TWIN), "--nope"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "unknown argument --nope" in proc.stderr


def test_fetch_wheels_missing_lists_absent_wheels(tmp_path):
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "fetch_device_wheels.sh"
    shutil.copy(FETCH, script)
    run = lambda: subprocess.run(["bash", str(script), "--missing"], capture_output=True, text=True, timeout=30)  # noqa: E731
    proc = run()
    assert proc.returncode == 1
    assert "not in .whl/: diffusers==0.42.1" in proc.stdout
    (tmp_path / ".whl").mkdir()
    for name in ("diffusers-0.42.1-py3-none-any.whl", "importlib_metadata-8.7.0-py3-none-any.whl"):
        (tmp_path / ".whl" / name).write_bytes(b"")
    proc = run()
    assert proc.returncode == 1
    assert proc.stdout.strip() == "not in .whl/: zipp==4.1.2"
    (tmp_path / ".whl" / "zipp-4.1.2-py3-none-any.whl").write_bytes(b"")
    proc = run()
    assert proc.returncode == 0 and proc.stdout == ""
