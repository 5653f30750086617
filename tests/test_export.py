"""export: every graph exports, passes onnx.checker, runs in ONNX Runtime and matches PyTorch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from conftest import scene_image, strip_tiny
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.compile.onnx_check import check_export
from fe2e_deploy.compile.onnx_export import export_onnx
from fe2e_deploy.engines import load_engine
from fe2e_deploy.engines.onnx import OnnxEngine
from fe2e_deploy.engines.ort_session import has_bf16, make_session
from fe2e_deploy.graph_io import GRAPHS
from fe2e_deploy.loading.stripped import load_stripped

pytestmark = pytest.mark.slow

runner = CliRunner()


@pytest.fixture(scope="module")
def stripped32(tiny_dir, tiny_config, tmp_path_factory):
    return strip_tiny(tiny_dir, tiny_config, tmp_path_factory.mktemp("exp") / "stripped32", torch.float32)


@pytest.fixture(scope="module")
def export32(stripped32, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "onnx32"
    export_onnx(stripped32, out, resolutions=((64, 48),), progress=False)
    return out


def test_every_graph_is_valid_and_matches_pytorch(export32):
    manifest = json.loads((export32 / "manifest.json").read_text())
    assert set(manifest["graphs"]) == {f"{g}_64x48" for g in GRAPHS}
    assert manifest["graphs"]["fe2e_64x48"]["inputs"] == {"image": {"shape": [1, 3, 48, 64], "dtype": "float32"}}
    # output shapes and dtypes read from the exported graphs (no eager forward)
    outputs = {k: {n: (o["shape"], o["dtype"]) for n, o in e["outputs"].items()} for k, e in manifest["graphs"].items()}
    assert outputs == {
        "vae_encoder_64x48": {"latent": ([1, 16, 6, 8], "float32")},
        "dit_64x48": {"depth_latent": ([1, 16, 6, 8], "float32"), "normal_latent": ([1, 16, 6, 8], "float32")},
        "vae_decoder_64x48": {"decoded": ([1, 3, 48, 64], "float32")},
        "fe2e_64x48": {"depth": ([1, 1, 48, 64], "float32"), "normals": ([1, 3, 48, 64], "float32")},
    }
    for entry in manifest["graphs"].values():
        onnx.checker.check_model(str(export32 / entry["file"]))
    results = check_export(export32)
    assert len(results) == 6  # latent, depth/normal latents, decoded, depth, normals
    for r in results:
        print(r.row())
        assert r.ok and r.rel_l2 < 1e-4 and not r.emulated, r.row()


def test_weights_are_stored_once_for_all_graphs(export32, stripped32):
    """dit and fe2e both hold the DiT, both VAE graphs the VAE; weights.bin holds each tensor once."""
    stored = (stripped32 / "stripped_dit.safetensors").stat().st_size + (stripped32 / "vae.safetensors").stat().st_size
    assert (export32 / "weights.bin").stat().st_size < 1.1 * stored
    assert not list(export32.glob("*.data")) and not list(export32.glob(".export-*"))


def test_fused_graph_maps_equal_the_reference_pipeline(export32, tiny_pipeline):
    """ONNX Runtime FP32 vs the reference pipeline: depth 2e-4, normals 2e-3 (as the stripped engine)."""
    engine = load_engine(export32 / "fe2e_64x48.onnx", processing_res=(64, 48))
    assert isinstance(engine, OnnxEngine)
    image = scene_image(80, 60, seed=2)  # other size: resized to 64x48 and back
    with pytest.raises(ValueError, match=r"processed at 1024x768 .*built for 64x48 only.*export STRIPPED --resolution"):
        load_engine(export32 / "fe2e_64x48.onnx").predict(image)  # FE2E's rule picks 1024x768: not exported
    got, want = engine.predict(image), tiny_pipeline(image, (64, 48))
    assert got.depth.shape == (60, 80)
    np.testing.assert_allclose(got.depth, want.depth, atol=2e-4, rtol=0)
    np.testing.assert_allclose(got.normals, want.normals, atol=2e-3, rtol=0)


def test_bf16_export_keeps_bf16_matmuls_and_checks_in_emulation(stripped32, tmp_path):
    out = tmp_path / "onnx16"
    export_onnx(stripped32, out, resolutions=((32, 32),), graphs=("dit",), dtype=torch.bfloat16, progress=False)
    model = onnx.load(str(out / "dit_32x32.onnx"), load_external_data=False)
    assert has_bf16(model)
    assert any(t.data_type == onnx.TensorProto.BFLOAT16 for t in model.graph.initializer)
    results = check_export(out)
    for r in results:
        print(r.row())
        assert r.ok and r.emulated and 1e-6 < r.rel_l2 < 3e-2, r.row()  # BF16 rounding is visible, and small


def test_dynamic_batch_graph_runs_at_two_batch_sizes(stripped32, tmp_path):
    out = tmp_path / "dyn"
    export_onnx(stripped32, out, resolutions=((32, 32),), graphs=("dit",), dynamic_batch=True, progress=False)
    entry = json.loads((out / "manifest.json").read_text())["graphs"]["dit_32x32"]
    assert entry["outputs"]["depth_latent"]["shape"] == ["batch", 16, 4, 4]
    assert entry["inputs"]["ref_latent"]["shape"] == ["batch", 16, 4, 4]
    session, _ = make_session(out / "dit_32x32.onnx")
    model = load_stripped(stripped32)
    from fe2e_deploy.models.fused import DiTStep

    step = DiTStep(model.dit, 4, 4)
    for batch in (1, 3):
        x = torch.randn(batch, 16, 4, 4, generator=torch.Generator().manual_seed(batch))
        depth, normals = session.run(None, {"ref_latent": x.numpy()})
        with torch.no_grad():
            want = step(x)
        np.testing.assert_allclose(depth, want[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(normals, want[1].numpy(), atol=1e-4)


def test_export_refuses_overwrite_and_bad_options(stripped32, export32, tmp_path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_onnx(stripped32, export32, resolutions=((64, 48),), progress=False)
    with pytest.raises(ValueError, match="multiples of 16"):
        export_onnx(stripped32, tmp_path / "x", resolutions=((60, 48),), progress=False)
    with pytest.raises(ValueError, match="unknown graph"):
        export_onnx(stripped32, tmp_path / "x", graphs=("unet",), progress=False)
    with pytest.raises(ValueError, match="built for 64x48, asked for 1024x768.*export STRIPPED --resolution"):
        OnnxEngine(export32, processing_res=(1024, 768))
    with pytest.raises(FileNotFoundError, match="lonely.onnx: ONNX graph not found"):  # not "no manifest.json"
        OnnxEngine(tmp_path / "lonely.onnx")
    (tmp_path / "lonely.onnx").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        OnnxEngine(tmp_path / "lonely.onnx")


def test_export_cli_check_and_infer(stripped32, tmp_path):
    out = tmp_path / "cli"
    args = ["export", str(stripped32), "-o", str(out), "--resolution", "32x32", "--graph", "fe2e", "--no-progress"]
    result = runner.invoke(app, [*args, "--check"])
    assert result.exit_code == 0, result.output
    assert "fe2e_32x32" in result.output and "rel_l2" in result.output and "FAIL" not in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(app, [*args[:-1], "--overwrite", "--dtype", "fp16"])
    assert bad.exit_code == 2 and "fp16" in bad.output
    images = tmp_path / "images"
    images.mkdir()
    scene_image(40, 30).save(images / "a.png")
    result = runner.invoke(app, ["infer", str(images), "-o", str(tmp_path / "unbuilt"), "--engine", str(out)])
    assert result.exit_code == 1 and "processed at 1024x768" in result.output  # FE2E's size was not exported
    infer = ["infer", str(images), "-o", str(tmp_path / "pred"), "--engine", str(out), "--processing-res", "32x32"]
    result = runner.invoke(app, infer)
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "pred" / "normals_npy" / "a_normals.npy").shape == (30, 40, 3)
    help_text = runner.invoke(app, ["export", "--help"]).output
    for option in ("--out", "--resolution", "--graph", "--dtype", "--batch", "--dynamic-batch", "--check", "--device"):
        assert option in help_text


def test_dynamic_batch_export_batches_infer(stripped32, tmp_path):
    """infer --batch-size 3 over 4 images (one unreadable) through a dynamic-batch export == batch 1."""
    out = tmp_path / "dyn"
    export_onnx(stripped32, out, resolutions=((32, 32),), graphs=("fe2e",), dynamic_batch=True, progress=False)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        scene_image(32 + 8 * i, 32, seed=i).save(images / f"{i}.png")
    (images / "broken.png").write_bytes(b"not a png")
    results = {}
    for batch in (1, 3):
        pred = tmp_path / f"pred{batch}"
        args = ["infer", str(images), "-o", str(pred), "--engine", str(out), "--batch-size", str(batch)]
        args += ["--processing-res", "32x32"]
        result = runner.invoke(app, [*args, "--no-progress"])
        assert result.exit_code == 1 and "4 image(s) written" in result.output and "1 failed" in result.output
        results[batch] = [np.load(pred / "depth_npy" / f"{i}_depth.npy") for i in range(4)]
    for a, b in zip(results[1], results[3], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_manifest_of_version_1_is_read(export32, tmp_path):
    """Exports of fe2e-deploy 0.1 before the typed contracts (manifest version 1) still open."""
    import shutil  # noqa: PLC0415

    folder = tmp_path / "v1"
    shutil.copytree(export32, folder)
    v2 = json.loads((folder / "manifest.json").read_text())
    v1 = {k: v for k, v in v2.items() if k not in ("compute", "batch", "stripped", "graphs")} | {
        "format_version": 1,
        "dtype": "float32",
        "precision": "float32",
        "batch": 1,
        "resolutions": ["64x48"],
        "stripped": {"path": v2["stripped"]["path"], "meta": v2["stripped"]["sources"], "txt_len": 640},
        "graphs": {k: {n: e[n] for n in ("file", "inputs", "outputs")} for k, e in v2["graphs"].items()},
    }
    (folder / "manifest.json").write_text(json.dumps(v1))
    with load_engine(folder, processing_res=(64, 48)) as engine:
        assert engine.manifest.batch.is_fixed and engine.precision == "fp32" and engine.sizes() == [(64, 48)]
        assert engine.predict(scene_image(64, 48)).depth.shape == (48, 64)
    (folder / "manifest.json").write_text(json.dumps(v1 | {"format_version": 3}))
    with pytest.raises(ValueError, match="version 3, this fe2e-deploy reads version 2 .*fe2e-deploy export"):
        load_engine(folder)
