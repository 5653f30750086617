"""``build``: the deployment graph compiled ahead of time with torch.export + AOTInductor.

Output: an engine folder with one package per resolution (``fe2e_WxH.pt2``, FE2E's three by default)
and its description (``aoti_engine.json``, :class:`~fe2e_deploy.artifacts.aoti.AotiEngineDescription`),
built beside the target and swapped in complete. The packages hold code only: compiled with
``aot_inductor.package_constants_in_so=False``, so no weight is inside them (the full model's 17 GB
would otherwise be in the ``.so``, again in the ``.pt2`` and again at load). The engine
(``engines/aoti.py``) reads the weights from the stripped folder recorded here, prepares them as the
build did (:func:`~fe2e_deploy.artifacts.aoti.prepare_model`) and hands the same tensors to every package
(``load_constants(..., user_managed=True)``); only the RoPE tables differ per resolution.

Precision: ``fp32`` or ``bf16`` DiT weights (the VAE stays FP32), or ``fp8`` with calibrated scales
(copied into the folder): FP8 linears that run ``torch._scaled_mm`` on CUDA GPUs with compute
capability >= 8.9 and the exact fake quantisation elsewhere (a correctness build on CPU). Static
shapes: resolution and batch are fixed per package (:data:`fe2e_deploy.graph_io.FE2E` gives the input).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..artifacts.aoti import AotiEngineDescription, device_identity, package_metadata, package_name
from ..artifacts.scales import load_scales
from ..artifacts.stripped import read_stripped_meta
from ..config import FE2E_RESOLUTIONS
from ..engines.aoti import graph_constants, prepare_model
from ..errors import InvalidInput
from ..files.atomic import check_folder_target, staged_folder
from ..graph_io import FE2E, check_size
from ..kernels import preferred_attention, resolve_device
from ..loading.stripped import StrippedModel
from ..models.fp8 import GEMM_MODES, set_fp8_gemm
from ..models.fused import FE2EGraph
from ..precision import parse_precision
from ..resolution import resolution_name

#: Weights stay out of the package (the engine supplies them from the stripped folder). Inductor keeps eager's
#: down/up-casts between fused ops (emulate_precision_casts): the package rounds where the eager model and the
#: ONNX graphs do, which FP8 quantisers would otherwise amplify (measured: 3e-2 relative L2 without it).
INDUCTOR_CONFIGS = {"aot_inductor.package_constants_in_so": False, "emulate_precision_casts": True}
#: plus, per package, ``aot_inductor.metadata``: the resolution, batch and precision it is compiled for
#: (:func:`~fe2e_deploy.artifacts.aoti.package_metadata`), which the engine compares with the description
FOLDER = {"marker": AotiEngineDescription.FILE, "what": "an AOTInductor engine"}


def _check_device(graph: nn.Module, device: str) -> None:
    want = torch.device(device).type
    for name, tensor in graph_constants(graph).items():
        if tensor.device.type != want:
            raise AssertionError(f"{name} is on {tensor.device}, the package is built for {device}")


def _compile(model: StrippedModel, size: tuple[int, int], batch: int, device: str, path: Path, precision: str) -> float:
    """Export and compile the fused graph at one size into ``path`` (.pt2, no weights inside); returns seconds.

    The package records its resolution, batch and precision (AOTInductor metadata, read back with
    ``runner.get_metadata()``), so an engine can refuse a package its description does not match.
    """
    width, height = size
    graph = FE2EGraph(model.vae, model.dit, width, height).eval()
    _check_device(graph, device)
    (image,) = FE2E.inputs
    example = (torch.rand(*image.shape(batch, width, height), device=device) * 2 - 1,)
    start = time.perf_counter()
    with torch.no_grad(), preferred_attention(device):  # the attention kernel is chosen while compiling
        program = torch.export.export(graph, example)
        configs = INDUCTOR_CONFIGS | {"aot_inductor.metadata": package_metadata(size, batch, precision)}
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)
    return round(time.perf_counter() - start, 1)


def build_aoti(
    stripped: str | Path,
    out: str | Path,
    *,
    resolutions: Sequence[tuple[int, int]] = FE2E_RESOLUTIONS,
    precision: str = "bf16",
    scales: str | Path | None = None,
    batch: int = 1,
    device: str = "cpu",
    fp8_gemm: str = "auto",
    overwrite: bool = False,
) -> AotiEngineDescription:
    """Compile the fused graph of ``stripped`` into the engine folder ``out``, one package per resolution.

    Every input is checked before the model is loaded; the folder is built beside ``out`` and renamed
    into place when complete (an existing engine folder is replaced only with ``overwrite``).
    ``fp8_gemm`` (FP8): ``auto`` compiles ``torch._scaled_mm`` GEMMs on CUDA GPUs with compute capability
    >= 8.9 and the dequantised product elsewhere; ``scaled_mm`` compiles the FP8 GEMM calls on any device
    (the CPU runs them too), ``dequantized`` never (:func:`fe2e_deploy.models.fp8.set_fp8_gemm`).
    """
    out = Path(out)
    sizes = list(dict.fromkeys(check_size(s) for s in resolutions))
    if not sizes:
        raise InvalidInput("no resolution to build (give at least one --resolution)")
    precision = parse_precision(precision)
    if (precision == "fp8") != (scales is not None):
        raise InvalidInput("--precision fp8 needs --scales (from `fe2e-deploy calibrate`), and only it takes them")
    if batch < 1:
        raise InvalidInput(f"batch {batch}: must be >= 1")
    if fp8_gemm not in GEMM_MODES:
        raise InvalidInput(f"FP8 GEMM {fp8_gemm!r}: choose one of {', '.join(GEMM_MODES)}")
    if out.suffix == ".pt2":
        raise InvalidInput(f"{out}: give a folder (the engine is a folder of packages, one per resolution)")
    check_folder_target(out, overwrite, **FOLDER)  # an empty folder may be filled; one of another kind never
    device = resolve_device(device)
    identity = device_identity(device)
    meta = read_stripped_meta(stripped)
    document = load_scales(scales) if scales is not None else None
    model = prepare_model(stripped, precision, document, device)  # refuses scales of another model before loading
    if document is not None:
        set_fp8_gemm(model.dit, fp8_gemm)
    packages, seconds, sizes_bytes = {}, {}, {}
    with staged_folder(out, overwrite=overwrite, **FOLDER) as tmp:
        for size in sizes:
            key, name = resolution_name(size), package_name(size)
            seconds[key] = _compile(model, size, batch, device, tmp / name, precision)
            packages[key], sizes_bytes[key] = name, (tmp / name).stat().st_size
        if document is not None:
            document.write(tmp / AotiEngineDescription.SCALES)
        description = AotiEngineDescription(
            fe2e_deploy=__version__,
            torch=torch.__version__,
            precision=precision,
            batch=batch,
            device=identity,
            stripped=meta.reference(stripped),
            packages=packages,
            scales=AotiEngineDescription.SCALES if document is not None else None,
            fp8_gemm=fp8_gemm if document is not None else None,
            build_seconds=seconds,
            package_bytes=sizes_bytes,
        )
        description.write(tmp / AotiEngineDescription.FILE)  # last: the folder is now complete
    return description
