"""Dataset kinds: depth range, 16-bit PNG depth divisor, evaluation crops and masks per benchmark.

Each benchmark's rules are those of FE2E's official loaders (``infer/dataset/*.py`` for depth, copied
from Marigold; ``infer/dataset_normal/*/__init__.py`` for normals, from DSINE), whatever the layout
the files are read from (docs/evaluation.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

TASKS = ("depth", "normals")


KB_CROP_HW = (352, 1216)  # KITTI benchmark crop (bottom centre), as in Marigold


NYU_EIGEN_CROP = (slice(45, 471), slice(41, 601))  # rows, columns; applied to any GT size, as the official loader


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
    mask_is_valid_region: bool = False  # DIODE: the mask alone is the valid region (not the depth range)
    align_max_res: int | None = None  # Marigold's alignment_max_res (ETH3D: 1024); the marigold protocol only
    normal_set: str | None = None  # the set's folder in DSINE's dsine_eval/ (normals of the official layout)
    normal_split: str | None = None  # the bundled split list (fe2e_deploy/evaluation/splits/)


DATASET_KINDS = {
    "generic": DatasetKind("generic"),
    "nyu": DatasetKind("nyu", 1e-3, 10.0, 1000.0, eval_crop="nyu_eigen", normal_set="nyuv2", normal_split="nyuv2_test"),
    "kitti": DatasetKind("kitti", 1e-5, 80.0, 256.0, ("depth",), eval_crop="kitti_eigen", kitti_benchmark_crop=True),
    "eth3d": DatasetKind("eth3d", 1e-5, math.inf, 1000.0, ("depth",), align_max_res=1024),
    "scannet": DatasetKind("scannet", 1e-3, 10.0, 1000.0, normal_set="scannet", normal_split="scannet_test"),
    "diode": DatasetKind("diode", 0.6, 350.0, 1000.0, ("depth",), mask_is_valid_region=True),
    "ibims": DatasetKind("ibims", tasks=("normals",), normal_set="ibims", normal_split="ibims"),
    "sintel": DatasetKind("sintel", tasks=("normals",), normal_set="sintel", normal_split="sintel"),
    "oasis": DatasetKind("oasis", tasks=("normals",), normal_set="oasis", normal_split="oasis_val"),
    "dsine": DatasetKind("dsine", tasks=("normals",)),
}
