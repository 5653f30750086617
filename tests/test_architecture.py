"""The package's shape: the runtime never imports what builds artifacts, the CLI starts without torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import scene_image, strip_tiny

from fe2e_deploy.compile.onnx_export import export_onnx

ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "fe2e_deploy"
#: Modules that produce artifacts: engines and artifact readers must not import them.
PRODUCERS = ("compile", "strip", "merge", "quantize", "train", "tiny", "synthetic", "quickstart", "benchmark")


def package_imports(path: Path) -> set[str]:
    """The fe2e_deploy modules ``path`` imports (relative imports resolved), at any depth of the file."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fe2e_deploy"):
            found.add(node.module)
    return found


@pytest.mark.parametrize("layer", ["engines", "artifacts", "cluster"])
def test_runtime_layers_never_import_producers(layer):
    for path in sorted((PACKAGE / layer).glob("*.py")):
        bad = sorted(m for m in package_imports(path) if any(m.startswith(f"fe2e_deploy.{p}") for p in PRODUCERS))
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def run_python(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_imports_nothing_heavy():
    """`fe2e-deploy --help` answers without importing torch, diffusers, onnx or any stage's code."""
    loaded = run_python(
        "import json, sys; import fe2e_deploy.cli; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'diffusers', 'onnx', 'onnxruntime', 'onnxscript', 'peft', 'numpy', 'PIL'))))"
    )
    assert loaded == [], loaded


@pytest.mark.slow
def test_infer_with_an_export_imports_only_its_engine(tiny_dir, tiny_config, tmp_path):
    """`infer --engine EXPORT_DIR` imports neither diffusers, torch's ONNX exporter and onnxscript, nor the eager
    engine, the stages that build artifacts, TensorRT or Polygraphy (measured on the command itself)."""
    stripped = strip_tiny(tiny_dir, tiny_config, tmp_path / "stripped")
    export_onnx(stripped, tmp_path / "export", resolutions=((32, 32),), graphs=("fe2e",), progress=False)
    images = tmp_path / "images"
    images.mkdir()
    scene_image(32, 32).save(images / "a.png")
    args = ["infer", str(images), "-o", str(tmp_path / "out"), "--engine", str(tmp_path / "export")]
    args += ["--processing-res", "32x32", "--no-progress", "--device", "cpu"]
    code = f"""
import json, sys
from fe2e_deploy.cli import app
try:
    app({args!r})
except SystemExit as exc:
    assert exc.code in (0, None), exc.code
unwanted = ("diffusers", "onnxscript", "torch.onnx._internal.exporter", "tensorrt", "polygraphy",
    "fe2e_deploy.engines.eager", "fe2e_deploy.reference", "fe2e_deploy.compile", "fe2e_deploy.quantize",
    "fe2e_deploy.strip", "fe2e_deploy.merge")
print(json.dumps(sorted(m for m in sys.modules if m.startswith(unwanted))))
"""
    assert run_python(code) == []
    assert (tmp_path / "out" / "depth_npy" / "a_depth.npy").is_file()


#: The library calls that load a model or its weights: safetensors, ONNX Runtime, AOTInductor, TensorRT, torch.
LOAD_CALLS = {"safe_open", "load_file", "InferenceSession", "aoti_load_package", "deserialize_cuda_engine"}
#: Modules whose ``np.load`` reads inputs (ground truth, --align-to known depths), not models.
INPUT_READERS = ("fe2e_deploy/evaluation/", "fe2e_deploy/metric_align.py")


def _load_calls(function: ast.AST, path: Path) -> list[str]:
    found = []
    for node in ast.walk(function):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if name in LOAD_CALLS or (name == "load" and owner == "torch"):
            found.append(f"{owner + '.' if owner else ''}{name}")
        elif name == "load" and owner in ("np", "numpy") and not str(path).startswith(INPUT_READERS):
            found.append("np.load")
    return found


def _calls_opening(function: ast.AST) -> bool:
    return any(
        isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "opening"
        for node in ast.walk(function)
    )


def test_every_model_load_passes_the_load_gate():
    """Structural: every function of the package that calls a model-loading library function also calls
    ``load_gate.opening``, so the tests that close the gate (test_cli_errors) see every load, including loaders
    added later. Generated weights (tiny.py, synthetic.py) call it too (a test of test_cli_errors shows it)."""
    gated, ungated = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT)
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            calls = _load_calls(function, rel)
            if calls:
                (gated if _calls_opening(function) else ungated).append(f"{rel}:{function.name} ({', '.join(calls)})")
    assert not ungated, f"model loads that bypass fe2e_deploy.load_gate.opening: {ungated}"
    print("\n".join(gated))
    assert len(gated) >= 6  # safetensors, prompt, ORT, AOTI, TensorRT, training checkpoints
