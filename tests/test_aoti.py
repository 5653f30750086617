"""build (AOTInductor): engine folders of packages without weights, their description, the checks that tie a
package to its description, its stripped model, its device and torch, and FP8.

The compiled engines are the session's shared ones (``conftest.py``: FP32 batch 2 at 64x48 and 32x32, FP8 at
32x32); behaviours every engine shares (batches, sizes, precision, NaN, close) are in the conformance suite.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from conftest import LARGE, SMALL, scene_image
from typer.testing import CliRunner

import fe2e_deploy.compile.aoti_build as build_module
import fe2e_deploy.engines.aoti as aoti_module
from fe2e_deploy.artifacts.aoti import AotiEngineDescription
from fe2e_deploy.artifacts.contract import ContractError
from fe2e_deploy.artifacts.stripped import StrippedMeta
from fe2e_deploy.cli import app
from fe2e_deploy.compile.aoti_build import build_aoti
from fe2e_deploy.engines import engine_kind, load_engine
from fe2e_deploy.engines.aoti import AOTIEngine
from fe2e_deploy.engines.stripped import StrippedEngine
from fe2e_deploy.loading.stripped import load_stripped

pytestmark = pytest.mark.slow
runner = CliRunner()
FILE = AotiEngineDescription.FILE


def description(folder) -> dict:
    return json.loads((folder / FILE).read_text())


def edit(folder, tmp_path, **changes):
    """A copy of the engine folder whose description has ``changes``."""
    copy = tmp_path / f"copy{len(list(tmp_path.iterdir()))}"
    shutil.copytree(folder, copy)
    (copy / FILE).write_text(json.dumps(description(folder) | changes))
    return copy


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


def test_folder_packages_hold_no_weights(aoti_fp32, shared_stripped):
    read = AotiEngineDescription.read(aoti_fp32 / FILE)
    assert list(read.packages) == ["64x48", "32x32"] and read.batch == 2 and read.precision == "fp32"
    assert read.device.kind == "cpu" and read.torch == torch.__version__
    assert read.stripped.path == str(shared_stripped.resolve()) and read.stripped.dtype == "float32"
    assert engine_kind(aoti_fp32) == "aoti"
    assert sorted(p.name for p in aoti_fp32.iterdir()) == [FILE, "fe2e_32x32.pt2", "fe2e_64x48.pt2"]
    assert not [p for p in aoti_fp32.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    for name in read.packages.values():
        assert weight_bytes_inside(aoti_fp32 / name, shared_stripped) == []
        print(f"{name}: {(aoti_fp32 / name).stat().st_size / 2**20:.2f} MiB (no weights)")
    print("compile seconds:", read.build_seconds)


def test_packages_record_what_they_are_compiled_for(aoti_fp32, aoti_fp8):
    def metadata(package):
        return torch._inductor.aoti_load_package(str(package)).get_metadata()

    for size in ("64x48", "32x32"):
        got = metadata(aoti_fp32 / f"fe2e_{size}.pt2")
        assert (got["fe2e_resolution"], got["fe2e_batch"], got["fe2e_precision"]) == (size, "2", "fp32")
    got = metadata(aoti_fp8 / "fe2e_32x32.pt2")
    assert (got["fe2e_resolution"], got["fe2e_batch"], got["fe2e_precision"]) == ("32x32", "1", "fp8")


def test_a_package_its_description_does_not_match_is_refused(aoti_fp32, aoti_fp8, tmp_path):
    """Descriptions that state another resolution or batch than the package was compiled for ran and returned
    wrong maps; the package's own metadata refuses them in one line."""
    swapped = edit(aoti_fp32, tmp_path, packages={"64x48": "fe2e_32x32.pt2", "32x32": "fe2e_64x48.pt2"})
    with pytest.raises(ValueError, match="fe2e_32x32.pt2: compiled for resolution 32x32, but its description states"):
        AOTIEngine(swapped)
    with pytest.raises(ValueError, match="compiled for batch 2, but its description states 1"):
        AOTIEngine(edit(aoti_fp32, tmp_path, batch=1))
    lone = edit(aoti_fp8, tmp_path, packages={"64x48": "fe2e_32x32.pt2"})
    images = tmp_path / "images"
    images.mkdir()
    scene_image(64, 48, seed=3).save(images / "a.png")
    args = ["infer", str(images), "-o", str(tmp_path / "out"), "--engine", str(lone), "--processing-res", "64x48"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "fe2e_32x32.pt2: compiled for resolution 32x32, but its description states 64x48" in result.output
    assert "rebuild" in result.output and not list((tmp_path / "out").rglob("*.npy"))


def test_stripped_folder_checks(aoti_fp32, shared_stripped, tmp_path, monkeypatch):
    moved = tmp_path / "moved"
    shutil.copytree(shared_stripped, moved)
    AOTIEngine(aoti_fp32, processing_res=SMALL, stripped=moved).close()  # same sources elsewhere: accepted
    meta = json.loads((moved / StrippedMeta.FILE).read_text())
    meta["sources"]["dit"]["sha256"] = "0" * 64
    (moved / StrippedMeta.FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="not the stripped model .* was built from"):
        AOTIEngine(aoti_fp32, stripped=moved)
    meta = json.loads((shared_stripped / StrippedMeta.FILE).read_text()) | {"dtype": "bfloat16"}
    (moved / StrippedMeta.FILE).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="other sources or dtype"):
        AOTIEngine(aoti_fp32, stripped=moved)
    gone = description(aoti_fp32)["stripped"] | {"path": str(tmp_path / "gone")}
    copy = edit(aoti_fp32, tmp_path, stripped=gone)
    with pytest.raises(FileNotFoundError, match="gone: stripped model folder not found.*holds no weights"):
        load_engine(copy)
    AOTIEngine(copy, stripped=shared_stripped).close()  # the explicit folder instead of the recorded one
    (copy / "fe2e_32x32.pt2").unlink()
    with pytest.raises(FileNotFoundError, match="fe2e_32x32.pt2: package missing"):
        AOTIEngine(copy, stripped=shared_stripped)
    keep = aoti_module.graph_constants
    monkeypatch.setattr(aoti_module, "graph_constants", lambda g: {k: v for k, v in keep(g).items() if k != "step.cos"})
    with pytest.raises(ValueError, match="needs constant 'step.cos'"):
        AOTIEngine(aoti_fp32, processing_res=SMALL)


