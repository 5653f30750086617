"""build --backend aoti: packages without weights, an engine folder of resolutions, batches, checks, FP8.

Three compiles in all (about 25 s each on 2 CPU cores): an FP32 batch-2 folder at 64x48 and
32x32 through the CLI, and an FP8 ``.pt2`` at 32x32 through the library.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from conftest import scene_image, strip_tiny
from typer.testing import CliRunner

import fe2e_deploy.compile.aoti_build as build_module
import fe2e_deploy.engines.aoti as aoti_module
import fe2e_deploy.engines.base as base_module
from fe2e_deploy.artifacts.aoti import ENGINE_FILE
from fe2e_deploy.artifacts.scales import write_scales
from fe2e_deploy.artifacts.sidecar import sidecar_path
from fe2e_deploy.artifacts.stripped import META_FILE
from fe2e_deploy.cli import app
from fe2e_deploy.compile.aoti_build import build_aoti
from fe2e_deploy.engines import load_engine
from fe2e_deploy.engines.aoti import AOTIEngine
from fe2e_deploy.engines.stripped import StrippedEngine
from fe2e_deploy.loading.stripped import load_stripped
from fe2e_deploy.quantize.calibrate import calibrate_fp8

runner = CliRunner()
SMALL, LARGE = (32, 32), (64, 48)


@pytest.fixture(scope="module")
def stripped(tiny_dir, tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("aoti") / "stripped"
    return strip_tiny(tiny_dir, tiny_config, out)


@pytest.fixture(scope="module")
def folder(stripped, tmp_path_factory):
    """FP32, batch 2, two resolutions, default device (auto: cpu here)."""
    out = tmp_path_factory.mktemp("aoti") / "engine"
    args = ["build", str(stripped), "-o", str(out), "--precision", "fp32", "--batch", "2"]
    result = runner.invoke(app, [*args, "--resolution", "64x48", "--resolution", "32x32"])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def fp8_package(stripped, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("aoti")
    scales = write_scales(calibrate_fp8(stripped, processing_res=SMALL, max_images=2, progress=False), tmp / "s.json")
    out = tmp / "fp8.pt2"
    build_aoti(stripped, out, resolution=SMALL, precision="fp8", scales=scales)
    return out


@pytest.fixture(scope="module")
def eager(stripped):
    return {size: StrippedEngine(stripped, processing_res=size) for size in (SMALL, LARGE)}


def tiny_rule(width: int, height: int) -> tuple[int, int]:
    """A stand-in for FE2E's resize rule at the tiny model's sizes (the real one gives 1024x768 and up)."""
    return SMALL if width <= 40 else LARGE


def weight_bytes_inside(package, stripped) -> list[str]:
    """Names of the stripped model's largest DiT and VAE tensors whose bytes occur in the package's files."""
    model = load_stripped(stripped)
    blob = b"".join(zipfile.ZipFile(package).read(n) for n in zipfile.ZipFile(package).namelist())
    found = []
    for module in (model.dit, model.vae):
        for name, tensor in sorted(module.state_dict().items(), key=lambda kv: -kv[1].numel())[:3]:
            if tensor.contiguous().numpy().tobytes()[:256] in blob:
                found.append(name)
    return found


def test_folder_packages_hold_no_weights(folder, stripped):
    description = json.loads((folder / ENGINE_FILE).read_text())
    assert description["resolutions"] == ["64x48", "32x32"] and description["batch"] == 2
    assert description["device"]["kind"] == ("cuda" if torch.cuda.is_available() else "cpu")  # --device auto
    assert description["torch"] == torch.__version__ and description["weights_in_package"] is False
    assert description["stripped"]["path"] == str(stripped.resolve()) and description["stripped"]["dtype"] == "float32"
    assert sorted(p.name for p in folder.iterdir()) == ["aoti_engine.json", "fe2e_32x32.pt2", "fe2e_64x48.pt2"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    for name in description["packages"].values():
        assert weight_bytes_inside(folder / name, stripped) == []
        print(f"{name}: {(folder / name).stat().st_size / 2**20:.2f} MiB (no weights)")
    print("compile seconds:", description["build_seconds"])


def test_folder_engine_routes_each_image_to_its_resolution(folder, eager, tiny_pipeline, monkeypatch):
    engine = load_engine(folder)
    assert isinstance(engine, AOTIEngine) and engine.name == "aoti-fp32"
    assert engine.resolutions == [LARGE, SMALL]
    monkeypatch.setattr(base_module, "fe2e_processing_size", tiny_rule)
    # 3 images at 64x48 (two batches of 2, the last padded) and 2 at 32x32, interleaved
    images = [scene_image(*size, seed=i) for i, size in enumerate([(80, 60), (30, 30), (70, 50), (36, 20), (64, 48)])]
    got = engine.predict_batch(images)
    assert len(got) == len(images)
    diffs = []
    for image, prediction in zip(images, got, strict=True):
        size = tiny_rule(*image.size)
        want = eager[size].predict(image)
        assert prediction.depth.shape == (image.height, image.width)
        diffs.append((np.abs(prediction.depth - want.depth).max(), np.abs(prediction.normals - want.normals).max()))
        np.testing.assert_allclose(prediction.depth, want.depth, atol=1e-4, rtol=0)
        np.testing.assert_allclose(prediction.normals, want.normals, atol=2e-3, rtol=0)
    assert len({p.depth.tobytes() for p in got}) == len(images)  # distinct, not one image copied
    one = engine.predict(images[0])  # predict = a batch of one (padded)
    np.testing.assert_array_equal(one.depth, got[0].depth)
    reference = tiny_pipeline(images[0], LARGE)  # FP32 compiled vs the reference pipeline
    np.testing.assert_allclose(one.depth, reference.depth, atol=2e-4, rtol=0)
    np.testing.assert_allclose(one.normals, reference.normals, atol=2e-3, rtol=0)
    depth_diff, normals_diff = np.max(diffs, axis=0)
    print(f"FP32 AOTI (batch 2) vs eager stripped: max |difference| depth {depth_diff:.2e}, normals {normals_diff:.2e}")


def test_folder_engine_sizes_not_built(folder, eager):
    image = scene_image(80, 60, seed=1)
    engine = AOTIEngine(folder)  # FE2E's rule: 80x60 runs at 1024x768, which is not built
    with pytest.raises(ValueError, match=r"processed at 1024x768.*built for 64x48, 32x32.*--resolution 1024x768"):
        engine.predict(image)
    with pytest.raises(ValueError, match="--processing-res"):
        engine.predict_batch([image])
    forced = AOTIEngine(folder, processing_res=SMALL).predict(image)  # a built size, by processing_res
    np.testing.assert_allclose(forced.depth, eager[SMALL].predict(image).depth, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="built for 64x48, 32x32, asked for 48x48"):
        AOTIEngine(folder, processing_res=(48, 48))


def test_stripped_folder_checks(folder, stripped, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.copytree(stripped, moved)
    AOTIEngine(folder, processing_res=SMALL, stripped=moved)  # same sources elsewhere: accepted
    meta = json.loads((moved / META_FILE).read_text())
    meta["sources"]["dit"]["sha256"] = "0" * 64
    (moved / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not the stripped model .* was built from"):
        AOTIEngine(folder, stripped=moved)
    meta = json.loads((stripped / META_FILE).read_text()) | {"dtype": "bfloat16"}
    (moved / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="other sources or dtype"):
        AOTIEngine(folder, stripped=moved)
    copy = tmp_path / "engine"
    shutil.copytree(folder, copy)
    description = json.loads((copy / ENGINE_FILE).read_text())
    description["stripped"]["path"] = str(tmp_path / "gone")
    (copy / ENGINE_FILE).write_text(json.dumps(description))
    with pytest.raises(FileNotFoundError, match="gone: stripped model folder not found.*holds no weights"):
        load_engine(copy)
    AOTIEngine(copy, stripped=stripped)  # the explicit folder instead of the recorded one
    (copy / "fe2e_32x32.pt2").unlink()
    with pytest.raises(FileNotFoundError, match="fe2e_32x32.pt2: package missing"):
        AOTIEngine(copy, stripped=stripped)
    keep = aoti_module.graph_constants
    monkeypatch.setattr(aoti_module, "graph_constants", lambda g: {k: v for k, v in keep(g).items() if k != "step.cos"})
    with pytest.raises(ValueError, match="needs constant 'step.cos'"):
        AOTIEngine(folder, processing_res=SMALL)


def test_packages_record_what_they_are_compiled_for(folder, fp8_package):
    def metadata(package):
        return torch._inductor.aoti_load_package(str(package)).get_metadata()

    for size in ("64x48", "32x32"):
        got = metadata(folder / f"fe2e_{size}.pt2")
        assert (got["fe2e_resolution"], got["fe2e_batch"], got["fe2e_precision"]) == (size, "2", "fp32")
    got = metadata(fp8_package)
    assert (got["fe2e_resolution"], got["fe2e_batch"], got["fe2e_precision"]) == ("32x32", "1", "fp8")


def test_a_package_its_description_does_not_match_is_refused(folder, fp8_package, tmp_path):
    """Sidecars or engine descriptions that state another resolution or batch than the package was compiled
    for ran and returned wrong maps; the package's own metadata refuses them in one line."""
    swapped = tmp_path / "swapped"
    shutil.copytree(folder, swapped)
    description = json.loads((swapped / ENGINE_FILE).read_text())
    description["packages"] = {"64x48": "fe2e_32x32.pt2", "32x32": "fe2e_64x48.pt2"}
    (swapped / ENGINE_FILE).write_text(json.dumps(description))
    with pytest.raises(
        ValueError, match="fe2e_32x32.pt2: compiled for resolution 32x32, but its description states 64x48"
    ):
        AOTIEngine(swapped)
    batch = tmp_path / "batch"
    shutil.copytree(folder, batch)
    description = json.loads((batch / ENGINE_FILE).read_text()) | {"batch": 1}
    (batch / ENGINE_FILE).write_text(json.dumps(description))
    with pytest.raises(ValueError, match="compiled for batch 2, but its description states 1"):
        AOTIEngine(batch, processing_res=SMALL)
    lone = tmp_path / "lone.pt2"
    shutil.copy(fp8_package, lone)
    sidecar = json.loads(sidecar_path(fp8_package).read_text())
    shutil.copy(fp8_package.parent / sidecar["scales"], tmp_path / "lone.pt2.fp8_scales.json")
    sidecar_path(lone).write_text(json.dumps(sidecar | {"resolution": "64x48", "scales": "lone.pt2.fp8_scales.json"}))
    images = tmp_path / "images"
    images.mkdir()
    scene_image(64, 48, seed=3).save(images / "a.png")
    args = ["infer", str(images), "-o", str(tmp_path / "out"), "--engine", str(lone), "--processing-res", "64x48"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "lone.pt2: compiled for resolution 32x32, but its description states 64x48" in result.output
    assert "rebuild" in result.output and not list((tmp_path / "out").rglob("*.npy"))


def test_a_package_without_metadata_is_refused(stripped, tmp_path, monkeypatch):
    """Packages built before they recorded their resolution cannot be checked: rebuild (one compile, 32x32)."""
    monkeypatch.setattr(build_module, "package_metadata", lambda size, batch, precision: {})
    old = tmp_path / "old.pt2"
    build_aoti(stripped, old, resolution=SMALL, precision="fp32")
    with pytest.raises(ValueError, match="old.pt2: the package does not record the resolution.*rebuild it"):
        AOTIEngine(old)


def test_fp8_package_vs_bf16(fp8_package, stripped):
    """An FP8 .pt2 (fake quantisation on CPU, scales copied next to it) vs the stripped BF16 model."""
    sidecar = json.loads(sidecar_path(fp8_package).read_text())
    assert sidecar["scales"] == "fp8.pt2.fp8_scales.json" and (fp8_package.parent / sidecar["scales"]).is_file()
    image = scene_image(32, 32, seed=5)
    engine = load_engine(fp8_package, processing_res=SMALL)
    assert engine.name == "aoti-fp8"
    fp8 = engine.predict(image)
    bf16 = StrippedEngine(stripped, processing_res=SMALL)
    bf16.model.dit.cast_weights(torch.bfloat16)
    ref = bf16.predict(image)
    depth_rel = np.linalg.norm(fp8.depth - ref.depth) / np.linalg.norm(ref.depth)
    angle = np.degrees(np.arccos(np.clip((fp8.normals * ref.normals).sum(-1), -1, 1))).mean()
    print(f"FP8 (.pt2, fake quant) vs BF16: depth relative L2 {depth_rel:.4f}, normals mean angle {angle:.2f} deg")
    assert 0 < depth_rel < 0.2 and 0 < angle < 20
    with pytest.raises(ValueError, match=r"processed at 1024x768 .*built for 32x32 only"):
        AOTIEngine(fp8_package).predict(image)  # a lone .pt2: only images of its size (or processing_res)


def test_sidecar_and_mismatches(fp8_package, tmp_path):
    sidecar = json.loads(sidecar_path(fp8_package).read_text())
    assert sidecar["resolution"] == "32x32" and sidecar["device"]["kind"] == "cpu"
    assert sidecar["torch"] == torch.__version__ and sidecar["package_bytes"] == fp8_package.stat().st_size
    with pytest.raises(ValueError, match="built for 32x32"):
        AOTIEngine(fp8_package, processing_res=(64, 48))
    copy = tmp_path / "copy.pt2"
    copy.write_bytes(fp8_package.read_bytes())
    with pytest.raises(FileNotFoundError, match="missing sidecar"):
        AOTIEngine(copy)
    sidecar_path(copy).write_text(json.dumps({**sidecar, "device": {"kind": "cuda", "name": "NVIDIA H100"}}))
    with pytest.raises(ValueError, match="built for NVIDIA H100"):
        AOTIEngine(copy)
    sidecar_path(copy).write_text(json.dumps({**sidecar, "torch": "2.0.0"}))
    with pytest.raises(ValueError, match="torch 2.0.0"):
        AOTIEngine(copy)
    old = {k: v for k, v in sidecar.items() if k not in ("weights_in_package", "stripped")}
    sidecar_path(copy).write_text(json.dumps(old))
    with pytest.raises(ValueError, match="older package with its weights inside"):
        AOTIEngine(copy)
    sidecar_path(copy).write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        AOTIEngine(copy)
    with pytest.raises(FileNotFoundError, match="engine not found"):
        AOTIEngine(tmp_path / "nothing.pt2")


def test_build_errors(stripped, folder, fp8_package, tmp_path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_aoti(stripped, fp8_package, resolution=SMALL, precision="fp32")
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_aoti(stripped, folder, resolution=[SMALL], precision="fp32")
    result = runner.invoke(app, ["build", str(stripped), "-o", str(folder), "--resolution", "32x32"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not an AOTInductor engine folder"):
        build_aoti(stripped, tmp_path / "mine", resolution=[SMALL], precision="fp32", overwrite=True)
    with pytest.raises(ValueError, match="needs --scales"):
        build_aoti(stripped, tmp_path / "x.pt2", resolution=SMALL, precision="fp8")
    with pytest.raises(ValueError, match="a .pt2 holds one resolution"):
        build_aoti(stripped, tmp_path / "x.pt2", resolution=[SMALL, LARGE], precision="fp32")
    with pytest.raises(ValueError, match="multiples of 16"):
        build_aoti(stripped, tmp_path / "x", resolution=[(40, 32)], precision="fp32")
    result = runner.invoke(app, ["build", str(stripped), "-o", str(tmp_path / "y.pt2"), "--backend", "tensorrt"])
    assert result.exit_code == 2 and "build-trt" in result.output
    text = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--out", "--backend", "--precision", "--scales", "--resolution", "--batch", "--device", "auto"):
        assert option in text


def test_folder_is_replaced_whole(stripped, tmp_path, monkeypatch):
    """Without compiling (a stand-in writes the packages): a failed build leaves the old folder, a good one
    replaces it whole, and no temporary folder stays behind."""
    calls = []

    def fake_compile(model, width, height, batch, device, path, precision):
        calls.append((width, height))
        if (width, height) == (48, 48):
            raise RuntimeError("compiler crashed")
        path.write_bytes(b"package")
        return 0.0

    monkeypatch.setattr(build_module, "_compile", fake_compile)
    out = tmp_path / "engine"
    build_aoti(stripped, out, resolution=[SMALL, LARGE], precision="fp32")
    (out / "stray.txt").write_text("from the old build")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RuntimeError, match="compiler crashed"):
        build_aoti(stripped, out, resolution=[SMALL, (48, 48)], precision="fp32", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before  # the old complete folder, untouched
    build_aoti(stripped, out, resolution=[SMALL], precision="fp32", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["aoti_engine.json", "fe2e_32x32.pt2"]  # the new one, whole
    assert json.loads((out / ENGINE_FILE).read_text())["resolutions"] == ["32x32"]
    assert [p.name for p in tmp_path.iterdir()] == ["engine"]
    with pytest.raises(RuntimeError):
        build_aoti(stripped, tmp_path / "new", resolution=[(48, 48)], precision="fp32")
    assert not (tmp_path / "new").exists() and [p.name for p in tmp_path.iterdir()] == ["engine"]
