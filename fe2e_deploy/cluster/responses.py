"""What ``serve`` answers: a prediction encoded as the request asks (.npz, .npy or PNG), and the request's checks.

Plain functions, no Ray: the HTTP app (:mod:`.serve`) calls them and tests use them directly.
"""

from __future__ import annotations

import io

import numpy as np

from ..files.outputs import png_pixels
from ..files.png import png_bytes
from ..processing import Prediction

#: ``format`` -> (maps it can carry, media type).
FORMATS = {
    "npz": (("both",), "application/x-npz"),
    "npy": (("depth", "normals"), "application/x-npy"),
    "png": (("depth", "normals", "depth_colored"), "image/png"),
}
#: The PNG output kind (:func:`~fe2e_deploy.files.outputs.png_pixels`) of each ``map`` of ``format=png``.
PNG_KINDS = {"depth": "depth_png16", "normals": "normals_png", "depth_colored": "depth_colored"}


class RequestFailed(ValueError):
    """A request answered with an error: ``status`` (400/413/422: the client must change it; 500: the engine
    failed) and the message as one line of JSON."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_request(fmt: str, what: str | None, output_res: str) -> str:
    """The map to return (``both`` for npz), or :class:`RequestFailed` naming the allowed values."""
    if fmt not in FORMATS:
        raise RequestFailed(f"format={fmt!r}: choose one of {', '.join(FORMATS)}")
    maps = FORMATS[fmt][0]
    what = what or maps[0]
    if what not in maps:
        raise RequestFailed(f"map={what!r} with format={fmt}: choose one of {', '.join(maps)}")
    if output_res not in ("input", "processing"):
        raise RequestFailed(f"output_res={output_res!r}: choose input or processing")
    return what


def encode_prediction(prediction: Prediction, fmt: str, what: str, png_compression: int = 1) -> tuple[bytes, str]:
    """The response body and its media type: ``npz`` (``depth`` [H, W] and ``normals`` [H, W, 3], float32),
    ``npy`` (one map, float32) or ``png`` (the same pixels as ``infer``'s PNG files)."""
    buffer = io.BytesIO()
    if fmt == "npz":
        np.savez(buffer, depth=prediction.depth.astype(np.float32), normals=prediction.normals.astype(np.float32))
        body = buffer.getvalue()
    elif fmt == "npy":
        np.save(buffer, (prediction.depth if what == "depth" else prediction.normals).astype(np.float32))
        body = buffer.getvalue()
    else:
        body = png_bytes(png_pixels(PNG_KINDS[what], prediction.depth, prediction.normals), png_compression)
    return body, FORMATS[fmt][1]