def test_description_is_a_checked_contract(aoti_fp32, tmp_path):
    with pytest.raises(ValueError, match="built for NVIDIA H100"):
        AOTIEngine(
            edit(aoti_fp32, tmp_path, device={"kind": "cuda", "name": "NVIDIA H100", "compute_capability": "9.0"})
        )
    with pytest.raises(ValueError, match="torch 2.0.0"):
        AOTIEngine(edit(aoti_fp32, tmp_path, torch="2.0.0"))
    with pytest.raises(ContractError, match="field 'batch' is 'two', not an integer.*fe2e-deploy build"):
        AOTIEngine(edit(aoti_fp32, tmp_path, batch="two"))
    with pytest.raises(ContractError, match="package '../x.pt2' of 32x32 is not a file name"):
        AOTIEngine(edit(aoti_fp32, tmp_path, packages={"32x32": "../x.pt2"}))
    with pytest.raises(ContractError, match="version 7, this fe2e-deploy reads version 2"):
        AOTIEngine(edit(aoti_fp32, tmp_path, format_version=7))
    broken = edit(aoti_fp32, tmp_path)
    (broken / FILE).write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        AOTIEngine(broken)
    (broken / "fe2e_64x48.pt2").write_bytes(b"not a zip")
    (broken / FILE).write_text(json.dumps(description(aoti_fp32)))
    with pytest.raises(ValueError, match="fe2e_64x48.pt2: not an AOTInductor package"):
        AOTIEngine(broken)


def test_older_artifacts_are_read_or_refused_with_how_to_rebuild(aoti_fp32, tmp_path):
    """An engine folder of fe2e-deploy 0.1 (no version, three more keys) is read; a one-package .pt2 is refused."""
    old = description(aoti_fp32)
    del old["format_version"]
    old |= {"backend": "aoti", "weights_in_package": False, "resolutions": list(old["packages"])}
    folder = tmp_path / "old"
    shutil.copytree(aoti_fp32, folder)
    (folder / FILE).write_text(json.dumps(old))
    with load_engine(folder, processing_res=SMALL) as engine:
        assert engine.sizes() == [LARGE, SMALL]
    (folder / FILE).write_text(json.dumps(old | {"weights_in_package": True}))
    with pytest.raises(ContractError, match="version None.*fe2e-deploy build STRIPPED -o ENGINE_FOLDER"):
        load_engine(folder)
    package = tmp_path / "fe2e.pt2"
    shutil.copy(aoti_fp32 / "fe2e_32x32.pt2", package)
    (tmp_path / "fe2e.pt2.json").write_text(json.dumps({"format": "fe2e-aoti-package", "resolution": "32x32"}))
    with pytest.raises(ValueError, match="a single AOTInductor package .*engines are folders now.*-o ENGINE_FOLDER"):
        engine_kind(package)


