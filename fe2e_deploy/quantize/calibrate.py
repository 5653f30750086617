"""``calibrate``: per-tensor FP8 E4M3 scales (max calibration) for the DiT's linear layers.

The stripped model runs image by image through :class:`~fe2e_deploy.models.fused.FE2EGraph`;
forward pre-hooks record the absolute maximum of every quantised Linear's input (after the cast to
the weight dtype, i.e. exactly what the matmul sees); weight maxima are read from the weights.
scale = amax / 448 (the largest finite E4M3 value). ``img_in`` (x_embedder) and
``final_layer.linear`` stay out of FP8 by default (``--exclude`` replaces that list), and the
attention BMMs (QK^T, PV) are never quantised: they are not Linear modules.

Why not NVIDIA ModelOpt (``nvidia-modelopt`` 0.47, tried on CPU with this torch 2.13):
``mtq.quantize(..., FP8_DEFAULT_CFG, forward_loop)`` does max-calibrate the stripped DiT on CPU, and
its amaxes equal ours on the same inputs, but its quantised modules cannot be exported with the
dynamo exporter every graph here uses (``No ONNX function found for tensorrt.quantize_op``), and
the TorchScript exporter writes ``trt::TRT_FP8QuantizeLinear`` custom ops that ONNX Runtime cannot
load, so the exported graph cannot be checked anywhere here. Its ONNX-level PTQ
(``modelopt.onnx.quantization``) does run on CPU, but only when installed without its ``[onnx]``
extra, which pins ``onnx~=1.21``, ``onnxruntime-gpu`` and ``cupy-cuda12x`` against this project's
onnx/onnxruntime; it calibrates an already exported graph in ONNX Runtime (FP32 on CPU: twice the
17 GB BF16 DiT) and quantises every MatMul, including ``img_in``, the final layer and the attention
BMMs, unless told otherwise. Max calibration is a few lines of hooks, and
:mod:`fe2e_deploy.quantize.fp8` writes standard ONNX Q/DQ that TensorRT and ONNX Runtime both read.
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..artifacts.scales import DEFAULT_EXCLUDE, CalibratedOn, Fp8Scales, LayerScales, SkippedImage
from ..artifacts.stripped import StrippedMeta, read_stripped_meta
from ..errors import InvalidInput, MissingInput, NotAFolder
from ..files.hashing import sha256_file
from ..files.images import UnreadableInput, find_images, open_image
from ..loading.stripped import StrippedModel, load_stripped
from ..models.fp8 import E4M3_MAX
from ..models.fused import FE2EGraph
from ..processing import preprocess
from ..resolution import MAX_PROCESSING_PIXELS, check_processing_pixels, fe2e_processing_size, resolution_name
from ..scenes import COUNT, render_scene, scene_name

NOT_QUANTISED = "attention BMMs (QK^T, PV), RoPE, norms, modulation and residual stream stay in the compute dtype"


def linear_names(dit: nn.Module) -> list[str]:
    return [name for name, module in dit.named_modules() if isinstance(module, nn.Linear)]


def quantizable_linears(dit: nn.Module, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> dict[str, nn.Linear]:
    """The DiT's Linear modules (official names) not matched by an ``exclude`` glob pattern.

    A pattern that matches no Linear is an error (most likely a typo that would quantise a layer
    meant to stay in high precision).
    """
    names = linear_names(dit)
    unmatched = [p for p in exclude if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise InvalidInput(f"--exclude pattern(s) {unmatched} match no Linear layer; names look like {names[:3]}")
    modules = dict(dit.named_modules())
    return {n: modules[n] for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exclude)}


def calibration_images(
    images: str | Path | None, max_images: int | None = None, unreadable: list[tuple[str, str]] | None = None
) -> list[tuple[str, Image.Image]]:
    """(name, RGB image) pairs: a folder's images (sorted), or the built-in synthetic scenes when ``images`` is None.

    The built-in scenes are the ones shipped in ``calibration/images/`` (see ``fe2e_deploy.scenes``).
    An image that cannot be read is an error, or, given an ``unreadable`` list, skipped and recorded
    there as (path, reason); ``max_images`` counts the images read.
    """
    if max_images is not None and max_images < 1:
        raise InvalidInput(f"--max-images must be >= 1, got {max_images}")
    if images is None:
        count = min(COUNT, max_images or COUNT)
        return [(f"builtin:{scene_name(i)}", render_scene(i)) for i in range(count)]
    if Path(images).is_file():
        raise NotAFolder(f"{images}: is a file; give the folder of calibration images")
    paths = find_images(images)
    if not paths:
        raise MissingInput(f"{images}: no .jpg/.jpeg/.png calibration images found")
    pictures = []
    for path in paths:
        if max_images is not None and len(pictures) == max_images:
            break
        try:
            pictures.append((str(path), open_image(path)))
        except UnreadableInput as exc:
            if unreadable is None:
                raise
            unreadable.append((str(path), str(exc)))
    if not pictures:
        raise InvalidInput(f"{images}: no calibration image could be read ({unreadable[0][1]})")
    return pictures


@torch.no_grad()
def measure_scales(
    model: StrippedModel,
    linears: dict[str, nn.Linear],
    images: list[Image.Image],
    processing_res: tuple[int, int] | None = None,
    progress: bool = False,
) -> tuple[dict[str, LayerScales], list[tuple[int, int]]]:
    """Max-calibrate ``linears`` of a loaded stripped model on ``images``; returns (layers, resolutions used).

    ``layers[name]`` holds ``input_scale``/``weight_scale`` (amax / 448) and the amaxes themselves.
    """
    if not linears:
        raise InvalidInput("no Linear layer left to quantise (every one is excluded)")
    device = model.dit.img_in.weight.device
    amax = {name: torch.zeros((), device=device) for name in linears}

    def hook(name: str):
        def record(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            amax[name] = torch.maximum(amax[name], args[0].detach().abs().amax().float())

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in linears.items()]
    graphs: dict[tuple[int, int], FE2EGraph] = {}  # RoPE tables once per resolution
    try:
        for image in tqdm(images, desc="calibrate", unit="img", disable=not progress):
            size = processing_res or fe2e_processing_size(*image.size)
            if size not in graphs:
                graphs[size] = FE2EGraph(model.vae, model.dit, *size).to(device)
            graphs[size](preprocess(image, size).to(device))
    finally:
        for handle in handles:
            handle.remove()
    layers = {}
    for name, module in sorted(linears.items()):
        w_amax = float(module.weight.detach().abs().amax().float())
        x_amax = float(amax[name])
        if not all(math.isfinite(v) and v > 0 for v in (x_amax, w_amax)):
            raise InvalidInput(f"{name}: unusable range after calibration (input amax {x_amax}, weight amax {w_amax})")
        layers[name] = LayerScales(
            input_scale=x_amax / E4M3_MAX, weight_scale=w_amax / E4M3_MAX, input_amax=x_amax, weight_amax=w_amax
        )
    return layers, sorted(graphs)


@torch.no_grad()
def calibrate_fp8(
    stripped: str | Path,
    *,
    images: str | Path | None = None,
    processing_res: tuple[int, int] | None = None,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    max_images: int | None = None,
    progress: bool = True,
    device: str = "cpu",
    max_processing_pixels: int = MAX_PROCESSING_PIXELS,
) -> Fp8Scales:
    """Run the stripped model over the calibration images; returns the scales (``write_scales`` writes them).

    Images that cannot be read are skipped and listed under ``unreadable_images`` (``{"image", "reason"}``);
    images whose processing size is over ``max_processing_pixels`` under ``skipped_images``.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInput(f"device {device!r}: no CUDA GPU available here")
    read_stripped_meta(stripped)  # a missing or corrupt folder fails before the images are read
    unreadable: list[tuple[str, str]] = []
    pictures = calibration_images(images, max_images, unreadable)
    too_large: list[tuple[str, str]] = []
    for name, picture in list(pictures):
        try:
            size = processing_res or fe2e_processing_size(*picture.size)
            check_processing_pixels(size, max_processing_pixels, f"image {name}")
        except InvalidInput as exc:
            too_large.append((name, str(exc)))
            pictures.remove((name, picture))
    if not pictures:
        raise InvalidInput("no calibration image left to run (see the unreadable and skipped images)")
    model = load_stripped(stripped, device=device, progress=progress)
    linears = quantizable_linears(model.dit, exclude)
    layers, sizes = measure_scales(model, linears, [image for _, image in pictures], processing_res, progress)
    folder = Path(stripped)
    return Fp8Scales(
        fe2e_deploy=__version__,
        fp8="float8_e4m3fn, per-tensor scales, max calibration (scale = amax / 448)",
        stripped=CalibratedOn(
            path=str(folder),
            weights_sha256=sha256_file(folder / StrippedMeta.WEIGHTS),
            sources=model.meta.sources,
            dtype=model.meta.dtype,
        ),
        resolutions=sorted(resolution_name(s) for s in sizes),
        num_images=len(pictures),
        images=[name for name, _ in pictures],
        unreadable_images=[SkippedImage(path, reason) for path, reason in unreadable],
        skipped_images=[SkippedImage(path, reason) for path, reason in too_large],
        exclude_patterns=list(exclude),
        excluded=sorted(set(linear_names(model.dit)) - set(linears)),
        not_quantised=NOT_QUANTISED,
        layers=layers,
    )
