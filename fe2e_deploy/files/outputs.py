"""Finding input images and writing predictions in Marigold-style output folders.

``OUT/depth_npy/<rel>/<stem>_depth.npy``        float32 [H, W] in [0, 1]
``OUT/depth_png16/<rel>/<stem>_depth.png``      16-bit, depth * 65535
``OUT/depth_colored/<rel>/<stem>_depth_colored.png``  Spectral colour map (near red, far blue)
``OUT/normals_npy/<rel>/<stem>_normals.npy``    float32 [H, W, 3] unit vectors
``OUT/normals_png/<rel>/<stem>_normals.png``    8-bit RGB, (n + 1) / 2 * 255
``<rel>`` is the image's sub-folder inside the input folder. ``<stem>`` is the image's file name
without its suffix, unless that would collide in its folder (:func:`output_names`: ``x.jpg`` next to
``x.png`` -> ``x.jpg_depth.npy`` and ``x.png_depth.npy``). Every file is written atomically, and the
maps are converted a band of rows at a time, so writing costs little memory beyond the maps.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from PIL import Image

from ..processing import Prediction, row_bands
from .atomic import atomic_path

OUTPUT_KINDS = {
    "depth_npy": "_depth.npy",
    "depth_png16": "_depth.png",
    "depth_colored": "_depth_colored.png",
    "normals_npy": "_normals.npy",
    "normals_png": "_normals.png",
}


def output_names(rel_images: Iterable[Path]) -> dict[Path, str]:
    """The name each image's outputs start with: its stem (``x.jpg`` -> ``x``), or its full file name
    (``x.jpg``) when another image in its folder has the same stem or a file name equal to that stem.

    Names are compared ignoring case (so they stay distinct on case-insensitive disks): ``x.jpg``,
    ``X.png`` -> ``x.jpg``, ``X.png``; ``y.jpg``, ``y.jpg.png`` -> ``y``, ``y.jpg.png``. File names in a
    folder are distinct, so the names returned are too.
    """
    rel_images = list(rel_images)
    counts = Counter((rel.parent, name.casefold()) for rel in rel_images for name in (rel.stem, rel.name))
    return {rel: rel.stem if counts[(rel.parent, rel.stem.casefold())] == 1 else rel.name for rel in rel_images}


def output_paths(out_dir: str | Path, rel_image: Path, name: str | None = None) -> dict[str, Path]:
    """The five output files of the image at ``rel_image`` (relative to the input folder), named after
    ``name`` (its entry in :func:`output_names`; default: the image's stem)."""
    name = rel_image.stem if name is None else name
    return {kind: Path(out_dir) / kind / rel_image.parent / f"{name}{suffix}" for kind, suffix in OUTPUT_KINDS.items()}


def write_prediction(paths: dict[str, Path], pred: Prediction) -> None:
    """Write all five files to temporaries first, then rename them: a failure leaves none behind."""
    depth = np.asarray(pred.depth, dtype=np.float32)  # no copies: the maps may be large
    normals = np.asarray(pred.normals, dtype=np.float32)
    with contextlib.ExitStack() as stack:
        tmp = {kind: stack.enter_context(atomic_path(path)) for kind, path in paths.items()}
        np.save(tmp["depth_npy"], depth)
        # diffusers' export_depth_to_16bit_png passes mode= to Image.fromarray, which Pillow 13 rejects
        png16 = _banded(depth, (), np.uint16, lambda band: np.round(band.clip(0, 1) * 65535))
        Image.fromarray(png16).save(tmp["depth_png16"], format="PNG")
        del png16
        colored = _banded(
            depth, (3,), np.uint8, lambda band: MarigoldImageProcessor.visualize_depth(band[None, :, :, None])[0]
        )
        Image.fromarray(colored).save(tmp["depth_colored"], format="PNG")
        del colored
        np.save(tmp["normals_npy"], normals)
        normals_rgb = _banded(
            normals, (3,), np.uint8, lambda band: MarigoldImageProcessor.visualize_normals(band[None])[0]
        )
        Image.fromarray(normals_rgb).save(tmp["normals_png"], format="PNG")


def _banded(values: np.ndarray, channels: tuple[int, ...], dtype: type, convert: Callable) -> np.ndarray:
    """``convert`` (per pixel) applied a band of rows at a time into a new ``[H, W, *channels]`` array."""
    height, width = values.shape[:2]
    out = np.empty((height, width, *channels), dtype=dtype)
    for rows in row_bands(height, width):
        out[rows] = np.asarray(convert(values[rows]))
    return out