def test_fp8_engine_vs_bf16(aoti_fp8, shared_stripped):
    """The FP8 folder (fake quantisation on CPU, scales copied into the folder) vs the stripped BF16 model."""
    read = AotiEngineDescription.read(aoti_fp8 / FILE)
    assert read.scales == "fp8_scales.json" and (aoti_fp8 / read.scales).is_file()
    image = scene_image(32, 32, seed=5)
    with load_engine(aoti_fp8, processing_res=SMALL) as engine:
        assert engine.name == "aoti-fp8"
        fp8 = engine.predict(image)
    with StrippedEngine(shared_stripped, processing_res=SMALL, dtype="bf16") as bf16:
        ref = bf16.predict(image)
    depth_rel = np.linalg.norm(fp8.depth - ref.depth) / np.linalg.norm(ref.depth)
    angle = np.degrees(np.arccos(np.clip((fp8.normals * ref.normals).sum(-1), -1, 1))).mean()
    print(f"FP8 (AOTI, fake quant) vs BF16: depth relative L2 {depth_rel:.4f}, normals mean angle {angle:.2f} deg")
    assert 0 < depth_rel < 0.2 and 0 < angle < 20


def test_a_package_without_metadata_is_refused(aoti_fp32, monkeypatch):
    """Packages built before they recorded their resolution cannot be checked: rebuild. (Their runner answers
    no metadata; a stand-in runner of a real package does the same, without a compile.)"""
    load = torch._inductor.aoti_load_package

    class Older:
        def __init__(self, runner):
            self.runner = runner

        def get_metadata(self):
            return {}

        def __getattr__(self, name):
            return getattr(self.runner, name)

    monkeypatch.setattr(torch._inductor, "aoti_load_package", lambda *a, **k: Older(load(*a, **k)))
    with pytest.raises(ValueError, match="fe2e_64x48.pt2: the package does not record the resolution.*rebuild it"):
        AOTIEngine(aoti_fp32)


def test_build_errors(shared_stripped, aoti_fp32, tmp_path):
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_aoti(shared_stripped, aoti_fp32, resolutions=[SMALL], precision="fp32")
    result = runner.invoke(app, ["build", str(shared_stripped), "-o", str(aoti_fp32), "--resolution", "32x32"])
    assert result.exit_code == 2 and "--overwrite" in result.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not an AOTInductor engine folder"):
        build_aoti(shared_stripped, tmp_path / "mine", resolutions=[SMALL], precision="fp32", overwrite=True)
    with pytest.raises(ValueError, match="needs --scales"):
        build_aoti(shared_stripped, tmp_path / "x", resolutions=[SMALL], precision="fp8")
    with pytest.raises(ValueError, match="give a folder"):
        build_aoti(shared_stripped, tmp_path / "x.pt2", resolutions=[SMALL], precision="fp32")
    with pytest.raises(ValueError, match="multiples of 16"):
        build_aoti(shared_stripped, tmp_path / "x", resolutions=[(40, 32)], precision="fp32")
    result = runner.invoke(app, ["build", str(shared_stripped), "-o", str(tmp_path / "y"), "--backend", "tensorrt"])
    assert result.exit_code == 2 and "No such option: --backend" in result.output  # the one-value option is gone
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    text = runner.invoke(app, ["build", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--out", "--precision", "--scales", "--resolution", "--batch", "--device", "auto", "build-trt"):
        assert option in text


def test_folder_is_replaced_whole(shared_stripped, tmp_path, monkeypatch):
    """Without compiling (a stand-in writes the packages): a failed build leaves the old folder, a good one
    replaces it whole, and no temporary folder stays behind; the CLI writes the same folder."""
    calls = []

    def fake_compile(model, size, batch, device, path, precision):
        calls.append(size)
        if size == (48, 48):
            raise RuntimeError("compiler crashed")
        path.write_bytes(b"package")
        return 0.0

    monkeypatch.setattr(build_module, "_compile", fake_compile)
    out = tmp_path / "engine"
    args = ["build", str(shared_stripped), "-o", str(out), "--precision", "fp32", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--resolution", "32x32", "--resolution", "64x48", "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert "AOTInductor engine for 32x32, 64x48 (batch 2, cpu)" in result.output
    assert description(out)["packages"] == {"32x32": "fe2e_32x32.pt2", "64x48": "fe2e_64x48.pt2"}
    (out / "stray.txt").write_text("from the old build")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RuntimeError, match="compiler crashed"):
        build_aoti(shared_stripped, out, resolutions=[SMALL, (48, 48)], precision="fp32", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before  # the old complete folder, untouched
    build_aoti(shared_stripped, out, resolutions=[SMALL], precision="fp32", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [FILE, "fe2e_32x32.pt2"]  # the new one, whole
    assert list(description(out)["packages"]) == ["32x32"]
    assert [p.name for p in tmp_path.iterdir()] == ["engine"]
    with pytest.raises(RuntimeError):
        build_aoti(shared_stripped, tmp_path / "new", resolutions=[(48, 48)], precision="fp32")
    assert not (tmp_path / "new").exists() and [p.name for p in tmp_path.iterdir()] == ["engine"]
