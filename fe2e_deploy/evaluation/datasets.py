"""Evaluation datasets on disk: the generic folder layout, DSINE's folder layout, and the benchmarks' own
layouts (Marigold's depth sets and DSINE's normal sets with their split lists: ``official_layouts.py``).

Generic layout (also used for Marigold's sets, once arranged in it; see docs/evaluation.md)::

    DIR/rgb/<name>.png|jpg        the input images (sub-folders allowed)
    DIR/depth/<name>.npy|png      depth in metres (.npy float, 0 = invalid) or 16-bit PNG / depth_scale
    DIR/normals/<name>.npy|png    [H, W, 3] unit vectors (.npy) or 8-bit PNG (n + 1) / 2 * 255
    DIR/mask/<name>.png|npy       optional, nonzero = valid
    DIR/dataset.json              optional, {"min_depth": ..., "max_depth": ...} (null = no bound)

DSINE layout (``kind="dsine"``, normals only): ``DIR/**/<stem>_img.png|jpg`` with ``<stem>_normal.png``
beside it (8-bit, (n + 1) / 2 * 255, all-zero pixels invalid).

The masks, crops and depth ranges are the benchmark's (``kinds.py``) in every layout.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InvalidInput, MissingInput
from ..files.images import (
    IMAGE_SUFFIXES,
    READ_ERRORS,
    UnreadableInput,
    find_images,
    open_image,
    read_image,
    reason_without_path,
)
from .kinds import DATASET_KINDS, KB_CROP_HW, KITTI_EIGEN_CROP, NYU_EIGEN_CROP, TASKS, DatasetKind
from .metrics import finite_pixels, normal_valid_mask
from .official_layouts import (
    TarFolder,
    bundled_split,
    depth_split_rows,
    normal_ground_truth,
    read_marigold_depth,
    read_official_normals,
    read_split,
)

#: How the files of a dataset are laid out: see docs/evaluation.md.
LAYOUTS = ("generic", "dsine", "marigold-split", "dsine-split")


def read_input(kind: str, path: Path, read, *args):
    """``read(path, *args)``; a broken file is :class:`UnreadableInput` naming it (our own ValueErrors pass)."""
    try:
        return read(path, *args)
    except UnreadableInput:
        raise
    except READ_ERRORS as exc:
        if isinstance(exc, ValueError) and str(path) in str(exc):  # already says what is wrong with the file
            raise UnreadableInput(str(exc)) from None
        raise UnreadableInput(f"{path}: unreadable {kind} ({reason_without_path(exc, path)})") from None


@dataclass(frozen=True)
class Item:
    name: str  # the image's path relative to the dataset folder
    image: Path
    gt: Path
    mask: Path | None = None


@dataclass
class Sample:
    name: str
    image: Image.Image  # RGB
    gt: np.ndarray  # depth [H, W] metres, or normals [H, W, 3] (float32 in the official layouts, else float64)
    valid: np.ndarray  # [H, W] bool: GT valid (finite, in range / non-zero), inside the mask and the evaluation crop


@dataclass
class EvalDataset:
    root: Path
    task: str
    kind: DatasetKind
    items: list[Item] = field(default_factory=list)
    depth_scale: float = 1000.0
    layout: str = "generic"  # one of LAYOUTS
    archive: TarFolder | None = None  # a Marigold evaluation tar read in place (marigold-split layout)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Sample]:
        return (self.load(item) for item in self.items)

    def describe(self) -> dict:
        """What the report records about the dataset (``None`` for an unbounded range)."""
        out = {"path": str(self.root), "kind": self.kind.name, "task": self.task, "num_images": len(self)}
        out["layout"] = self.layout
        if self.task == "depth":
            out["min_depth"] = self.kind.min_depth
            out["max_depth"] = None if math.isinf(self.kind.max_depth) else self.kind.max_depth
            out["png_depth_scale"] = self.depth_scale
        return out

    def load(self, item: Item) -> Sample:
        """One sample; a file that cannot be read (or does not fit the others) is :class:`UnreadableInput`.

        Every layout's samples pass here: pixels with non-finite GT (NaN, +/-Inf) are never valid.
        """
        sample = self._read(item)
        sample.valid = sample.valid & finite_pixels(sample.gt)
        return sample

    def _read(self, item: Item) -> Sample:
        """The sample as its layout's loader reads it (validity by the benchmark's own rules)."""
        read = open_image if self.archive is None else partial(read_input, "image", read=self._archive_image)
        image = read(item.image)
        if self.layout == "dsine-split":
            gt, valid = read_input("normal ground truth", item.gt, read_official_normals, image.size)
            if gt.shape[:2] != (image.height, image.width):
                size = (image.height, image.width)
                raise UnreadableInput(f"{item.gt}: normals are {gt.shape[:2]}, image {item.image} is {size}")
            return Sample(item.name, image, gt, valid)
        if self.task == "normals":
            gt, raw_valid = read_input("normal ground truth", item.gt, read_normals)
            mask = self._mask(item, gt.shape[:2])
            valid = normal_valid_mask(gt, mask)
            return Sample(item.name, image, gt, valid if raw_valid is None else valid & raw_valid)
        if self.layout == "marigold-split":
            gt = read_input("depth ground truth", item.gt, self._marigold_depth, image.size)
        else:
            gt = read_input("depth ground truth", item.gt, read_depth, self.depth_scale)
        mask = self._mask(item, gt.shape)
        if self.kind.kitti_benchmark_crop:
            image, gt = kitti_benchmark_crop_image(image), kitti_benchmark_crop(gt)
            mask = None if mask is None else kitti_benchmark_crop(mask)
        return Sample(item.name, image, gt, self.depth_valid(gt, mask))

    def _source(self, path: Path) -> Path | io.BytesIO:
        """The file itself, or its bytes when the dataset is a tar archive read in place."""
        return path if self.archive is None else self.archive.open(path.relative_to(self.root).as_posix())

    def _archive_image(self, path: Path) -> Image.Image:
        return read_image(self._source(path))

    def _marigold_depth(self, path: Path, image_size: tuple[int, int]) -> np.ndarray:
        return read_marigold_depth(self._source(path), self.kind.name, image_size)

    def _marigold_mask(self, path: Path) -> np.ndarray:
        return np.load(self._source(path)).squeeze() != 0  # DIODE's .npy masks (``.astype(bool)``)

    def _mask(self, item: Item, shape: tuple[int, ...]) -> np.ndarray | None:
        read = self._marigold_mask if self.layout == "marigold-split" else read_mask
        mask = None if item.mask is None else read_input("mask", item.mask, read)
        if mask is not None and mask.shape != shape:
            raise UnreadableInput(f"{item.mask}: mask is {mask.shape}, ground truth {item.gt} is {shape}")
        return mask

    def depth_valid(self, gt: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """The official loaders' valid region: ``min < gt < max`` (compared in float32, as there) and the mask
        (DIODE: the mask alone), inside the evaluation crop."""
        if self.kind.mask_is_valid_region and mask is not None:
            valid = mask.copy()
        else:
            gt32 = np.asarray(gt, dtype=np.float32)
            valid = (gt32 > np.float32(self.kind.min_depth)) & (gt32 < np.float32(self.kind.max_depth))
            valid = valid if mask is None else valid & mask
        return valid & eval_crop_mask(gt.shape, self.kind.eval_crop)


def read_depth(path: Path, png_scale: float) -> np.ndarray:
    """Depth in metres: ``.npy`` as stored, 16-bit ``.png`` divided by ``png_scale``."""
    if path.suffix.lower() == ".npy":
        depth = np.load(path).astype(np.float64)
    else:
        with Image.open(path) as im:
            if im.mode not in ("I;16", "I;16B", "I;16L", "I"):
                raise InvalidInput(f"{path}: depth PNG must be 16-bit grayscale, got mode {im.mode}")
            depth = np.asarray(im, dtype=np.float64) / png_scale
    depth = np.squeeze(depth)
    if depth.ndim != 2:
        raise InvalidInput(f"{path}: depth must be [H, W], got shape {depth.shape}")
    return depth  # NaN and +/-Inf are kept (and are invalid: :meth:`EvalDataset.load`)


def read_normals(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Normals ``[H, W, 3]`` and, for PNGs, the valid pixels (not all-zero, as in DSINE)."""
    if path.suffix.lower() == ".npy":
        normals = np.load(path).astype(np.float64)
        if normals.ndim != 3 or normals.shape[2] != 3:
            raise InvalidInput(f"{path}: normals must be [H, W, 3], got shape {normals.shape}")
        return normals, None
    with Image.open(path) as im:
        if im.mode not in ("RGB", "RGBA"):
            raise InvalidInput(f"{path}: normal PNG must be 8-bit RGB, got mode {im.mode}")
        raw = np.asarray(im)[..., :3]
    return raw.astype(np.float64) / 255.0 * 2.0 - 1.0, raw.astype(np.int64).sum(axis=-1) > 0


