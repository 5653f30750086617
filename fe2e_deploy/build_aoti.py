"""``build --backend aoti``: the deployment graph compiled ahead of time with torch.export + AOTInductor.

One ``.pt2`` package per resolution (static shapes, like the TensorRT plans), plus a JSON sidecar
(precision, resolution, batch, device kind, torch version, source model) that the engine checks.
Precision: ``fp32`` or ``bf16`` DiT weights (the VAE stays FP32), or ``fp8`` with calibrated
scales: FP8 linears that run ``torch._scaled_mm`` on CUDA GPUs with compute capability >= 8.9 and
the exact fake quantisation elsewhere (a correctness build on CPU, not a fast one).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from . import __version__
from .models.fused import FE2EGraph
from .quantize.calibrate import load_scales
from .quantize.fp8 import quantize_dit
from .sidecar import read_sidecar, write_sidecar
from .strip import load_stripped

SIDECAR_FORMAT = "fe2e-aoti-package"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}


def device_identity(device: str) -> dict:
    """What a package is tied to: CPU, or the GPU's name and compute capability."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible")
        major, minor = torch.cuda.get_device_capability(device)
        return {"kind": "cuda", "name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}
    if device != "cpu":
        raise ValueError(f"device {device!r} not supported; use cpu or cuda")
    return {"kind": "cpu", "name": "cpu", "compute_capability": None}


def build_aoti(
    stripped: str | Path,
    out: str | Path,
    resolution: tuple[int, int],
    precision: str = "bf16",
    scales: str | Path | None = None,
    batch: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict:
    """Compile the fused graph of ``stripped`` at ``resolution`` into ``out`` (.pt2); returns the sidecar."""
    out = Path(out)
    if out.suffix != ".pt2":
        raise ValueError(f"{out}: the package name must end in .pt2")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists (pass --overwrite to replace it)")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not supported; choose one of {', '.join(PRECISIONS)}")
    if (precision == "fp8") != (scales is not None):
        raise ValueError("--precision fp8 needs --scales (from `fe2e-deploy calibrate`), and only it takes them")
    width, height = resolution
    if width % 16 or height % 16 or batch < 1:
        raise ValueError(f"resolution {width}x{height} must be multiples of 16 and batch >= 1")
    identity = device_identity(device)
    model = load_stripped(stripped, device)
    model.dit.cast_weights(PRECISIONS[precision])
    if scales is not None:
        document = load_scales(scales)
        if document["stripped"]["sources"] != model.meta["sources"]:
            raise ValueError(f"{scales}: calibrated on another stripped model ({document['stripped']['path']})")
        quantize_dit(model.dit, document)
    graph = FE2EGraph(model.vae, model.dit, width, height).eval()
    example = (torch.zeros(batch, 3, height, width, device=device),)
    start = time.perf_counter()
    with torch.no_grad():
        program = torch.export.export(graph, example)
        tmp = out.with_name(f".{out.stem}.tmp.pt2")  # AOTInductor insists on the .pt2 suffix
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp))
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    sidecar = {
        "format": SIDECAR_FORMAT,
        "fe2e_deploy": __version__,
        "torch": torch.__version__,
        "backend": "aoti",
        "precision": precision,
        "resolution": f"{width}x{height}",
        "batch": batch,
        "device": identity,
        "stripped": {"path": str(stripped), "sources": model.meta["sources"]},
        "build_seconds": round(seconds, 1),
        "package_bytes": out.stat().st_size,
    }
    write_sidecar(out, sidecar)
    return sidecar


def check_aoti_sidecar(package: str | Path, device: str) -> dict:
    """The package's sidecar, refusing a package built for another device kind or GPU or torch."""
    sidecar = read_sidecar(package, SIDECAR_FORMAT, "fe2e-deploy build --backend aoti")
    here, built = device_identity(device), sidecar.get("device", {})
    if (built.get("kind"), built.get("name"), built.get("compute_capability")) != (
        here["kind"],
        here["name"],
        here["compute_capability"],
    ):
        raise ValueError(f"{package}: built for {built.get('name')}, this device is {here['name']}; rebuild it here")
    if sidecar.get("torch") != torch.__version__:
        raise ValueError(f"{package}: built with torch {sidecar.get('torch')}, this is {torch.__version__}; rebuild")
    return sidecar
