"""``build --backend aoti``: the fused graph compiled ahead of time (torch.export + AOTInductor) into one ``.pt2``.

One package holds one compiled model per resolution (static shapes, named ``fe2e_WxH``); the
weights are stored once beside the models (``package_constants_on_disk_format="pickle_weights"``:
the packager deduplicates the tensors the graphs share, and :func:`load_package_models` loads them
once for all models). A JSON sidecar (``<package>.json``) records precision, resolutions, batch,
the device kind it is tied to (CPU ISA, or GPU name and compute capability), torch version and
the stripped model's sources; :func:`check_sidecar` refuses a package that does not match.

Precision: ``fp32`` or ``bf16`` DiT weights (the VAE stays FP32), or ``fp8``: calibrated FP8
linears (:mod:`fe2e_deploy.quantize.fp8`, real ``torch._scaled_mm`` GEMMs), CUDA with compute
capability >= 8.9 only.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch._inductor.package import package_aoti
from torch.export.pt2_archive._package import load_pt2

from . import __version__
from .atomic import atomic_path, atomic_write
from .models.fused import FE2EGraph
from .quantize.calibrate import load_scales
from .quantize.fp8 import quantize_dit
from .strip import StrippedModel, load_stripped

SIDECAR_FORMAT, SIDECAR_VERSION = "fe2e-aoti-package", 1
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}  # fp8: BF16 outside the linears
FP8_MIN_CAPABILITY = (8, 9)
FE2E_RESOLUTIONS = ((1024, 768), (1216, 352), (864, 576))  # the sizes of FE2E's resize rule (pipeline.py)
INPUTS, OUTPUTS = ["image"], ["depth", "normals"]
INDUCTOR_OPTIONS = {
    "aot_inductor.package": True,
    "aot_inductor.package_constants_in_so": False,
    "aot_inductor.package_constants_on_disk_format": "pickle_weights",
}


def model_name(width: int, height: int) -> str:
    return f"fe2e_{width}x{height}"


def sidecar_path(package: str | Path) -> Path:
    return Path(f"{package}.json")


def device_identity(device: str) -> dict:
    """What a package is tied to: the CPU's vector ISA, or the GPU's name and compute capability."""
    kind = torch.device(device).type
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible")
        major, minor = torch.cuda.get_device_capability(device)
        return {"kind": "cuda", "name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}
    if kind != "cpu":
        raise ValueError(f"device {device!r} not supported; use cpu or cuda")
    return {"kind": "cpu", "name": f"cpu ({torch.backends.cpu.get_cpu_capability()})", "compute_capability": None}


def check_fp8_device(device: str) -> None:
    """FP8 GEMMs need a CUDA GPU with compute capability >= 8.9 (Ada, Hopper and later)."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        raise ValueError("--precision fp8 needs --device cuda (a GPU with compute capability >= 8.9); this is a CPU")
    capability = torch.cuda.get_device_capability(device)
    if capability < FP8_MIN_CAPABILITY:
        raise ValueError(
            f"--precision fp8 needs compute capability >= 8.9; {torch.cuda.get_device_name(device)} has "
            f"{capability[0]}.{capability[1]} (use bf16)"
        )


