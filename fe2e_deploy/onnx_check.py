"""``export --check``: run every exported graph in ONNX Runtime and compare it with PyTorch.

Each graph gets seeded inputs of its manifest shapes (synthetic scenes for images, N(0, 1)
latents); the same module is rebuilt from the stripped model (fake-quantised for FP8 exports) and
run in PyTorch. Reported per output: max absolute error and relative L2 error
``||ort - torch|| / ||torch||``; a graph fails above the tolerance of its precision.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write
from .onnx_export import GRAPHS, load_manifest
from .ort_session import make_session
from .pipeline import preprocess
from .quantize.calibrate import load_scales
from .quantize.fp8 import quantize_dit
from .scenes import synthetic_scene
from .strip import StrippedModel, load_stripped

#: Relative L2 tolerance per dtype. FP32: summation-order round-off only (measured 1e-6 at 64x48,
#: 2.4e-4 at 1024x768 where attention spans 6k tokens). BF16: ORT's run differs from PyTorch's CPU
#: BF16 run in rounding order (measured 0.3-0.8% on the tiny model). A wrong graph is off by O(1).
#: FP8: any difference before a quantiser (ORT's BF16 emulation, summation order) can flip values to
#: the next E4M3 step (6.25% apart). Measured on the tiny model: FP32 compute 0.04% (DiT latents) and
#: 1.4-2.6% (fused maps); BF16 compute 1.5-4.8% (DiT) and 2.7-4.6% (fused). A wrong graph is off by
#: O(1) (115% before the ORT constant-folding workaround in ort_session.py).
TOLERANCES = {"float32": 1e-3, "bfloat16": 3e-2, "fp8": 1e-1}
DIT_GRAPHS = ("dit", "fe2e")


@dataclass
class OutputCheck:
    graph: str
    output: str
    max_abs: float
    rel_l2: float
    tolerance: float
    emulated: bool

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.rel_l2)) and self.rel_l2 <= self.tolerance

    def row(self) -> str:
        note = " (BF16 emulated in FP32 on CPU)" if self.emulated else ""
        status = "ok" if self.ok else "FAIL"
        return (
            f"{self.graph:<24} {self.output:<14} max_abs {self.max_abs:.3e}  rel_l2 {self.rel_l2:.3e}  "
            f"tol {self.tolerance:.0e}  {status}{note}"
        )


def check_export(
    export_dir: str | Path,
    stripped: str | Path | StrippedModel | None = None,
    device: str = "cpu",
    tolerance: float | None = None,
    seed: int = 0,
) -> list[OutputCheck]:
    """Check every graph of an export folder; ``stripped`` defaults to the folder named in the manifest."""
    export_dir = Path(export_dir)
    manifest = load_manifest(export_dir)
    if not isinstance(stripped, StrippedModel):
        stripped = load_stripped(stripped or manifest["stripped"]["path"])
    stripped.dit.cast_weights(getattr(torch, manifest["dtype"]))
    if manifest.get("fp8_scales"):  # compare with the fake-quantised model the graph was exported from
        quantize_dit(stripped.dit, load_scales(export_dir / manifest["fp8_scales"]))
    generator = torch.Generator().manual_seed(seed)
    results = []
    for key, entry in manifest["graphs"].items():
        name, res = key.rsplit("_", 1)
        width, height = (int(v) for v in res.split("x"))
        spec = GRAPHS[name]
        inputs = tuple(
            _random_input(name, [1 if d == "batch" else d for d in desc["shape"]], generator)
            for desc in entry["inputs"].values()
        )
        module = spec.build(stripped, width, height).eval()
        with torch.no_grad():
            expected = module(*inputs)
        expected = expected if isinstance(expected, tuple) else (expected,)
        session, emulated = make_session(export_dir / entry["file"], device)
        graph_dtype = manifest.get("precision", manifest["dtype"]) if name in DIT_GRAPHS else "float32"  # VAE: FP32
        tol = tolerance if tolerance is not None else TOLERANCES.get(graph_dtype, 3e-2)
        got = session.run(list(spec.outputs), {n: t.numpy() for n, t in zip(spec.inputs, inputs, strict=True)})
        for out_name, a, b in zip(spec.outputs, got, expected, strict=True):
            b = b.float().numpy()
            diff = np.abs(a.astype(np.float64) - b)
            rel = float(np.linalg.norm(diff) / max(np.linalg.norm(b), 1e-12))
            results.append(OutputCheck(key, out_name, float(diff.max()), rel, tol, emulated))
    return results


CHECK_FILE = "check.json"


def write_check_report(export_dir: str | Path, results: list[OutputCheck]) -> Path:
    """Record a check's results next to the graphs (``check.json``); ``passed`` is true only if all are ok."""
    report = {
        "passed": all(r.ok for r in results),
        "outputs": [{**asdict(r), "ok": r.ok} for r in results],
    }
    return atomic_write(Path(export_dir) / CHECK_FILE, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))


def check_passed(export_dir: str | Path) -> bool:
    path = Path(export_dir) / CHECK_FILE
    try:
        return bool(json.loads(path.read_text())["passed"])
    except (OSError, ValueError, KeyError):
        return False


def _random_input(graph: str, shape: list[int], generator: torch.Generator) -> torch.Tensor:
    """Images: seeded synthetic scenes (in-distribution for FP8 scales calibrated on images); latents: N(0, 1)."""
    if graph in ("vae_encoder", "fe2e"):
        batch, _, height, width = shape
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        return torch.cat([preprocess(synthetic_scene(width, height, seed + i), (width, height)) for i in range(batch)])
    return torch.randn(shape, generator=generator)
