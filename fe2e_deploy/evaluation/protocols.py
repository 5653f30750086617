"""How a prediction is made and scored: FE2E's evaluation path, Marigold's, or ``infer``'s own.

``fe2e`` (the official ``evaluation.py`` -> ``infer/inner_evaluation.py`` path, AMAP-ML/FE2E):

- input: the image as a float tensor in [0, 1] (``uint8 / 255``), resized to the processing size by
  ``F.interpolate(bilinear, align_corners=False)`` without antialiasing, clamped to [0, 1], then
  ``* 2 - 1`` (``ImageGenerator.input_process_image`` on a tensor);
- depth: the [0, 1] map (mean of the clamped decoded RGB) resized from the processing size straight
  to the ground truth's size by ``cv2.resize(INTER_LINEAR)`` (:func:`.resize.cv2_resize_linear`),
  aligned, clipped to the dataset's range and to >= 1e-6, scored in float32 with ``util/metric.py``;
- normals: the decoded map (clamped to [-1, 1]) resized to the image's size by ``F.interpolate``
  (bilinear, no antialiasing), divided by its norm (floored at 1e-9), angular errors in float32
  (``torch.cosine_similarity``, ``acos``), pooled over the dataset (``util/normal_utils.py``).

``marigold`` (prs-eth/Marigold ``infer.py`` + ``eval.py``, depth only): the uint8 image resized with
torchvision's ``resize`` (bilinear, antialiased, rounded back to uint8), the prediction resized to the
input's size the same way (antialiased) and clipped to [0, 1], the fit of the alignment made on a
nearest-neighbour copy no larger than the dataset's ``alignment_max_res`` (ETH3D: 1024), then scored
as ``fe2e`` does. The processing size stays FE2E's (an FE2E engine runs only there).

``infer``: what ``fe2e-deploy infer`` writes (PIL bicubic input resize, antialiased output resize to
the input's size, then a bilinear resize to the ground truth), scored in float64: the toolkit's own
path, kept for engines that only implement ``predict`` and for comparing with earlier reports.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidInput
from .resize import cv2_resize_linear

PROTOCOLS = ("fe2e", "marigold", "infer")


def check_protocol(protocol: str, task: str) -> str:
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"protocol {protocol!r} not supported; choose one of {', '.join(PROTOCOLS)}")
    if protocol == "marigold" and task != "depth":
        raise InvalidInput("the marigold protocol scores depth only (Marigold's evaluation has no normals); use fe2e")
    return protocol


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB image as ``[1, 3, H, W]`` float32 in [0, 1]: ``uint8 / 255`` (``to_tensor``, ``cv2.imread / 255``)."""
    array = np.array(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array).permute(2, 0, 1)[None].float().div(255.0)