def prepare_model(stripped: str | Path, precision: str, scales: str | Path | None, device: str) -> StrippedModel:
    """The stripped model on ``device`` with its DiT in ``precision`` (FP8 linears from ``scales`` for fp8)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not supported; choose one of {', '.join(PRECISIONS)}")
    if (precision == "fp8") != (scales is not None):
        raise ValueError("--precision fp8 needs --scales (from `fe2e-deploy calibrate`), and only it takes them")
    document = load_scales(scales) if scales is not None else None
    model = load_stripped(stripped, device)
    model.dit.cast_weights(PRECISIONS[precision])
    if document is not None:
        if document["stripped"]["sources"] != model.meta["sources"]:
            raise ValueError(f"{scales}: calibrated on another stripped model ({document['stripped']['path']})")
        quantize_dit(model.dit, document)
    return model


def compile_package(
    model: StrippedModel, out: str | Path, resolutions: Sequence[tuple[int, int]], batch: int, device: str
) -> dict[str, float]:
    """Export + AOT-compile the fused graph at each resolution, package them into ``out``; seconds per model."""
    files, seconds = {}, {}
    for width, height in resolutions:
        start = time.perf_counter()
        graph = FE2EGraph(model.vae, model.dit, width, height).eval()
        with torch.no_grad():
            program = torch.export.export(graph, (torch.zeros(batch, 3, height, width, device=device),))
            args, kwargs = program.example_inputs
            module = program.module(check_guards=False)
            files[model_name(width, height)] = torch._inductor.aot_compile(
                module, args, kwargs, options=dict(INDUCTOR_OPTIONS)
            )
        seconds[f"{width}x{height}"] = round(time.perf_counter() - start, 1)
    with atomic_path(out) as tmp:  # keeps the .pt2 suffix AOTInductor insists on
        package_aoti(str(tmp), files)
    return seconds


def build_aoti(
    stripped: str | Path,
    out: str | Path,
    resolutions: Sequence[tuple[int, int]] = FE2E_RESOLUTIONS,
    precision: str = "bf16",
    scales: str | Path | None = None,
    batch: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict:
    """Compile ``stripped`` at every resolution into one package ``out`` (.pt2) + sidecar; returns the sidecar."""
    out = Path(out)
    if out.suffix != ".pt2":
        raise ValueError(f"{out}: the package name must end in .pt2")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists (pass --overwrite to replace it)")
    resolutions = list(dict.fromkeys(resolutions))
    if not resolutions:
        raise ValueError("no resolution given")
    for width, height in resolutions:
        if width <= 0 or height <= 0 or width % 16 or height % 16:
            raise ValueError(f"resolution {width}x{height}: width and height must be positive multiples of 16")
    if batch < 1:
        raise ValueError(f"batch {batch} must be >= 1")
    identity = device_identity(device)
    if precision == "fp8":
        check_fp8_device(device)
    model = prepare_model(stripped, precision, scales, device)
    start = time.perf_counter()
    seconds = compile_package(model, out, resolutions, batch, device)
    sidecar = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "fe2e_deploy": __version__,
        "backend": "aoti",
        "torch": torch.__version__,
        "precision": precision,
        "resolutions": [f"{w}x{h}" for w, h in resolutions],
        "models": {f"{w}x{h}": model_name(w, h) for w, h in resolutions},
        "batch": batch,
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "device": identity,
        "stripped": {"path": str(stripped), "dtype": model.meta.get("dtype"), "sources": model.meta["sources"]},
        "scales": None if scales is None else str(scales),
        "built_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - start, 1),
        "compile_seconds": seconds,
        "package_bytes": out.stat().st_size,
    }
    atomic_write(sidecar_path(out), lambda p: p.write_text(json.dumps(sidecar, indent=2) + "\n"))
    return sidecar


def check_sidecar(package: str | Path, device: str) -> dict:
    """The package's sidecar; refuses a missing or corrupt one, another package, device kind, GPU or torch."""
    package = Path(package)
    path = sidecar_path(package)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing sidecar (rebuild with `fe2e-deploy build --backend aoti`)")
    try:
        sidecar = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{path}: not an AOTInductor package sidecar (format {SIDECAR_FORMAT!r} expected)")
    if sidecar.get("format_version") != SIDECAR_VERSION:
        raise ValueError(f"{path}: sidecar version {sidecar.get('format_version')} is not {SIDECAR_VERSION}")
    missing = [
        k for k in ("precision", "resolutions", "models", "batch", "device", "package_bytes") if k not in sidecar
    ]
    if missing:
        raise ValueError(f"{path}: sidecar lacks {', '.join(missing)}")
    if sidecar["package_bytes"] != package.stat().st_size:
        raise ValueError(f"{path}: describes a package of {sidecar['package_bytes']} bytes, {package} has another size")
    here, built = device_identity(device), sidecar["device"]
    if (built.get("kind"), built.get("name"), built.get("compute_capability")) != (
        here["kind"],
        here["name"],
        here["compute_capability"],
    ):
        raise ValueError(f"{package}: built for {built.get('name')}, this device is {here['name']}; rebuild it here")
    if sidecar.get("torch") != torch.__version__:
        raise ValueError(f"{package}: built with torch {sidecar.get('torch')}, this is {torch.__version__}; rebuild")
    return sidecar


def load_package_models(package: str | Path, device: str = "cpu") -> dict:
    """Every compiled model in ``package`` by name, sharing one copy of the weights (loaded from the package)."""
    index = torch.device(device).index
    contents = load_pt2(str(package), load_weights_from_disk=True, device_index=-1 if index is None else index)
    return contents.aoti_runners
