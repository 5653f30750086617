"""Run engines over datasets: accuracy against ground truth (:func:`evaluate_engine`) and agreement
between two engines (:func:`compare_engines`); reports are plain dicts, written as JSON."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..engines import Engine
from ..errors import InvalidInput, MissingInput
from ..files.atomic import write_json
from ..files.images import UnreadableInput, find_images, open_image
from .datasets import EvalDataset, Sample, open_dataset
from .kinds import DatasetKind
from .metrics import (
    DEPTH_METRICS,
    NORMAL_METRICS,
    PooledAngularErrors,
    angular_error,
    check_alignment,
    evaluate_depth,
    fit_scale_shift,
    mean_metrics,
    normal_metrics,
    normalize,
    relative_l2,
)
from .protocols import (
    check_protocol,
    fe2e_input,
    image_tensor,
    marigold_input,
    marigold_output,
    normal_errors,
    score_depth,
)

COMPARE_METRICS = ("depth_abs_rel", "depth_rel_l2", "normals_mean_deg")


def resize_map(x: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[H, W]`` or ``[H, W, C]`` to ``shape`` (half-pixel centres, like cv2 INTER_LINEAR)."""
    if x.shape[:2] == tuple(shape):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]
    t = F.interpolate(t, size=tuple(shape), mode="bilinear", align_corners=False)[0]
    return (t[0] if x.ndim == 2 else t.permute(1, 2, 0)).numpy()


def evaluate_engine(
    engine: Engine,
    dataset: EvalDataset | str | Path,
    task: str,
    alignment: str = "log",
    progress: bool = True,
    protocol: str = "infer",
    gpus: int = 1,
) -> dict:
    """Predict every image of ``dataset`` and score ``task`` against its ground truth.

    ``protocol`` (:mod:`.protocols`): ``fe2e`` (FE2E's official evaluation path, resize for resize),
    ``marigold`` (Marigold's, depth only) or ``infer`` (what ``infer`` writes, scored in float64; the
    default here, so that engines implementing only ``predict`` keep working; the CLI defaults to fe2e).
    Depth: per image, align, clip to the dataset's range, metrics on the valid pixels; ``metrics`` is the
    mean over images. Normals: angular errors of the valid pixels pooled over the dataset. Images
    without valid GT pixels are listed under ``skipped``; samples whose image or ground truth cannot be
    read under ``unreadable`` (``{"name", "reason"}``), and the others are scored. A path opens a
    generic-layout dataset. ``gpus`` > 1: the depth metrics are averaged as the official ``gpus``-GPU run
    averages them (:func:`shard_mean`); normals are pooled either way.
    """
    if not isinstance(dataset, EvalDataset):
        dataset = open_dataset(dataset, task)
    if dataset.task != task:
        raise InvalidInput(f"dataset was opened for {dataset.task}, not {task}")
    check_protocol(protocol, task)
    if gpus < 1:
        raise InvalidInput(f"gpus must be at least 1, got {gpus}")
    if task == "depth":
        check_alignment(alignment)
    per_image: list[dict] = []
    skipped: list[str] = []
    unreadable: list[dict] = []
    pooled = PooledAngularErrors()
    start = time.perf_counter()
    bar = tqdm(dataset.items, desc=f"evaluate {task} ({engine.name})", unit="img", disable=not progress)
    indices: list[int] = []  # each scored image's position in the dataset (the official shards are by position)
    for index, item in enumerate(bar):
        try:
            sample = dataset.load(item)
        except UnreadableInput as exc:
            unreadable.append({"name": item.name, "reason": str(exc)})
            continue
        n_valid = int(sample.valid.sum())
        if n_valid == 0:
            skipped.append(sample.name)
            continue
        if protocol == "infer":
            m = _score_infer(engine, sample, task, alignment, dataset.kind, pooled)
        else:
            m = _score_official(engine, sample, task, alignment, dataset.kind, pooled, protocol)
        per_image.append({"name": sample.name, "valid_pixels": n_valid, **m})
        indices.append(index)
    if not per_image:
        if unreadable:
            first = unreadable[0]["reason"]
            raise InvalidInput(
                f"{dataset.root}: no sample could be scored ({len(unreadable)} unreadable, e.g. {first})"
            )
        raise InvalidInput(f"{dataset.root}: no image has valid ground-truth pixels")
    if task == "depth":
        values = [{k: m[k] for k in DEPTH_METRICS} for m in per_image]
        metrics = mean_metrics(values) if gpus == 1 else shard_mean(values, indices, len(dataset), gpus)
    else:
        metrics = pooled.result()
    return {
        "task": task,
        "engine": engine.name,
        "dataset": dataset.describe(),
        "protocol": protocol,
        "alignment": alignment if task == "depth" else None,
        "aggregation": _aggregation(task, gpus),
        "num_images": len(per_image),
        "skipped": skipped,
        "unreadable": unreadable,
        "seconds": time.perf_counter() - start,
        "metrics": metrics,
        "per_image": per_image,
    }