def fe2e_input(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The official ``input_process_image`` on a tensor, then ``* 2 - 1``: ``[1, 3, h, w]`` in [-1, 1]."""
    width, height = size
    resized = F.interpolate(image, (height, width), mode="bilinear", align_corners=False).clamp(0, 1)
    return resized * 2 - 1


def marigold_input(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Marigold's ``resize_max_res``: torchvision ``resize`` of the uint8 image (bilinear, antialiased, rounded)."""
    width, height = size
    rgb = torch.round(image * 255.0)  # the uint8 values, exactly
    if rgb.shape[-2:] != (height, width):
        rgb = F.interpolate(rgb, (height, width), mode="bilinear", align_corners=False, antialias=True)
        rgb = torch.round(rgb).clamp(0, 255)  # torchvision rounds before casting back to uint8
    return rgb / 255.0 * 2.0 - 1.0


def marigold_output(depth: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Marigold's pipeline output: ``[1, 1, h, w]`` resized to (W, H) (bilinear, antialiased), clipped to [0, 1]."""
    width, height = size
    if depth.shape[-2:] != (height, width):
        depth = F.interpolate(depth, (height, width), mode="bilinear", align_corners=False, antialias=True)
    return depth[0, 0].numpy().astype(np.float32).clip(0, 1)


def _lstsq_fit(pred: np.ndarray, target: np.ndarray, mask: np.ndarray, max_res: int | None) -> tuple:
    """``align_depth_least_square``'s fit: float32 scale and shift (numpy solves in float64, returns float32)."""
    if max_res is not None:
        factor = float(np.min(max_res / np.array(pred.shape[-2:])))
        if factor < 1:  # torch.nn.Upsample(scale_factor, nearest) on [1, H, W]
            down = torch.nn.Upsample(scale_factor=factor, mode="nearest")
            target = down(torch.as_tensor(target)[None]).numpy()
            pred = down(torch.as_tensor(pred)[None]).numpy()
            mask = down(torch.as_tensor(mask)[None].float()).bool().numpy()
    x = pred[mask].reshape(-1, 1)
    if x.size == 0:
        raise InvalidInput("no valid pixels to fit the scale and shift on")
    a = np.concatenate([x, np.ones_like(x)], axis=-1)
    scale, shift = np.linalg.lstsq(a, target[mask].reshape(-1, 1), rcond=None)[0]
    return scale, shift


def official_align(
    pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, alignment: str, max_res: int | None = None
) -> np.ndarray:
    """FE2E's / Marigold's alignment of a float32 prediction to float32 GT (``log``: FE2E's ``log_space``,
    ``depth``: ``least_square``, ``disparity``: Marigold's ``least_square_disparity``); ``none`` returns it."""
    if alignment == "none":
        return pred
    if alignment == "depth":
        scale, shift = _lstsq_fit(pred, gt, valid, max_res)
        return pred * scale + shift
    positive = gt > 0
    transformed = np.zeros_like(gt)
    transformed[positive] = np.log(gt[positive]) if alignment == "log" else 1.0 / gt[positive]
    scale, shift = _lstsq_fit(pred, transformed, valid & positive & (pred > 0), max_res)
    aligned = pred * scale + shift
    if alignment == "log":
        return np.exp(np.clip(aligned, None, 5.0))
    aligned = np.clip(aligned, 1e-3, None)
    depth = np.zeros_like(aligned)
    depth[aligned > 0] = 1.0 / aligned[aligned > 0]
    return depth


def official_depth_metrics(depth: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """``util/metric.py`` on one image, in float32 torch: invalid pixels zeroed, sums over the whole map."""
    p, g, m = torch.from_numpy(depth), torch.from_numpy(gt), torch.from_numpy(valid)
    n = m.sum((-1, -2))

    def masked_mean(values: torch.Tensor) -> torch.Tensor:
        values[~m] = 0
        return torch.sum(values, (-1, -2)) / n

    ratio = torch.max(p / g, g / p)
    return {
        "abs_rel": masked_mean(torch.abs(p - g) / g).item(),
        "sq_rel": masked_mean(torch.pow(torch.abs(p - g), 2) / g).item(),
        "rmse": torch.sqrt(masked_mean(torch.pow(p - g, 2))).item(),
        "rmse_log": torch.sqrt(masked_mean(torch.pow(torch.log(p) - torch.log(g), 2))).item(),
        **{
            f"delta{k}": (torch.sum((ratio < 1.25**k).float() * m.float(), (-1, -2)) / n.clamp(min=1).float()).item()
            for k in (1, 2, 3)
        },
    }


def score_depth(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray,
    alignment: str,
    min_depth: float,
    max_depth: float,
    align_max_res: int | None = None,
) -> dict[str, float]:
    """One image the official way: ``pred`` ([0, 1], any size) resized to the GT by ``cv2.INTER_LINEAR`` when
    the sizes differ, aligned, clipped to ``[min_depth, max_depth]`` and to >= 1e-6, scored in float32."""
    pred = np.asarray(pred, dtype=np.float32)
    gt = np.asarray(gt, dtype=np.float32)
    if pred.shape != gt.shape:
        pred = cv2_resize_linear(pred, (gt.shape[1], gt.shape[0]))
    depth = official_align(pred, gt, valid, alignment, align_max_res)
    depth = np.clip(depth, min_depth, None if math.isinf(max_depth) else max_depth)
    depth = np.clip(depth, 1e-6, None).astype(np.float32)
    return official_depth_metrics(depth, gt, valid)


def normal_errors(normals: torch.Tensor, gt: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Float32 angular errors (degrees) of the valid pixels: ``normals`` ``[1, 3, h, w]`` (decoded, not yet
    unit) resized to the GT's size (bilinear, no antialiasing), normalised (norm floored at 1e-9)."""
    height, width = gt.shape[:2]
    if normals.shape[-2:] != (height, width):
        normals = F.interpolate(normals, size=(height, width), mode="bilinear", align_corners=False)
    norm = torch.linalg.norm(normals, axis=1, keepdims=True)
    norm[norm < 1e-9] = 1e-9
    normals = normals / norm
    target = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32)).permute(2, 0, 1)[None]
    cos = torch.clamp(torch.cosine_similarity(normals, target, dim=1), min=-1.0, max=1.0)
    errors = torch.acos(cos) * 180.0 / np.pi
    return errors[0][torch.from_numpy(valid)].numpy()
