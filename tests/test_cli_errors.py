"""Bad inputs to every command: one line ``error: ...`` naming the file or option, exit code 2, early.

"Early" is checked by closing the load gate (:func:`no_model`): a command that reaches a model before
refusing a bad input or output ends in :class:`~fe2e_deploy.load_gate.LoadBeforeChecks` instead.
Unreadable images are skipped and reported (exit code 1) where a command runs over many images.
"""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import scene_image, strip_tiny
from typer.main import get_command
from typer.testing import CliRunner

from fe2e_deploy import load_gate
from fe2e_deploy.cli import app

runner = CliRunner()
RES = "64x48"


@pytest.fixture()
def no_model():
    """Every model load (weights, sessions, packages, plans, generated weights) raises while a test runs: the one
    gate of :mod:`fe2e_deploy.load_gate`, which every loader passes (checked structurally in test_architecture)."""
    with load_gate.closed():
        yield


def one_line_error(result, *needles: str) -> str:
    """The command failed with exit code 2 and exactly one ``error:`` line holding every needle; no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2, result.output
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    assert "Traceback" not in result.output
    return errors[0]


def listing(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# -- fixtures: a stripped model, its ONNX export, images, a dataset, training data (module scope) --------


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("cli_errors")


@pytest.fixture(scope="module")
def stripped(tiny_dir, tiny_config, work):
    return strip_tiny(tiny_dir, tiny_config, work / "stripped")


@pytest.fixture(scope="module")
def export_dir(stripped, work):
    from fe2e_deploy.compile.onnx_export import export_onnx

    export_onnx(stripped, work / "export", resolutions=((64, 48),), graphs=("fe2e",), progress=False)
    return work / "export"


@pytest.fixture(scope="module")
def images(work):
    folder = work / "images"
    folder.mkdir()
    scene_image(64, 48, seed=1).save(folder / "a.png")
    scene_image(64, 48, seed=2).save(folder / "c.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


@pytest.fixture(scope="module")
def good_images(work):
    folder = work / "good_images"
    folder.mkdir()
    scene_image(64, 48, seed=1).save(folder / "a.png")
    return folder


@pytest.fixture(scope="module")
def dataset(work):
    """Generic evaluation layout: im0 and im2 fine, im1's RGB file is garbage."""
    root = work / "dataset"
    for sub in ("rgb", "depth", "normals"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    normals = np.zeros((48, 64, 3), np.float32)
    normals[..., 2] = 1
    for i in range(3):
        scene_image(64, 48, seed=i).save(root / "rgb" / f"im{i}.png")
        np.save(root / "depth" / f"im{i}.npy", rng.uniform(1, 5, (48, 64)).astype(np.float32))
        np.save(root / "normals" / f"im{i}.npy", normals)
    (root / "rgb" / "im1.png").write_bytes(b"garbage, not a PNG")
    return root


@pytest.fixture(scope="module")
def train_data(work):
    from fe2e_deploy.scenes import synthetic_sample
    from fe2e_deploy.train.data import write_sample

    root = work / "train"
    for i in range(2):
        s = synthetic_sample(64, 48, seed=i)
        write_sample(root, f"scene{i}", s.rgb, s.depth, s.normals)
    return root


# -- 1. an unreadable image: skipped and reported over many images, one line for a single one -----------


def test_unreadable_image_in_evaluate_is_skipped_and_reported(stripped, dataset, tmp_path):
    out = tmp_path / "report.json"
    args = ["evaluate", "--engine", str(stripped), "--dataset", str(dataset), "--task", "depth", "--json", str(out)]
    result = runner.invoke(app, [*args, "--processing-res", RES, "--no-progress"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    assert "im1.png" in result.output and "unreadable" in result.output
    assert "abs_rel" in result.output  # the metrics of the readable images are printed
    report = json.loads(out.read_text())
    assert report["num_images"] == 2 and [r["name"] for r in report["per_image"]] == ["im0.png", "im2.png"]
    assert [r["name"] for r in report["unreadable"]] == ["im1.png"] and "im1.png" in report["unreadable"][0]["reason"]


def test_unreadable_image_in_compare_is_skipped_and_reported(stripped, images, tmp_path):
    out = tmp_path / "cmp.json"
    args = ["compare", str(images), "--engine", str(stripped), "--engine", str(stripped), "--json", str(out)]
    result = runner.invoke(app, [*args, "--processing-res", RES, "--no-progress"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    assert "broken.png" in result.output and "unreadable" in result.output and "worst" in result.output
    report = json.loads(out.read_text())
    assert report["num_images"] == 2 and [r["name"] for r in report["per_image"]] == ["a.png", "c.png"]
    assert [r["name"] for r in report["unreadable"]] == ["broken.png"]


def test_unreadable_image_in_calibrate_is_skipped_and_reported(stripped, images, tmp_path):
    out = tmp_path / "scales.json"
    args = ["calibrate", str(stripped), "--images", str(images), "-o", str(out), "--processing-res", RES]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1, result.output
    assert "broken.png" in result.output and "unreadable" in result.output
    document = json.loads(out.read_text())
    assert document["num_images"] == 2 and all("broken" not in name for name in document["images"])
    assert [pathlib.Path(r["image"]).name for r in document["unreadable_images"]] == ["broken.png"]


def test_benchmark_unreadable_image_is_one_line(stripped, images, no_model):
    args = ["benchmark", "--engine", str(stripped), "--image", str(images / "broken.png"), "--resolution", RES]
    one_line_error(runner.invoke(app, args), "broken.png", "unreadable image")


def test_train_lora_unreadable_image_is_named_before_loading(train_data, tmp_path, no_model):
    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    (data / "rgb" / "scene1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    args = ["train-lora", str(data), "-o", str(tmp_path / "out"), "--resolution", RES, "--steps", "1"]
    one_line_error(runner.invoke(app, [*args, "--no-progress", "--device", "cpu"]), "scene1.png", "unreadable image")
    assert not (tmp_path / "out").exists()


# -- 1. outputs: a file where a folder goes and vice versa, below a file, not writable; before any model --


def _output_cases(tmp, stripped, export_dir, images, dataset):
    """(command line, needle) for each bad output; ``tmp`` holds ``afile`` (a file) and ``adir`` (a folder)."""
    afile, adir = tmp / "afile", tmp / "adir"
    evaluate = ["evaluate", "--engine", str(stripped), "--dataset", str(dataset), "--task", "depth"]
    compare = ["compare", str(images), "--engine", str(stripped), "--engine", str(stripped)]
    bench = ["benchmark", "--engine", str(stripped), "--resolution", RES, "--runs", "1", "--warmup", "0"]
    synth = ["benchmark", "--synthetic-weights", "tiny", "--engines", "stripped-bf16", "--resolution", RES]
    graph = str(export_dir / "fe2e_64x48.onnx")
    return {
        "strip -o file": (["strip", "-o", str(afile)], "afile: is a file"),
        "strip -o file --overwrite": (["strip", "-o", str(afile), "--overwrite"], "afile: is a file"),
        "strip -o below a file": (["strip", "-o", str(afile / "x")], "afile: is a file"),
        "export -o file": (["export", str(stripped), "-o", str(afile)], "afile: is a file"),
        "export -o file --overwrite": (["export", str(stripped), "-o", str(afile), "--overwrite"], "afile: is a file"),
        "export -o below a file": (["export", str(stripped), "-o", str(afile / "x")], "afile: is a file"),
        "build -o file": (["build", str(stripped), "-o", str(afile), "--overwrite"], "afile: is a file"),
        "build -o below a file": (["build", str(stripped), "-o", str(afile / "x")], "afile: is a file"),
        "calibrate -o folder": (["calibrate", str(stripped), "-o", str(adir)], "adir: is a folder"),
        "calibrate -o folder --overwrite": (
            ["calibrate", str(stripped), "-o", str(adir), "--overwrite"],
            "adir: is a folder",
        ),
        "calibrate -o below a file": (["calibrate", str(stripped), "-o", str(afile / "s.json")], "afile: is a file"),
        "evaluate --json folder": ([*evaluate, "--json", str(adir)], "adir: is a folder"),
        "evaluate --json folder --overwrite": ([*evaluate, "--json", str(adir), "--overwrite"], "adir: is a folder"),
        "evaluate --json below a file": ([*evaluate, "--json", str(afile / "r.json")], "afile: is a file"),
        "compare --json folder": ([*compare, "--json", str(adir), "--overwrite"], "adir: is a folder"),
        "compare --json below a file": ([*compare, "--json", str(afile / "r.json")], "afile: is a file"),
        "benchmark --json folder": ([*bench, "--json", str(adir), "--overwrite"], "adir: is a folder"),
        "benchmark --json below a file": ([*bench, "--json", str(afile / "r.json")], "afile: is a file"),
        "benchmark --plot folder": ([*bench, "--plot", str(adir), "--overwrite"], "adir: is a folder"),
        "benchmark --plot below a file": ([*bench, "--plot", str(afile / "p.png")], "afile: is a file"),
        "benchmark synthetic --json folder": ([*synth, "--json", str(adir), "--overwrite"], "adir: is a folder"),
        "quickstart --work-dir file": (
            ["quickstart", str(images), "-o", str(tmp / "q"), "--work-dir", str(afile)],
            "afile: is a file",
        ),
        "quickstart -o file": (["quickstart", str(images), "-o", str(afile), "--work-dir", str(tmp / "w")], "afile"),
        "build-trt -o folder": (["build-trt", graph, "-o", str(adir), "--overwrite"], "adir: is a folder"),
        "build-trt --timing-cache folder": (
            ["build-trt", graph, "-o", str(tmp / "x.plan"), "--timing-cache", str(adir)],
            "adir: is a folder",
        ),
    }


OUTPUT_CASES = list(_output_cases(pathlib.Path("t"), *(pathlib.Path("p"),) * 4))


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_bad_output_path_is_refused_before_loading(case, stripped, export_dir, images, dataset, tmp_path, no_model):
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "adir").mkdir()
    (tmp_path / "d.pt2").mkdir()
    args, needle = _output_cases(tmp_path, stripped, export_dir, images, dataset)[case]
    before = listing(tmp_path)
    one_line_error(runner.invoke(app, [*args, *_progress(args)]), needle)
    assert listing(tmp_path) == before and (tmp_path / "afile").read_text() == "keep me"  # nothing written


def _progress(args: list[str]) -> list[str]:
    """Commands with a progress bar get --no-progress."""
    return ["--no-progress"] if args[0] in ("strip", "export", "calibrate", "evaluate", "compare", "quickstart") else []


UNWRITABLE = {
    "strip -o": lambda d, s, e, i, ds: ["strip", "-o", str(d / "out"), "--no-progress"],
    "export -o": lambda d, s, e, i, ds: ["export", str(s), "-o", str(d / "out"), "--no-progress"],
    "build -o": lambda d, s, e, i, ds: ["build", str(s), "-o", str(d / "x.pt2")],
    "build -o folder": lambda d, s, e, i, ds: ["build", str(s), "-o", str(d / "engine")],
    "calibrate -o": lambda d, s, e, i, ds: ["calibrate", str(s), "-o", str(d / "s.json"), "--no-progress"],
    "evaluate --json": lambda d, s, e, i, ds: [
        *("evaluate", "--engine", str(s), "--dataset", str(ds), "--task", "depth"),
        *("--json", str(d / "r.json"), "--no-progress"),
    ],
    "compare --json": lambda d, s, e, i, ds: [
        *("compare", str(i), "--engine", str(s), "--engine", str(s), "--json", str(d / "r.json"), "--no-progress"),
    ],
    "benchmark --json": lambda d, s, e, i, ds: ["benchmark", "--engine", str(s), "--json", str(d / "r.json")],
    "benchmark --plot": lambda d, s, e, i, ds: ["benchmark", "--engine", str(s), "--plot", str(d / "p.png")],
    "quickstart --work-dir": lambda d, s, e, i, ds: [
        *("quickstart", str(i), "-o", str(d.parent / "q"), "--work-dir", str(d / "w"), "--no-progress"),
    ],
    "build-trt -o": lambda d, s, e, i, ds: ["build-trt", str(e / "fe2e_64x48.onnx"), "-o", str(d / "x.plan")],
}


@pytest.mark.parametrize("case", list(UNWRITABLE))
def test_unwritable_output_is_refused_before_loading(
    case, stripped, export_dir, images, dataset, tmp_path, no_model, monkeypatch
):
    """A folder nothing can be created in (EACCES at os.open/os.mkdir, as for a read-only folder of another user)."""
    locked = tmp_path / "locked"
    locked.mkdir()

    def refusing(real):
        def call(path, *args, **kwargs):
            if pathlib.Path(os.fsdecode(path)).resolve().is_relative_to(locked.resolve()):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fsdecode(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "open", refusing(os.open))
    monkeypatch.setattr(os, "mkdir", refusing(os.mkdir))
    args = UNWRITABLE[case](locked, stripped, export_dir, images, dataset)
    line = one_line_error(runner.invoke(app, args), "locked", "Permission denied")
    assert "no permission" in line
    assert listing(locked) == []


# -- 1. --device cuda without a GPU: the same line from every command that takes --device, before loading --


def _device_cases(tmp, stripped, export_dir, images, dataset, train_data, tiny_dir):
    model = [
        *("--model-config", str(tiny_dir / "model_config.json"), "--dit", str(tiny_dir / "dit.safetensors")),
        *("--vae", str(tiny_dir / "vae.safetensors"), "--prompt-embedding", str(tiny_dir / "empty_prompt.npz")),
    ]
    return {
        "infer": ["infer", str(images), "-o", str(tmp / "o")],
        "evaluate": ["evaluate", "--engine", str(stripped), "--dataset", str(dataset), "--task", "depth"],
        "compare": ["compare", str(images), "--engine", str(stripped), "--engine", str(stripped)],
        "calibrate": ["calibrate", str(stripped), "-o", str(tmp / "s.json")],
        "benchmark": ["benchmark", "--engine", str(stripped)],
        "benchmark --synthetic-weights": ["benchmark", "--synthetic-weights", "tiny"],
        "build": ["build", str(stripped), "-o", str(tmp / "x")],
        "train-lora": ["train-lora", str(train_data), "-o", str(tmp / "t"), *model],
        "export": ["export", str(stripped), "-o", str(tmp / "e"), "--check"],
        "demo": ["demo", "--engine", str(stripped), "--port", "7860"],
    }


def test_every_command_with_device_is_covered():
    commands = get_command(app).commands
    with_device = {name for name, command in commands.items() if any(p.name == "device" for p in command.params)}
    assert with_device == {args[0] for args in _device_cases(*(pathlib.Path("p"),) * 7).values()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
@pytest.mark.parametrize("case", list(_device_cases(*(pathlib.Path("p"),) * 7)))
def test_device_cuda_without_gpu(case, stripped, export_dir, images, dataset, train_data, tiny_dir, tmp_path, no_model):
    args = _device_cases(tmp_path, stripped, export_dir, images, dataset, train_data, tiny_dir)[case]
    result = runner.invoke(app, [*args, "--device", "cuda"])
    line = one_line_error(result)
    assert line.startswith("error: device 'cuda': no CUDA GPU is visible"), line
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # nothing written


# -- 1. corrupt artifacts: one line naming the file ------------------------------------------------------


def _aoti_description(stripped: pathlib.Path) -> dict:
    """A valid ``aoti_engine.json`` for one package at 64x48 built from ``stripped``."""
    meta = json.loads((stripped / "stripped.json").read_text())
    return {
        "format": "fe2e-aoti-engine",
        "format_version": 2,
        "fe2e_deploy": "0.1.0",
        "torch": torch.__version__,
        "precision": "fp32",
        "batch": 1,
        "device": {"kind": "cpu", "name": "cpu", "compute_capability": None},
        "stripped": {"path": str(stripped.resolve()), "sources": meta["sources"], "dtype": meta["dtype"]},
        "packages": {RES: "fe2e_64x48.pt2"},
        "scales": None,
        "fp8_gemm": None,
        "build_seconds": {RES: 1.0},
        "package_bytes": {RES: 140},
    }


def _edit_json(path: pathlib.Path, edit) -> None:
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _without(key):
    return lambda document: {k: v for k, v in document.items() if k != key}


def _make_artifact(case: str, tmp: pathlib.Path, stripped, export_dir) -> tuple[pathlib.Path, str]:
    """Build the corrupt artifact of ``case`` under ``tmp``; returns (engine path, the file the error names)."""
    if case.startswith("export"):
        folder = tmp / "export"
        shutil.copytree(export_dir, folder)
        graph, manifest = folder / "fe2e_64x48.onnx", folder / "manifest.json"
        if case == "export: truncated graph":
            graph.write_bytes(graph.read_bytes()[:100])
            return folder, "fe2e_64x48.onnx"
        if case == "export: garbage graph file":
            graph.write_bytes(b"garbage" * 10)
            return graph, "fe2e_64x48.onnx"
        if case == "export: truncated weights.bin":
            weights = folder / "weights.bin"
            weights.write_bytes(weights.read_bytes()[:1000])
            return folder, "weights.bin"
        if case == "export: manifest without graphs":
            _edit_json(manifest, _without("graphs"))
        elif case == "export: manifest without batch":
            _edit_json(manifest, _without("batch"))
        elif case == "export: manifest a list":
            manifest.write_text("[1, 2]")
        elif case == "export: graph entry without file":
            _edit_json(manifest, lambda m: m | {"graphs": {k: _without("file")(e) for k, e in m["graphs"].items()}})
        return folder, "manifest.json"
    if case.startswith("stripped"):
        folder = tmp / "stripped"
        shutil.copytree(stripped, folder)
        meta = folder / "stripped.json"
        if case == "stripped: meta without model_config":
            _edit_json(meta, _without("model_config"))
        elif case == "stripped: meta a list":
            meta.write_text("[]")
        elif case == "stripped: meta without txt_len":
            _edit_json(meta, _without("txt_len"))
        elif case == "stripped: truncated weights":
            weights = folder / "stripped_dit.safetensors"
            weights.write_bytes(weights.read_bytes()[:5000])
            return folder, "stripped_dit.safetensors"
        return folder, "stripped.json"
    if case == "pt2: an older single package":
        package = tmp / "g.pt2"
        package.write_bytes(b"garbage" * 20)
        (tmp / "g.pt2.json").write_text(json.dumps({"format": "fe2e-aoti-package", "resolution": RES}))
        return package, "g.pt2: a single AOTInductor package"
    folder = tmp / "engine"
    folder.mkdir()
    (folder / "fe2e_64x48.pt2").write_bytes(b"garbage" * 20)
    edits = {
        "aoti folder: garbage package": lambda d: d,
        "aoti folder: description without packages": _without("packages"),
        "aoti folder: description without precision": _without("precision"),
        "aoti folder: description without batch": _without("batch"),
        "aoti folder: stripped without sources": lambda d: d | {"stripped": {"path": d["stripped"]["path"]}},
        "aoti folder: device a string": lambda d: d | {"device": "cpu"},
        "aoti folder: description a list": lambda d: [d],
        "aoti folder: description not JSON": None,
    }
    edit = edits[case]
    description = _aoti_description(stripped)
    (folder / "aoti_engine.json").write_text("{oops" if edit is None else json.dumps(edit(description)))
    return folder, "fe2e_64x48.pt2" if case == "aoti folder: garbage package" else "aoti_engine.json"


ARTIFACT_CASES = [
    "export: truncated graph",
    "export: garbage graph file",
    "export: truncated weights.bin",
    "export: manifest without graphs",
    "export: manifest without batch",
    "export: manifest a list",
    "export: graph entry without file",
    "stripped: meta without model_config",
    "stripped: meta without txt_len",
    "stripped: meta a list",
    "stripped: truncated weights",
    "aoti folder: garbage package",
    "aoti folder: description without packages",
    "aoti folder: description without precision",
    "aoti folder: description without batch",
    "aoti folder: stripped without sources",
    "aoti folder: device a string",
    "aoti folder: description a list",
    "aoti folder: description not JSON",
    "pt2: an older single package",
]


@pytest.mark.parametrize("case", ARTIFACT_CASES)
def test_corrupt_artifact_is_one_line_naming_the_file(case, stripped, export_dir, good_images, tmp_path):
    engine, name = _make_artifact(case, tmp_path, stripped, export_dir)
    args = ["infer", str(good_images), "-o", str(tmp_path / "out"), "--engine", str(engine), "--processing-res", RES]
    one_line_error(runner.invoke(app, [*args, "--no-progress"]), name)
    assert not list((tmp_path / "out").rglob("*.npy"))


def test_build_trt_refuses_a_garbage_graph(export_dir, tmp_path):
    folder = tmp_path / "export"
    shutil.copytree(export_dir, folder)
    (folder / "fe2e_64x48.onnx").write_bytes(b"garbage" * 10)
    result = runner.invoke(app, ["build-trt", str(folder / "fe2e_64x48.onnx"), "-o", str(tmp_path / "x.plan")])
    one_line_error(result, "fe2e_64x48.onnx", "not a readable ONNX graph")


def test_tensorrt_sidecar_missing_keys_is_one_line(tmp_path, good_images):
    plan = tmp_path / "x.plan"
    plan.write_bytes(b"plan")
    gpu = {"name": "NVIDIA H100", "compute_capability": "9.0"}
    full = {"format": "fe2e-tensorrt-plan", "format_version": 2, "fe2e_deploy": "0.1.0", "tensorrt": "10.0", "gpu": gpu}
    full |= {"precision": "bf16", "graph": "fe2e", "resolution": RES, "batch": {"min": 1, "opt": 1, "max": 1}}
    full |= {"source": {"onnx": "e/fe2e_64x48.onnx", "precision": "bf16"}, "weight_streaming": False}
    full |= {"builder_optimization_level": 3, "build_seconds": 1.0}
    for key in ("gpu", "precision", "resolution", "batch"):
        (tmp_path / "x.plan.json").write_text(json.dumps(_without(key)(full)))
        args = ["infer", str(good_images), "-o", str(tmp_path / "out"), "--engine", str(plan), "--no-progress"]
        one_line_error(runner.invoke(app, args), "x.plan.json", key, "fe2e-deploy build-trt")


SCALES_CASES = {
    "layers a list": {"format": "fe2e-fp8-scales", "format_version": 1, "layers": [1]},
    "a layer a number": {"format": "fe2e-fp8-scales", "format_version": 1, "layers": {"a": 5}},
    "a list": [],
    "without stripped": {"format": "fe2e-fp8-scales", "format_version": 1, "layers": {}},
}


@pytest.mark.parametrize("command", ["build", "export"])
@pytest.mark.parametrize("case", list(SCALES_CASES))
def test_corrupt_scales_are_one_line(command, case, stripped, tmp_path, no_model):
    scales = tmp_path / "bad_scales.json"
    scales.write_text(json.dumps(SCALES_CASES[case]))
    out = tmp_path / ("engine" if command == "build" else "export")
    args = [command, str(stripped), "-o", str(out), "--precision", "fp8", "--scales", str(scales)]
    one_line_error(runner.invoke(app, [*args, "--resolution", RES]), "bad_scales.json")


@pytest.mark.parametrize("command", ["export", "build", "calibrate"])
def test_stripped_meta_missing_keys_is_one_line(command, stripped, tmp_path):
    folder = tmp_path / "stripped"
    shutil.copytree(stripped, folder)
    _edit_json(folder / "stripped.json", _without("model_config"))
    args = {
        "export": ["export", str(folder), "-o", str(tmp_path / "e"), "--resolution", RES, "--no-progress"],
        "build": ["build", str(folder), "-o", str(tmp_path / "x"), "--resolution", RES],
        "calibrate": ["calibrate", str(folder), "-o", str(tmp_path / "s.json"), "--no-progress", "--max-images", "1"],
    }[command]
    one_line_error(runner.invoke(app, args), "stripped.json", "model_config")


INDEX_CASES = {
    "not JSON": "{oops",
    "weight_map a list": json.dumps({"weight_map": [1, 2]}),
    "no weight_map": json.dumps({"metadata": {}}),
    "a shard name a number": json.dumps({"weight_map": {"a": 5}}),
    "a shard that is a folder": json.dumps({"weight_map": {"a": "."}}),
    "a missing shard": json.dumps({"weight_map": {"a": "nope.safetensors"}}),
    "empty weight_map": json.dumps({"weight_map": {}}),
    "a list": "[]",
}


@pytest.mark.parametrize("command", ["merge-lora", "strip", "infer"])
@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_malformed_index_json_is_one_line(command, case, tiny_dir, good_images, tmp_path):
    index = tmp_path / "dit.safetensors.index.json"
    index.write_text(INDEX_CASES[case])
    config = ["--model-config", str(tiny_dir / "model_config.json")]
    files = [
        *config,
        "--vae",
        str(tiny_dir / "vae.safetensors"),
        "--prompt-embedding",
        str(tiny_dir / "empty_prompt.npz"),
    ]
    args = {
        "merge-lora": ["merge-lora", "--dit", str(index), "--lora", str(tiny_dir / "lora.safetensors"), *config],
        "strip": ["strip", "--dit", str(index), *files],
        "infer": ["infer", str(good_images), "--dit", str(index), *files, "--processing-res", RES],
    }[command]
    args += ["-o", str(tmp_path / "out"), "--no-progress"]
    one_line_error(runner.invoke(app, args), "dit.safetensors.index.json" if "missing" not in case else "nope")


# -- 1. disk full during a write: one line, nothing partial left ----------------------------------------


@pytest.mark.parametrize("case", ["evaluate --json", "compare --json", "calibrate -o", "benchmark --json", "plot"])
def test_disk_full_is_one_line(case, stripped, dataset, good_images, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real_write_text = pathlib.Path.write_text

    def write_text(self, *args, **kwargs):
        if self.parent == out:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda *a, **k: write_text(out / "p", ""))
    res = ["--processing-res", RES, "--no-progress"]
    bench = ["benchmark", "--engine", str(stripped), "--resolution", RES, "--runs", "1", "--warmup", "0"]
    args = {
        "evaluate --json": [
            *("evaluate", "--engine", str(stripped), "--dataset", str(dataset), "--task", "depth"),
            *("--max-images", "1", "--json", str(out / "r.json"), *res),
        ],
        "compare --json": ["compare", str(good_images), "--engine", str(stripped), "--engine", str(stripped)]
        + ["--json", str(out / "r.json"), *res],
        "calibrate -o": ["calibrate", str(stripped), "-o", str(out / "s.json"), "--max-images", "1", *res],
        "benchmark --json": [*bench, "--json", str(out / "r.json")],
        "plot": [*bench, "--plot", str(out / "p.png")],
    }[case]
    line = one_line_error(runner.invoke(app, args), "No space left on device", str(out))
    assert "free some disk space" in line
    assert listing(out) == []  # no partial file, no temporary


def test_disk_full_in_a_library_write_is_one_line(tiny_dir, tmp_path, monkeypatch):
    """strip copies the VAE last; ENOSPC there reaches ``describe`` as one line (no traceback)."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("fe2e_deploy.strip.shutil.copyfile", full)
    files = [
        *("--model-config", str(tiny_dir / "model_config.json"), "--dit", str(tiny_dir / "dit.safetensors")),
        *("--vae", str(tiny_dir / "vae.safetensors"), "--prompt-embedding", str(tiny_dir / "empty_prompt.npz")),
    ]
    result = runner.invoke(app, ["strip", "-o", str(tmp_path / "s"), *files, "--no-progress"])
    one_line_error(result, "No space left on device", "free some disk space")


# -- 3. help texts ----------------------------------------------------------------------------------------


def _help(command: str) -> str:
    text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "1000", "TERMINAL_WIDTH": "1000"}).output
    return " ".join(text.replace("│", " ").split())


@pytest.mark.parametrize("command", ["infer", "evaluate", "compare", "benchmark"])
def test_engine_help_describes_every_engine_kind(command):
    from fe2e_deploy.cli.options import ENGINE_HELP

    text = _help(command)
    assert " ".join(ENGINE_HELP.split()) in text
    for kind in ("model folder", "stripped folder", "export folder", ".onnx", "AOTInductor engine folder", ".plan"):
        assert kind in ENGINE_HELP


@pytest.mark.parametrize("command", ["infer", "evaluate", "compare", "batch", "serve"])
def test_every_command_that_runs_images_bounds_the_processing_pixels(command):
    assert "--max-processing-pixels" in _help(command)


def test_build_trt_help_shows_the_install_line():
    assert "pip install 'fe2e-deploy[tensorrt]'" in _help("build-trt")


# -- 4. inputs checked before any model is loaded --------------------------------------------------------


def _input_cases(tmp, stripped, images, dataset):
    empty = tmp / "empty"
    return {
        "evaluate: no dataset": (
            ["evaluate", "--engine", str(stripped), "--dataset", str(tmp / "none"), "--task", "depth"],
            "none: dataset folder not found",
        ),
        "evaluate: no engine": (
            ["evaluate", "--engine", str(tmp / "none"), "--dataset", str(dataset), "--task", "depth"],
            "none: engine not found",
        ),
        "compare: no images": (
            ["compare", str(empty), "--engine", str(stripped), "--engine", str(stripped)],
            "empty: no .jpg/.jpeg/.png images found",
        ),
        "compare: a file for the folder": (
            ["compare", str(images / "a.png"), "--engine", str(stripped), "--engine", str(stripped)],
            "a.png",
        ),
        "compare: no engine B": (
            ["compare", str(images), "--engine", str(stripped), "--engine", str(tmp / "none")],
            "none: engine not found",
        ),
        "calibrate: no images": (["calibrate", str(stripped), "--images", str(empty)], "empty"),
        "calibrate: missing images": (["calibrate", str(stripped), "--images", str(tmp / "none")], "none"),
        "calibrate: no stripped folder": (["calibrate", str(tmp / "none")], "none"),
        "benchmark: missing image": (
            ["benchmark", "--engine", str(stripped), "--image", str(tmp / "none.png")],
            "none.png",
        ),
        "benchmark: missing engine": (["benchmark", "--engine", str(tmp / "none")], "none: engine not found"),
        "build: no stripped folder": (["build", str(tmp / "none"), "-o", str(tmp / "x")], "none"),
        "export: no stripped folder": (["export", str(tmp / "none"), "-o", str(tmp / "e")], "none"),
        "quickstart: no images": (
            ["quickstart", str(empty), "-o", str(tmp / "q"), "--work-dir", str(tmp / "w")],
            "empty",
        ),
    }


INPUT_CASES = list(_input_cases(*(pathlib.Path("p"),) * 4))


@pytest.mark.parametrize("case", INPUT_CASES)
def test_inputs_are_checked_before_loading(case, stripped, images, dataset, tmp_path, no_model):
    (tmp_path / "empty").mkdir()
    args, needle = _input_cases(tmp_path, stripped, images, dataset)[case]
    extra = ["--no-progress"] if args[0] in ("evaluate", "compare", "calibrate", "export", "quickstart") else []
    one_line_error(runner.invoke(app, [*args, *extra]), needle)
    assert listing(tmp_path) == ["empty"]


def test_no_model_fixture_really_stops_loading(stripped, export_dir, tiny_dir, no_model):
    """The guard itself: good commands that load a model end in its error, whatever the loader."""
    for args in (
        ["benchmark", "--engine", str(stripped), "--resolution", RES, "--runs", "1"],  # safetensors
        ["benchmark", "--engine", str(export_dir), "--resolution", RES, "--runs", "1"],  # ONNX Runtime
        ["benchmark", "--reference", str(tiny_dir), "--resolution", RES, "--runs", "1"],  # official files
        ["benchmark", "--synthetic-weights", "tiny", "--resolution", RES, "--runs", "1", "--device", "cpu"],
        ["init-tiny", str(tiny_dir.parent / "never")],
    ):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, load_gate.LoadBeforeChecks), (args, result.output)


def test_later_option_checks(tiny_dir, tmp_path):
    """Non-finite numbers and a folder as merge-lora's output are option errors, found before any work."""
    folder = tmp_path / "folder"
    folder.mkdir()
    cases = [
        (["merge-lora", "--dit", str(tiny_dir / "dit.safetensors"), "--lora", str(tiny_dir / "lora.safetensors"),
          "-o", str(folder), "--model-config", "tiny", "--overwrite"], "is a folder"),
        (["export", str(tmp_path / "s"), "-o", str(tmp_path / "e"), "--tolerance", "nan"], "--tolerance"),
        (["evaluate", "--engine", str(tiny_dir), "--dataset", str(tmp_path), "--task", "depth",
          "--depth-scale", "inf"], "--depth-scale"),
        (["benchmark", "--synthetic-weights", "tiny", "--time-budget", "nan", "--device", "cpu"], "--time-budget"),
        (["infer", str(tmp_path), "-o", str(tmp_path / "o"), "--processing-res", "4096x4096"], "over the limit"),
        (["calibrate", str(tmp_path / "s"), "--processing-res", "4096x4096"], "over the limit"),
    ]  # fmt: skip
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    assert not (tmp_path / "e").exists() and not (tmp_path / "o").exists()


def test_images_dir_given_a_file_and_no_progress_bars(tiny_dir, tmp_path):
    """A file as IMAGES_DIR says so (not "input folder not found"); --no-progress hides the loading bars too."""
    image = tmp_path / "a.png"
    scene_image(32, 32).save(image)
    result = runner.invoke(app, ["infer", str(image), "-o", str(tmp_path / "o"), "--engine", str(tiny_dir)])
    assert result.exit_code == 2 and "a.png: is a file; give the folder that holds the images" in result.output
    folder = tmp_path / "images"
    folder.mkdir()
    image.rename(folder / "a.png")
    args = ["infer", str(folder), "-o", str(tmp_path / "o"), "--engine", str(tiny_dir), "--processing-res", "32x32"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "loading" not in result.output and "it/s" not in result.output, result.output


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["benchmark", "--runs", "abc"], "--runs abc: must be an integer"),
        (["benchmark", "--no-such-option"], "--no-such-option"),
        (["init-tiny"], "out_dir"),
        (["no-such-command"], "no-such-command"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(args, names):
    """What Typer parses (a value of the wrong type, an unknown option, a missing argument) is one line too."""
    proc = subprocess.run([sys.executable, "-m", "fe2e_deploy", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and names in lines[0], proc.stderr
