"""Finding input images and writing predictions in Marigold-style output folders.

``OUT/depth_npy/<rel>/<stem>_depth.npy``        float32 [H, W] in [0, 1]
``OUT/depth_png16/<rel>/<stem>_depth.png``      16-bit, depth * 65535
``OUT/depth_colored/<rel>/<stem>_depth_colored.png``  Spectral colour map (near red, far blue)
``OUT/normals_npy/<rel>/<stem>_normals.npy``    float32 [H, W, 3] unit vectors
``OUT/normals_png/<rel>/<stem>_normals.png``    8-bit RGB, (n + 1) / 2 * 255
``<rel>`` is the image's sub-folder inside the input folder. Every file is written atomically.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from PIL import Image

from ..processing import Prediction
from .atomic import atomic_path

OUTPUT_KINDS = {
    "depth_npy": "_depth.npy",
    "depth_png16": "_depth.png",
    "depth_colored": "_depth_colored.png",
    "normals_npy": "_normals.npy",
    "normals_png": "_normals.png",
}


def output_paths(out_dir: str | Path, rel_image: Path) -> dict[str, Path]:
    """The five output files of the image at ``rel_image`` (relative to the input folder)."""
    return {
        kind: Path(out_dir) / kind / rel_image.parent / f"{rel_image.stem}{suffix}"
        for kind, suffix in OUTPUT_KINDS.items()
    }


def write_prediction(paths: dict[str, Path], pred: Prediction) -> None:
    """Write all five files to temporaries first, then rename them: a failure leaves none behind."""
    depth = pred.depth.astype(np.float32)
    normals = pred.normals.astype(np.float32)
    with contextlib.ExitStack() as stack:
        tmp = {kind: stack.enter_context(atomic_path(path)) for kind, path in paths.items()}
        np.save(tmp["depth_npy"], depth)
        # diffusers' export_depth_to_16bit_png passes mode= to Image.fromarray, which Pillow 13 rejects
        Image.fromarray(np.round(depth.clip(0, 1) * 65535).astype(np.uint16)).save(tmp["depth_png16"], format="PNG")
        MarigoldImageProcessor.visualize_depth(depth[None, :, :, None])[0].save(tmp["depth_colored"], format="PNG")
        np.save(tmp["normals_npy"], normals)
        MarigoldImageProcessor.visualize_normals(normals[None])[0].save(tmp["normals_png"], format="PNG")
