"""``build --backend aoti``: the deployment graph compiled ahead of time with torch.export + AOTInductor.

Output: one ``.pt2`` file (one resolution, with a JSON sidecar), or a folder with one package per
resolution (``fe2e_WxH.pt2``, FE2E's three by default) and one engine description
(``aoti_engine.json``) written last. The packages hold code only: compiled with
``aot_inductor.package_constants_in_so=False``, so no weight is inside them (the full model's
17 GB would otherwise be in the ``.so``, again in the ``.pt2`` and again at load). The engine
(``engines/aoti.py``) reads the weights from the stripped folder recorded here, prepares them as
the build did (:func:`prepare_model`) and hands the same tensors to every package
(``load_constants(..., user_managed=True)``); only the RoPE tables differ per resolution.

Precision: ``fp32`` or ``bf16`` DiT weights (the VAE stays FP32), or ``fp8`` with calibrated
scales (copied next to the package): FP8 linears that run ``torch._scaled_mm`` on CUDA GPUs with
compute capability >= 8.9 and the exact fake quantisation elsewhere (a correctness build on CPU).
Static shapes: resolution and batch are fixed per package.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .config import FE2E_RESOLUTIONS
from .files.atomic import atomic_write
from .kernels import preferred_attention, resolve_device
from .models.fused import FE2EGraph
from .quantize.calibrate import load_scales
from .quantize.fp8 import quantize_dit
from .sidecar import read_description, read_sidecar, write_sidecar
from .strip import META_FILE, StrippedModel, load_stripped

SIDECAR_FORMAT = "fe2e-aoti-package"
ENGINE_FORMAT, ENGINE_FILE, SCALES_FILE = "fe2e-aoti-engine", "aoti_engine.json", "fp8_scales.json"
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8": torch.bfloat16}
#: weights stay out of the package; the engine supplies them from the stripped folder
INDUCTOR_CONFIGS = {"aot_inductor.package_constants_in_so": False}
REBUILD = "fe2e-deploy build --backend aoti"


def device_identity(device: str) -> dict:
    """What a package is tied to: CPU, or the GPU's name and compute capability."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible")
        major, minor = torch.cuda.get_device_capability(device)
        return {"kind": "cuda", "name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}
    if device != "cpu":
        raise ValueError(f"device {device!r} not supported; use cpu, cuda or auto")
    return {"kind": "cpu", "name": "cpu", "compute_capability": None}


def package_name(width: int, height: int) -> str:
    return f"fe2e_{width}x{height}.pt2"


def source_hashes(sources: dict) -> dict:
    """The SHA-256 of each source of a stripped model (paths may differ between machines; contents may not)."""
    return {name: entry and entry.get("sha256") for name, entry in sources.items()}


def stripped_identity(model: StrippedModel) -> dict:
    """What the engine checks a stripped folder against: its path, sources and dtype."""
    return {"path": str(model.folder.resolve()), "sources": model.meta["sources"], "dtype": model.meta["dtype"]}


def check_stripped(folder: str | Path, recorded: dict, engine: str | Path) -> Path:
    """``folder`` (a stripped model) stripped from the recorded sources in the recorded dtype, else a one-line error."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{folder}: stripped model folder not found; {engine} holds no weights and reads them from it "
            f"(restore it, pass the folder explicitly (stripped=...), or rebuild with `{REBUILD}`)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{meta_path}: not valid JSON ({exc})") from exc
    if (
        source_hashes(meta.get("sources") or {}) != source_hashes(recorded["sources"])
        or meta.get("dtype") != recorded["dtype"]
    ):
        raise ValueError(
            f"{folder}: not the stripped model {engine} was built from (other sources or dtype than "
            f"{recorded['path']}); pass that folder or rebuild with `{REBUILD}`"
        )
    return folder


def prepare_model(
    stripped: str | Path, precision: str, scales: dict | None, device: str | torch.device
) -> StrippedModel:
    """The stripped model on ``device`` as a package computes with it: DiT cast to the precision, FP8 linears."""
    model = load_stripped(stripped, device)
    model.dit.cast_weights(PRECISIONS[precision])
    if scales is not None:
        if source_hashes(scales["stripped"]["sources"]) != source_hashes(model.meta["sources"]):
            raise ValueError(f"FP8 scales calibrated on another stripped model ({scales['stripped']['path']})")
        quantize_dit(model.dit, scales)
    return model


def graph_constants(graph: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``graph`` under each of its names (a shared module appears under all of them)."""
    return dict(graph.named_parameters(remove_duplicate=False)) | dict(graph.named_buffers(remove_duplicate=False))


def _check_device(graph: nn.Module, device: str) -> None:
    want = torch.device(device).type
    for name, tensor in graph_constants(graph).items():
        if tensor.device.type != want:
            raise AssertionError(f"{name} is on {tensor.device}, the package is built for {device}")


def _compile(model: StrippedModel, width: int, height: int, batch: int, device: str, path: Path) -> float:
    """Export and compile the fused graph at one size into ``path`` (.pt2, no weights inside); returns seconds."""
    graph = FE2EGraph(model.vae, model.dit, width, height).eval()
    _check_device(graph, device)
    example = (torch.rand(batch, 3, height, width, device=device) * 2 - 1,)
    start = time.perf_counter()
    with torch.no_grad(), preferred_attention(device):  # the attention kernel is chosen while compiling
        program = torch.export.export(graph, example)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=INDUCTOR_CONFIGS)
    return round(time.perf_counter() - start, 1)