def read_mask(path: Path) -> np.ndarray:
    """Nonzero = valid; ``.png`` (first channel) or ``.npy`` (DIODE's: ``.astype(bool)``)."""
    if path.suffix.lower() == ".npy":
        mask = np.squeeze(np.load(path))
    else:
        with Image.open(path) as im:
            mask = np.asarray(im)
        if mask.ndim == 3:
            mask = mask[..., 0]
    if mask.ndim != 2:
        raise InvalidInput(f"{path}: mask must be [H, W], got shape {mask.shape}")
    return mask != 0


def kitti_benchmark_crop(x: np.ndarray) -> np.ndarray:
    """Bottom-centre 352 x 1216 crop (no-op on smaller arrays)."""
    h, w = x.shape[:2]
    ch, cw = KB_CROP_HW
    if h < ch or w < cw:
        return x
    top, left = h - ch, (w - cw) // 2
    return x[top : top + ch, left : left + cw]


def kitti_benchmark_crop_image(image: Image.Image) -> Image.Image:
    w, h = image.size
    ch, cw = KB_CROP_HW
    if h < ch or w < cw:
        return image
    top, left = h - ch, (w - cw) // 2
    return image.crop((left, top, left + cw, top + ch))


def eval_crop_mask(shape: tuple[int, ...], crop: str | None) -> np.ndarray:
    """The evaluation region of NYUv2 (Eigen: rows 45:471, columns 41:601 of any GT, as the official loader)
    and KITTI (Eigen, fractions of the size)."""
    h, w = shape[:2]
    if crop is None:
        return np.ones((h, w), dtype=bool)
    mask = np.zeros((h, w), dtype=bool)
    if crop == "nyu_eigen":
        mask[NYU_EIGEN_CROP] = True
    elif crop == "kitti_eigen":
        (y0, y1), (x0, x1) = KITTI_EIGEN_CROP
        mask[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = True
    else:
        raise InvalidInput(f"unknown evaluation crop {crop!r}")
    return mask


def read_range_file(path: Path, kind: DatasetKind) -> DatasetKind:
    """Apply ``dataset.json`` (``min_depth`` / ``max_depth``, null = unbounded) over the kind's range."""
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(spec, dict) or set(spec) - {"min_depth", "max_depth"}:
        raise InvalidInput(f"{path}: expected an object with only 'min_depth' and 'max_depth'")
    lo = kind.min_depth if "min_depth" not in spec else (0.0 if spec["min_depth"] is None else spec["min_depth"])
    hi = kind.max_depth if "max_depth" not in spec else (math.inf if spec["max_depth"] is None else spec["max_depth"])
    if not all(isinstance(v, int | float) for v in (lo, hi)) or not 0 <= lo < hi:
        raise InvalidInput(f"{path}: need numbers 0 <= min_depth < max_depth, got {lo!r}, {hi!r}")
    return replace(kind, min_depth=float(lo), max_depth=float(hi))


def find_ground_truth(folder: Path, rel_stem: Path, image: Path, what: str) -> Path:
    for suffix in (".npy", ".png"):
        path = folder / rel_stem.with_name(rel_stem.name + suffix)
        if path.is_file():
            return path
    expected = folder / rel_stem.with_name(rel_stem.name + ".npy")
    raise MissingInput(f"{expected}: {what} not found for {image} (also looked for .png)")


def _generic_items(root: Path, task: str, limit: int | None) -> list[Item]:
    rgb = root / "rgb"
    if not rgb.is_dir():
        raise MissingInput(f"{rgb}: image folder not found (expected the layout of docs/evaluation.md)")
    gt_dir = root / ("depth" if task == "depth" else "normals")
    items = []
    for image in find_images(rgb)[:limit]:
        rel = image.relative_to(rgb)
        rel_stem = rel.with_suffix("")
        gt = find_ground_truth(gt_dir, rel_stem, image, f"{task} ground truth")
        masks = [root / "mask" / rel_stem.with_name(rel_stem.name + s) for s in (".png", ".npy")]
        mask = next((m for m in masks if m.is_file()), None)
        items.append(Item(rel.as_posix(), image, gt, mask))
    return items


def _dsine_items(root: Path, limit: int | None) -> list[Item]:
    items = []
    for image in [p for p in find_images(root) if p.stem.endswith("_img")][:limit]:
        gt = image.with_name(image.stem[: -len("_img")] + "_normal.png")
        if not gt.is_file():
            raise MissingInput(f"{gt}: normal ground truth not found for {image}")
        items.append(Item(image.relative_to(root).as_posix(), image, gt))
    return items


def _split_file_items(
    root: Path, task: str, kind: DatasetKind, split: Path, limit: int | None, archive: TarFolder | None = None
) -> list[Item]:
    """Items of a benchmark's own layout: Marigold's split list (depth) or DSINE's (normals)."""
    items = []
    if task == "depth":
        for image, depth, mask in depth_split_rows(split, kind.name)[:limit]:
            item = Item(image, root / image, root / depth, None if mask is None else root / mask)
            for rel, what in ((image, "image"), (depth, "depth ground truth"), (mask, "mask")):
                found = rel is None or (archive.has(rel) if archive else (root / rel).is_file())
                if not found:
                    raise MissingInput(f"{root / rel}: {what} not found (listed in {split})")
            items.append(item)
        return items
    for row in read_split(split)[:limit]:
        image = root / row[0]
        if not image.is_file() or "_img" not in image.name:
            raise MissingInput(f"{image}: image not found (listed in {split}; expected <stem>_img.<ext>)")
        items.append(Item(row[0], image, normal_ground_truth(image, kind.normal_set)))
    return items


def choose_layout(root: Path, task: str, kind: DatasetKind, split_file: Path | None) -> str:
    """``dsine`` for the dsine kind; a benchmark's own layout with a split list; else the generic layout."""
    if kind.name == "dsine":
        if split_file is not None:
            raise InvalidInput("--split-file is for the benchmark kinds; the dsine kind finds every *_img file")
        return "dsine"
    official = kind.normal_set if task == "normals" else kind.name in ("nyu", "kitti", "eth3d", "scannet", "diode")
    if split_file is not None and not official:
        raise InvalidInput(f"--split-file needs a benchmark kind with an official {task} layout, not {kind.name!r}")
    if split_file is not None or (task == "normals" and official and not (root / "rgb").is_dir()):
        return "dsine-split" if task == "normals" else "marigold-split"
    if kind.name != "generic" and not (root / "rgb").is_dir() and task == "depth":
        raise MissingInput(
            f"{root}: no rgb/ folder (the generic layout); for {kind.name}'s own layout give --split-file "
            "(Marigold's split list, see docs/evaluation.md)"
        )
    return "generic"


def open_dataset(
    root: str | Path,
    task: str,
    kind: str = "generic",
    depth_scale: float | None = None,
    max_images: int | None = None,
    split_file: str | Path | None = None,
) -> EvalDataset:
    """Index a dataset folder and check that every image (of the first ``max_images``) has its GT.

    ``split_file``: read the benchmark's own layout from this list (normals of nyu, scannet, ibims,
    sintel and oasis use FE2E's bundled lists when the folder has no ``rgb/``).
    """
    root = Path(root)
    if task not in TASKS:
        raise InvalidInput(f"task {task!r} not supported; choose one of {', '.join(TASKS)}")
    if kind not in DATASET_KINDS:
        raise InvalidInput(f"dataset kind {kind!r} not supported; choose one of {', '.join(DATASET_KINDS)}")
    spec = DATASET_KINDS[kind]
    if task not in spec.tasks:
        raise InvalidInput(f"dataset kind {kind!r} has {' and '.join(spec.tasks)} ground truth only, not {task}")
    archive = None
    if root.is_file() and task == "depth" and split_file is not None and kind != "generic":
        archive = TarFolder(root)  # a Marigold evaluation tar, as downloaded
    elif not root.is_dir():
        raise MissingInput(f"{root}: dataset folder not found")
    if depth_scale is not None and not depth_scale > 0:
        raise InvalidInput(f"depth scale must be positive, got {depth_scale}")
    if max_images is not None and max_images < 1:
        raise InvalidInput(f"max images must be at least 1, got {max_images}")
    split = None if split_file is None else Path(split_file)
    if split is not None and not split.is_file():
        raise MissingInput(f"{split}: split list not found")
    layout = choose_layout(root, task, spec, split)
    if archive is None and (root / "dataset.json").is_file():
        spec = read_range_file(root / "dataset.json", spec)
    if layout == "dsine":
        items = _dsine_items(root, max_images)
    elif layout == "generic":
        items = _generic_items(root, task, max_images)
    else:
        split = split or bundled_split(spec.normal_split)
        items = _split_file_items(root, task, spec, split, max_images, archive)
    if not items:
        where = {"dsine": "**/*_img", "generic": "rgb/"}.get(layout, f"listed ({split})")
        raise MissingInput(f"{root}: no {where} images ({', '.join(IMAGE_SUFFIXES)}) found")
    return EvalDataset(root, task, spec, items, depth_scale or spec.png_depth_scale, layout, archive)