def shard_mean(values: list[dict[str, float]], indices: list[int], total: int, gpus: int) -> dict[str, float]:
    """The official multi-GPU depth result: the dataset cut into ``gpus`` contiguous shards of
    ``total // gpus`` images (the last takes the rest), each shard's mean over its images, then the mean
    of the shard means (``evaluation.py``: ``np.mean`` of the gathered ``MetricTracker`` averages).
    A shard without a scored image (fewer images than GPUs) is left out; the official code would average
    in its empty tracker's zeros."""
    size = total // gpus
    shards: dict[int, list[dict[str, float]]] = {}
    for index, value in zip(indices, values, strict=True):
        shard = min(index // size, gpus - 1) if size else gpus - 1
        shards.setdefault(shard, []).append(value)
    return mean_metrics([mean_metrics(shard) for _, shard in sorted(shards.items())])


def _aggregation(task: str, gpus: int) -> str:
    if task != "depth":
        return "pooled over all valid pixels"
    return (
        "mean over images" if gpus == 1 else f"mean of the means of {gpus} contiguous shards (official {gpus}-GPU run)"
    )


def _score_infer(
    engine: Engine, sample: Sample, task: str, alignment: str, kind: DatasetKind, pooled: PooledAngularErrors
) -> dict[str, float]:
    """``infer``'s prediction (at the image's size), resized bilinearly to the GT, scored in float64."""
    pred = engine.predict(sample.image)
    if task == "depth":
        depth = resize_map(pred.depth, sample.gt.shape)
        return evaluate_depth(depth, sample.gt, sample.valid, alignment, kind.min_depth, kind.max_depth)
    normals = normalize(resize_map(pred.normals, sample.gt.shape[:2]))
    errors = angular_error(normals[sample.valid], sample.gt[sample.valid])
    pooled.add(errors)
    return normal_metrics(errors)


def _score_official(
    engine: Engine,
    sample: Sample,
    task: str,
    alignment: str,
    kind: DatasetKind,
    pooled: PooledAngularErrors,
    protocol: str,
) -> dict[str, float]:
    """The official path (:mod:`.protocols`): the engine's raw maps at the processing size, resized once."""
    size = engine.processing_size(sample.image)
    image = image_tensor(sample.image)
    x = fe2e_input(image, size) if protocol == "fe2e" else marigold_input(image, size)
    depth, normals = engine.run_maps(x, size)
    if task == "depth":
        if protocol == "marigold":
            pred = marigold_output(depth, sample.image.size)
            return score_depth(
                pred, sample.gt, sample.valid, alignment, kind.min_depth, kind.max_depth, kind.align_max_res
            )
        return score_depth(depth[0, 0].numpy(), sample.gt, sample.valid, alignment, kind.min_depth, kind.max_depth)
    errors = normal_errors(normals, sample.gt, sample.valid)
    pooled.add(errors)
    return normal_metrics(errors)


def compare_predictions(pred_a, pred_b) -> dict[str, float]:
    """How far prediction B is from A (the reference), for one image.

    ``depth_abs_rel``: both depth maps are log depth up to an affine map, so B is aligned to A by a
    least-squares scale and shift over all pixels (``b' = s * b + t``), both are mapped to positive
    pseudo-depths ``exp(a)`` and ``exp(b')``, and AbsRel = mean |exp(b') - exp(a)| / exp(a).
    ``depth_rel_l2``: ||b - a|| / ||a|| on the raw [0, 1] maps (no alignment).
    ``normals_mean_deg``: mean angle between the (normalised) normal maps, in degrees.
    """
    a = np.asarray(pred_a.depth, dtype=np.float64)
    b = np.asarray(pred_b.depth, dtype=np.float64)
    if a.shape != b.shape or pred_a.normals.shape != pred_b.normals.shape:
        raise ValueError(f"prediction shapes differ: {a.shape} vs {b.shape}")
    scale, shift = fit_scale_shift(b, a, np.ones(a.shape, dtype=bool))
    ea = np.exp(a)
    abs_rel = float(np.mean(np.abs(np.exp(b * scale + shift) - ea) / ea))
    rel_l2 = relative_l2(b, a)
    return {
        "depth_abs_rel": abs_rel,
        "depth_rel_l2": rel_l2,
        "normals_mean_deg": float(np.mean(angular_error(pred_a.normals, pred_b.normals))),
    }


def compare_engines(
    engine_a: Engine,
    engine_b: Engine,
    images: str | Path | Iterable[str | Path],
    progress: bool = True,
) -> dict:
    """Run both engines on ``images`` (a folder, searched recursively, or a list of files) and
    report :func:`compare_predictions` per image, its mean (``overall``) and its maximum (``worst``).

    Images that cannot be read are skipped and listed under ``unreadable`` (``{"name", "reason"}``).
    """
    root = Path(images) if isinstance(images, str | Path) else None
    paths = find_images(root) if root is not None else [Path(p) for p in images]
    if not paths:
        raise MissingInput(f"{root}: no .jpg/.jpeg/.png images found" if root else "no images given")
    per_image, unreadable = [], []
    for path in tqdm(paths, desc=f"compare {engine_a.name} vs {engine_b.name}", unit="img", disable=not progress):
        name = path.relative_to(root).as_posix() if root is not None else str(path)
        try:
            image = open_image(path)
        except UnreadableInput as exc:
            unreadable.append({"name": name, "reason": str(exc)})
            continue
        m = compare_predictions(engine_a.predict(image), engine_b.predict(image))
        per_image.append({"name": name, **m})
    if not per_image:
        raise InvalidInput(f"{root or 'images'}: no image could be read ({unreadable[0]['reason']})")
    values = {k: [m[k] for m in per_image] for k in COMPARE_METRICS}
    return {
        "engine_a": engine_a.name,
        "engine_b": engine_b.name,
        "images": str(root) if root is not None else None,
        "num_images": len(per_image),
        "overall": {k: float(np.mean(v)) for k, v in values.items()},
        "worst": {k: float(np.max(v)) for k, v in values.items()},
        "unreadable": unreadable,
        "per_image": per_image,
    }


def format_table(metrics: dict[str, float], keys: Iterable[str] | None = None, digits: int = 4) -> str:
    """Two aligned rows: metric names and values."""
    keys = list(keys or metrics)
    cells = [f"{metrics[k]:.{digits}f}" for k in keys]
    widths = [max(len(k), len(c)) for k, c in zip(keys, cells, strict=True)]
    head = "  ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True))
    row = "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True))
    return f"{head}\n{row}"


def metrics_table(report: dict) -> str:
    """The table ``evaluate`` prints for a report of :func:`evaluate_engine`."""
    if report["task"] == "depth":
        return format_table(report["metrics"], DEPTH_METRICS, 4)
    return format_table(report["metrics"], NORMAL_METRICS, 3)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_report(path: str | Path, report: dict, overwrite: bool = False) -> Path:
    """Write ``report`` as JSON atomically (non-finite numbers as null); refuse to replace a file."""
    return write_json(path, _jsonable(report), overwrite=overwrite)
