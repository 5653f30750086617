"""``calibrate``: per-tensor FP8 E4M3 scales (max calibration) for the DiT's linear layers.

The stripped model runs over calibration images; forward pre-hooks record the absolute maximum
of every quantised Linear's input, the weights' maxima are read directly; scale = amax / 448.
``img_in`` (x_embedder) and ``final_layer.linear`` stay in BF16 by default (first and last layer),
and the attention BMMs are never quantised (they are not Linear modules).

Why not NVIDIA ModelOpt: ``nvidia-modelopt`` 0.47 installs and max-calibrates on CPU here, but its
quantised modules do not export with the dynamo ONNX exporter our graphs use (the conversion fails)
and the TorchScript exporter emits ``trt::TRT_FP8QuantizeLinear`` custom ops that ONNX Runtime
cannot run, so the exported FP8 graph could not be verified here. Max calibration itself is a few
lines, and :mod:`fe2e_deploy.quantize.fp8` emits standard ONNX Q/DQ (opset 19) that both TensorRT
and ONNX Runtime read.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from .. import __version__
from ..atomic import atomic_write
from ..infer import read_image
from ..models.fused import FE2EGraph
from ..outputs import find_images
from ..pipeline import fe2e_processing_size, preprocess
from ..scenes import synthetic_scene
from ..strip import load_stripped

FORMAT, FORMAT_VERSION = "fe2e-fp8-scales", 1
E4M3_MAX = 448.0
DEFAULT_EXCLUDE = ("img_in", "final_layer.linear")
SYNTHETIC_IMAGES = 8


def quantizable_linears(dit: nn.Module, exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> dict[str, nn.Linear]:
    """The DiT's Linear modules (official names) not matched by an ``exclude`` glob pattern."""
    return {
        name: module
        for name, module in dit.named_modules()
        if isinstance(module, nn.Linear) and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    }


def calibration_images(images: str | Path | None, max_images: int | None):
    """(name, PIL image) pairs: a folder's images, or deterministic synthetic scenes when ``images`` is None."""
    if images is None:
        count = min(SYNTHETIC_IMAGES, max_images or SYNTHETIC_IMAGES)
        return [(f"synthetic-{i}", synthetic_scene(1024, 768, seed=100 + i)) for i in range(count)]
    paths = find_images(images)[:max_images]
    if not paths:
        raise FileNotFoundError(f"{images}: no .jpg/.jpeg/.png calibration images found")
    return [(str(p), read_image(p)) for p in paths]


@torch.no_grad()
def calibrate_fp8(
    stripped: str | Path,
    images: str | Path | None = None,
    processing_res: tuple[int, int] | None = None,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
    max_images: int | None = None,
    progress: bool = True,
) -> dict:
    """Run the stripped model over the calibration images; returns the scales document."""
    model = load_stripped(stripped)
    linears = quantizable_linears(model.dit, exclude)
    if not linears:
        raise ValueError(f"every Linear is excluded by {list(exclude)}")
    amax = {name: torch.zeros(()) for name in linears}

    def hook(name: str):
        def record(_module, args):
            amax[name] = torch.maximum(amax[name], args[0].detach().abs().max().float().cpu())

        return record

    handles = [module.register_forward_pre_hook(hook(name)) for name, module in linears.items()]
    pictures = calibration_images(images, max_images)
    sizes = set()
    try:
        for _, image in tqdm(pictures, desc="calibrate", unit="img", disable=not progress):
            size = processing_res or fe2e_processing_size(*image.size)
            sizes.add(size)
            FE2EGraph(model.vae, model.dit, *size)(preprocess(image, size))
    finally:
        for handle in handles:
            handle.remove()
    layers = {}
    for name, module in sorted(linears.items()):
        w_amax = float(module.weight.detach().abs().max().float())
        x_amax = float(amax[name])
        if x_amax <= 0 or w_amax <= 0:
            raise ValueError(f"{name}: zero range during calibration (input amax {x_amax}, weight amax {w_amax})")
        layers[name] = {
            "input_amax": x_amax,
            "weight_amax": w_amax,
            "input_scale": x_amax / E4M3_MAX,
            "weight_scale": w_amax / E4M3_MAX,
        }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fe2e_deploy": __version__,
        "fp8": "e4m3fn, per-tensor, max calibration",
        "stripped": {"path": str(stripped), "sources": model.meta["sources"], "dtype": model.meta["dtype"]},
        "resolutions": sorted(f"{w}x{h}" for w, h in sizes),
        "images": [name for name, _ in pictures],
        "excluded": sorted(set(quantizable_linears(model.dit, ())) - set(linears)),
        "exclude_patterns": list(exclude),
        "layers": layers,
    }


def write_scales(document: dict, path: str | Path, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: exists (pass --overwrite to replace it)")
    return atomic_write(path, lambda p: p.write_text(json.dumps(document, indent=2) + "\n"))


def load_scales(path: str | Path) -> dict:
    """A scales document (checked format)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: FP8 scales not found (run `fe2e-deploy calibrate`)")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not an FP8 scales file ({FORMAT} v{FORMAT_VERSION})")
    return document