def _resolutions(resolution: tuple[int, int] | Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
    if resolution is None:
        return []
    if len(resolution) == 2 and all(isinstance(v, int) for v in resolution):
        resolution = [resolution]
    sizes = list(dict.fromkeys((int(w), int(h)) for w, h in resolution))
    for w, h in sizes:
        if w <= 0 or h <= 0 or w % 16 or h % 16:
            raise ValueError(f"resolution {w}x{h}: width and height must be positive multiples of 16")
    return sizes


def build_aoti(
    stripped: str | Path,
    out: str | Path,
    resolution: tuple[int, int] | Sequence[tuple[int, int]] | None = None,
    precision: str = "bf16",
    scales: str | Path | None = None,
    batch: int = 1,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict:
    """Compile the fused graph of ``stripped`` into ``out``; returns the sidecar / engine description.

    ``out`` ending in ``.pt2``: one package at one resolution (default 1024x768) with its sidecar
    ``out.json``. Any other ``out``: a folder with one ``fe2e_WxH.pt2`` per resolution (default
    FE2E's three) and ``aoti_engine.json``, built beside it and renamed into place when complete.
    """
    out = Path(out)
    single = out.suffix == ".pt2"
    sizes = _resolutions(resolution) or ([(1024, 768)] if single else list(FE2E_RESOLUTIONS))
    if single and len(sizes) != 1:
        raise ValueError(f"{out}: a .pt2 holds one resolution; give an output folder for several")
    occupied = out.is_file() or (out.is_dir() and any(out.iterdir()))  # an empty folder may be filled
    if occupied and not overwrite:
        raise FileExistsError(f"{out}: exists (pass --overwrite to replace it)")
    if occupied and not single and not (out / ENGINE_FILE).is_file():
        raise FileExistsError(f"{out}: exists and is not an AOTInductor engine folder; refusing to replace it")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not supported; choose one of {', '.join(PRECISIONS)}")
    if (precision == "fp8") != (scales is not None):
        raise ValueError("--precision fp8 needs --scales (from `fe2e-deploy calibrate`), and only it takes them")
    if batch < 1:
        raise ValueError(f"batch {batch}: must be >= 1")
    device = resolve_device(device)
    identity = device_identity(device)
    document = load_scales(scales) if scales is not None else None
    model = prepare_model(stripped, precision, document, device)
    description = {
        "format": SIDECAR_FORMAT if single else ENGINE_FORMAT,
        "fe2e_deploy": __version__,
        "torch": torch.__version__,
        "backend": "aoti",
        "precision": precision,
        "batch": batch,
        "device": identity,
        "stripped": stripped_identity(model),
        "weights_in_package": False,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    if single:
        return _build_package(model, out, sizes[0], batch, device, document, description)
    return _build_folder(model, out, sizes, batch, device, document, description)


def _build_package(model, out: Path, size, batch, device, document, description) -> dict:
    width, height = size
    tmp = out.with_name(f".{out.stem}.tmp{os.getpid()}.pt2")  # AOTInductor insists on the .pt2 suffix
    try:
        seconds = _compile(model, width, height, batch, device, tmp)
        scales_name = f"{out.name}.{SCALES_FILE}"
        if document is not None:
            atomic_write(out.with_name(scales_name), lambda p: p.write_text(json.dumps(document, indent=2) + "\n"))
        else:
            out.with_name(scales_name).unlink(missing_ok=True)  # a stale copy from an earlier FP8 build
            scales_name = None
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)
    sidecar = description | {
        "resolution": f"{width}x{height}",
        "scales": scales_name,
        "build_seconds": seconds,
        "package_bytes": out.stat().st_size,
    }
    write_sidecar(out, sidecar)
    return sidecar


def _build_folder(model, out: Path, sizes, batch, device, document, description) -> dict:
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        packages, seconds, sizes_bytes = {}, {}, {}
        for width, height in sizes:
            key, name = f"{width}x{height}", package_name(width, height)
            seconds[key] = _compile(model, width, height, batch, device, tmp / name)
            packages[key], sizes_bytes[key] = name, (tmp / name).stat().st_size
        if document is not None:
            (tmp / SCALES_FILE).write_text(json.dumps(document, indent=2) + "\n")
        engine = description | {
            "resolutions": list(packages),
            "packages": packages,
            "scales": SCALES_FILE if document is not None else None,
            "build_seconds": seconds,
            "package_bytes": sizes_bytes,
        }
        (tmp / ENGINE_FILE).write_text(json.dumps(engine, indent=2) + "\n")  # last: the folder is now complete
        _install(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return engine


def _install(tmp: Path, out: Path) -> None:
    """Rename the complete folder ``tmp`` to ``out``; an existing ``out`` is moved aside first, then deleted."""
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    if out.exists():
        out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            old.rename(out)  # put the old complete folder back
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _check_built_here(description: dict, path: Path, device: str) -> dict:
    here, built = device_identity(device), description.get("device", {})
    if (built.get("kind"), built.get("name"), built.get("compute_capability")) != (
        here["kind"],
        here["name"],
        here["compute_capability"],
    ):
        raise ValueError(f"{path}: built for {built.get('name')}, this device is {here['name']}; rebuild it here")
    if description.get("torch") != torch.__version__:
        raise ValueError(f"{path}: built with torch {description.get('torch')}, this is {torch.__version__}; rebuild")
    if description.get("weights_in_package") is not False or "stripped" not in description:
        raise ValueError(f"{path}: an older package with its weights inside; rebuild with `{REBUILD}`")
    return description


def check_aoti_sidecar(package: str | Path, device: str) -> dict:
    """The package's sidecar, refusing a package built for another device kind or GPU or torch."""
    return _check_built_here(read_sidecar(package, SIDECAR_FORMAT, REBUILD), Path(package), device)


def check_aoti_engine(folder: str | Path, device: str) -> dict:
    """An engine folder's ``aoti_engine.json``, with the same checks as :func:`check_aoti_sidecar`."""
    path = Path(folder) / ENGINE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not an AOTInductor engine folder (no {ENGINE_FILE}; run `{REBUILD}`)")
    return _check_built_here(read_description(path, ENGINE_FORMAT), Path(folder), device)
