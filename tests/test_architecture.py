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


def test_onnx_engine_and_infer_import_no_exporter(tiny_dir, tiny_config, tmp_path):
    """Opening an ONNX engine and running infer imports neither onnxscript nor the exporter, quantiser or builders."""
    stripped = strip_tiny(tiny_dir, tiny_config, tmp_path / "stripped")
    export_onnx(stripped, tmp_path / "export", resolutions=((32, 32),), graphs=("fe2e",), progress=False)
    images = tmp_path / "images"
    images.mkdir()
    scene_image(32, 32).save(images / "a.png")
    code = f"""
import json, sys
from fe2e_deploy.engines import load_engine
from fe2e_deploy.infer import run_infer
engine = load_engine({str(tmp_path / "export")!r}, processing_res=(32, 32))
report = run_infer(engine, {str(images)!r}, {str(tmp_path / "out")!r}, progress=False)
assert len(report.written) == 1, report.summary()
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("onnxscript", "tensorrt", "polygraphy"))
    or m.startswith(("fe2e_deploy.compile", "fe2e_deploy.quantize", "fe2e_deploy.strip", "fe2e_deploy.merge")))))
"""
    assert run_python(code) == []
