"""Dataset kinds: depth range, 16-bit PNG depth divisor and evaluation crops per benchmark family."""

from __future__ import annotations

import math
from dataclasses import dataclass

TASKS = ("depth", "normals")


KB_CROP_HW = (352, 1216)  # KITTI benchmark crop (bottom centre), as in Marigold


NYU_EIGEN_CROP = (slice(45, 471), slice(41, 601))  # on 480 x 640 NYUv2 frames


KITTI_EIGEN_CROP = ((0.3324324, 0.91351351), (0.0359477, 0.96405229))  # fractions of (height, width)


@dataclass(frozen=True)
class DatasetKind:
    """How to read one family of datasets: depth range, 16-bit PNG depth divisor, evaluation crops."""

    name: str
    min_depth: float = 0.0
    max_depth: float = math.inf
    png_depth_scale: float = 1000.0
    tasks: tuple[str, ...] = TASKS
    eval_crop: str | None = None  # "nyu_eigen" | "kitti_eigen": evaluation mask (depth only)
    kitti_benchmark_crop: bool = False  # crop image and depth to 352 x 1216 (depth only)


DATASET_KINDS = {
    "generic": DatasetKind("generic"),
    "nyu": DatasetKind("nyu", 1e-3, 10.0, 1000.0, ("depth",), eval_crop="nyu_eigen"),
    "kitti": DatasetKind("kitti", 1e-5, 80.0, 256.0, ("depth",), eval_crop="kitti_eigen", kitti_benchmark_crop=True),
    "eth3d": DatasetKind("eth3d", 1e-5, math.inf, 1000.0, ("depth",)),
    "scannet": DatasetKind("scannet", 1e-3, 10.0, 1000.0, ("depth",)),
    "diode": DatasetKind("diode", 0.6, 350.0, 1000.0, ("depth",)),
    "dsine": DatasetKind("dsine", tasks=("normals",)),
}
