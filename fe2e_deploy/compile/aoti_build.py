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
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..artifacts.aoti import (
    ENGINE_FILE,
    ENGINE_FORMAT,
    SCALES_FILE,
    SIDECAR_FORMAT,
    device_identity,
    graph_constants,
    package_metadata,
    package_name,
    prepare_model,
    stripped_identity,
)
from ..artifacts.scales import load_scales
from ..artifacts.sidecar import write_sidecar
from ..artifacts.stripped import StrippedModel
from ..config import FE2E_RESOLUTIONS
from ..files.atomic import (
    check_folder_target,
    install_file,
    remove_stale_temps,
    staged_folder,
    temp_sibling,
    write_json,
)
from ..kernels import preferred_attention, resolve_device
from ..models.fused import FE2EGraph
from ..precision import parse_precision
from ..resolution import resolution_name

#: weights stay out of the package; the engine supplies them from the stripped folder
INDUCTOR_CONFIGS = {"aot_inductor.package_constants_in_so": False}
#: plus, per package, ``aot_inductor.metadata``: the resolution, batch and precision it is compiled for
#: (:func:`~fe2e_deploy.artifacts.aoti.package_metadata`), which the engine compares with the description


def _check_device(graph: nn.Module, device: str) -> None:
    want = torch.device(device).type
    for name, tensor in graph_constants(graph).items():
        if tensor.device.type != want:
            raise AssertionError(f"{name} is on {tensor.device}, the package is built for {device}")


def _compile(
    model: StrippedModel, width: int, height: int, batch: int, device: str, path: Path, precision: str
) -> float:
    """Export and compile the fused graph at one size into ``path`` (.pt2, no weights inside); returns seconds.

    The package records its resolution, batch and precision (AOTInductor metadata, read back with
    ``runner.get_metadata()``), so an engine can refuse a package its description does not match.
    """
    graph = FE2EGraph(model.vae, model.dit, width, height).eval()
    _check_device(graph, device)
    example = (torch.rand(batch, 3, height, width, device=device) * 2 - 1,)
    start = time.perf_counter()
    with torch.no_grad(), preferred_attention(device):  # the attention kernel is chosen while compiling
        program = torch.export.export(graph, example)
        configs = INDUCTOR_CONFIGS | {"aot_inductor.metadata": package_metadata((width, height), batch, precision)}
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)
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
    *,
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
    if single and out.exists() and not overwrite:
        raise FileExistsError(f"{out}: exists (pass --overwrite to replace it)")
    if not single:  # an empty folder may be filled; a folder of another kind is never replaced
        check_folder_target(out, overwrite, ENGINE_FILE, "an AOTInductor engine")
    precision = parse_precision(precision)
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
        return _build_package(model, out, sizes[0], batch, device, document, description, overwrite)
    return _build_folder(model, out, sizes, batch, device, document, description, overwrite)


def _build_package(model, out: Path, size, batch, device, document, description, overwrite: bool) -> dict:
    width, height = size
    remove_stale_temps(out)
    tmp = temp_sibling(out)  # .NAME.tmpPID.pt2: AOTInductor insists on the .pt2 suffix
    try:
        seconds = _compile(model, width, height, batch, device, tmp, description["precision"])
        scales_name = f"{out.name}.{SCALES_FILE}"
        if document is not None:
            write_json(out.with_name(scales_name), document)
        else:
            out.with_name(scales_name).unlink(missing_ok=True)  # a stale copy from an earlier FP8 build
            scales_name = None
        install_file(tmp, out, overwrite)  # without overwrite: never a package another run wrote meanwhile
    finally:
        tmp.unlink(missing_ok=True)
    sidecar = description | {
        "resolution": resolution_name((width, height)),
        "scales": scales_name,
        "build_seconds": seconds,
        "package_bytes": out.stat().st_size,
    }
    write_sidecar(out, sidecar)
    return sidecar


def _build_folder(model, out: Path, sizes, batch, device, document, description, overwrite: bool) -> dict:
    # built beside ``out`` and swapped in whole (the old folder stays until the new one is complete)
    with staged_folder(out, overwrite=overwrite, marker=ENGINE_FILE, what="an AOTInductor engine") as tmp:
        packages, seconds, sizes_bytes = {}, {}, {}
        for width, height in sizes:
            key, name = resolution_name((width, height)), package_name(width, height)
            seconds[key] = _compile(model, width, height, batch, device, tmp / name, description["precision"])
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
    return engine
