"""float32 OpenEXR outputs (``openexr``): ``depth_exr`` (one channel ``Z``), ``normals_exr`` (``R, G, B`` = x, y, z)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import InvalidInput

INSTALL_HINT = "pip install 'fe2e-deploy[exr]'"


def check_exr_available(kinds: tuple[str, ...]) -> None:
    """A one-line error when EXR outputs are asked for and the OpenEXR package is not installed."""
    wanted = [k for k in kinds if k.endswith("_exr")]
    if wanted and importlib.util.find_spec("OpenEXR") is None:
        raise InvalidInput(f"--outputs {','.join(wanted)} needs the OpenEXR package: {INSTALL_HINT}")


def write_exr(path: str | Path, values: np.ndarray) -> None:
    """``[H, W]`` (channel ``Z``) or ``[H, W, 3]`` (channels ``R, G, B``) as float32 EXR, ZIP-compressed (lossless).
    A failed write is an ``OSError`` without an errno (:func:`~.atomic.naming` tells a full disk)."""
    import OpenEXR  # noqa: PLC0415  (optional dependency)

    values = np.ascontiguousarray(values, dtype=np.float32)
    channels = {"Z": values} if values.ndim == 2 else {"RGB": values}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    try:
        OpenEXR.File(header, channels).write(str(path))
    except RuntimeError as exc:  # OpenEXR's C++ write errors (a full disk): a failed write, errno unknown
        raise OSError(str(exc)) from exc


def read_exr(path: str | Path) -> np.ndarray:
    """What :func:`write_exr` wrote: ``[H, W]`` from ``Z``, or ``[H, W, 3]`` from ``R, G, B``."""
    import OpenEXR  # noqa: PLC0415

    with OpenEXR.File(str(path), separate_channels=True) as exr:
        channels = {name: np.asarray(ch.pixels, dtype=np.float32) for name, ch in exr.channels().items()}
    if "Z" in channels:
        return channels["Z"]
    return np.stack([channels[c] for c in "RGB"], axis=-1)
