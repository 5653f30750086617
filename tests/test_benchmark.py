"""benchmark: stage and end-to-end timing side by side with the reference, speedups, accuracy, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import strip_tiny
from typer.testing import CliRunner

from fe2e_deploy.benchmark import PAPER_SECONDS, format_table, map_errors, run_benchmark
from fe2e_deploy.cli import app
from fe2e_deploy.engines import EngineOptions
from fe2e_deploy.model_files import ModelFiles
from fe2e_deploy.processing import Prediction
from fe2e_deploy.scenes import synthetic_scene

runner = CliRunner()


@pytest.fixture(scope="module")
def stripped(tiny_dir, tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "stripped"
    return strip_tiny(tiny_dir, tiny_config, out, torch.bfloat16)


def test_map_errors():
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(8, 8, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    ref = Prediction(depth=rng.uniform(size=(8, 8)).astype(np.float32), normals=normals)
    same = map_errors(ref, ref)
    assert same["depth_rel_l2"] == 0.0 and same["normals_rel_l2"] == 0.0
    assert same["normals_mean_angle_deg"] == pytest.approx(0.0, abs=0.05)  # arccos near 1 in float32
    flipped = Prediction(depth=ref.depth * 1.1, normals=-normals)
    errors = map_errors(flipped, ref)
    assert errors["depth_rel_l2"] == pytest.approx(0.1, rel=1e-5)
    assert errors["normals_mean_angle_deg"] == pytest.approx(180.0, abs=0.1)


def test_benchmark_reference_and_stripped_side_by_side(tiny_dir, stripped):
    image = synthetic_scene(64, 48)
    report = run_benchmark(
        [stripped],
        image,
        ModelFiles.from_dir(tiny_dir),
        EngineOptions(processing_res=(32, 32)),
        runs=3,
        warmup=1,
        log=print,
    )
    ref, eng = report["results"]
    assert ref["name"] == "reference-bf16-cfg2" and eng["name"] == "stripped-bf16"
    for r in (ref, eng):
        assert set(r["stages"]) == {"preprocess", "vae_encode", "dit", "vae_decode", "postprocess"}
        assert all(s["n"] == 3 and 0 < s["min"] <= s["median"] <= s["p90"] for s in r["stages"].values())
        stage_sum = sum(s["median"] for s in r["stages"].values())
        assert stage_sum <= r["end_to_end"]["p90"] * 1.5  # stages account for the end-to-end time
        assert r["speedups"]["vs_paper_1.78s"] == pytest.approx(PAPER_SECONDS / r["end_to_end"]["median"])
        assert r["peak_memory_bytes"] > 0
    assert ref["speedups"]["vs_reference"] == pytest.approx(1.0)
    assert eng["speedups"]["vs_reference"] == pytest.approx(ref["end_to_end"]["median"] / eng["end_to_end"]["median"])
    # BF16 vs the FP32 reference: visible but small
    for r in (ref, eng):
        assert 0 < r["accuracy_vs_fp32_reference"]["depth_rel_l2"] < 0.05
        assert 0 < r["accuracy_vs_fp32_reference"]["normals_mean_angle_deg"] < 5
    table = format_table(report)
    assert "reference-bf16-cfg2" in table and "x 1.78s" in table


def test_benchmark_cli_writes_json_and_plot(stripped, tmp_path):
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    args = ["benchmark", "--engine", str(stripped), "--resolution", "32x32", "--runs", "2", "--warmup", "0"]
    result = runner.invoke(app, [*args, "--json", str(out_json), "--plot", str(out_png)])
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    assert report["settings"]["runs"] == 2 and report["results"][0]["accuracy_vs_fp32_reference"] is None
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = runner.invoke(app, [*args, "--json", str(out_json)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    nothing = runner.invoke(app, ["benchmark"])
    assert nothing.exit_code == 2 and "nothing to benchmark" in nothing.output
    bad = runner.invoke(app, [*args[:-4], "--runs", "0"])
    assert bad.exit_code == 2 and "--runs 0: must be an integer from 1" in bad.output


def test_benchmark_host_images_runs_infer_over_a_folder(stripped, tmp_path):
    from conftest import scene_image  # noqa: PLC0415

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        scene_image(96, 72, seed=i).save(folder / f"p{i}.png")
    args = ["benchmark", "--engine", str(stripped), "--resolution", "32x32", "--runs", "1", "--warmup", "0"]
    out = tmp_path / "b.json"
    result = runner.invoke(app, [*args, "--host-images", str(folder), "--json", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    host = json.loads(out.read_text())["results"][0]["infer_over_folder"]
    assert host["images"] == 3 and host["failed"] == 0
    assert host["e2e_s_per_image"] >= host["engine_s_per_image"] > 0 and host["host_cpu_s_per_image"] > 0
    assert "infer over 3 images" in result.output
    missing = runner.invoke(app, [*args, "--host-images", str(tmp_path / "nope"), "--device", "cpu"])
    assert missing.exit_code == 2 and "--host-images" in missing.output
