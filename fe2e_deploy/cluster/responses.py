"""What ``serve`` answers: a prediction encoded as the request asks (.npz, .npy, PNG or a PLY point cloud), and the
request's checks (a video body is refused: 415).

Plain functions, no Ray: the HTTP app (:mod:`.serve`) calls them and tests use them directly.
"""

from __future__ import annotations

import io

import numpy as np

from ..errors import InvalidInput
from ..files.outputs import png_pixels
from ..files.png import png_bytes
from ..files.pointcloud import (
    CameraOptions,
    cloud_depth,
    exif_focal_35mm,
    header_comments,
    map_colors,
    parse_intrinsics,
    ply_bytes,
    point_cloud,
    resolve_intrinsics,
)
from ..processing import Prediction

#: ``format`` -> (maps it can carry, media type).
FORMATS = {
    "npz": (("both",), "application/x-npz"),
    "npy": (("depth", "normals"), "application/x-npy"),
    "png": (("depth", "normals", "depth_colored"), "image/png"),
    "ply": (("pointcloud",), "application/x-ply"),
}
#: ISO media major brands of still images (HEIF/AVIF share the ``ftyp`` box with MP4/MOV): not videos.
IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"mif1", b"avif")
#: Points of a ``format=ply`` answer when the request gives no ``max_points``, and by default the most it may ask
#: (``serve --max-points``): the demo's 100k (``web_demo.MAX_POINTS``). Every pixel of a 24 MP image would be a
#: 618 MB answer.
MAX_POINTS = 100_000
#: MPEG transport streams: packets of 188 bytes (M2TS/BDAV: 192, a 4-byte timestamp first), each starting with
#: the sync byte 0x47; at least ``TS_PACKETS`` of the first packets must start so.
TS_LAYOUTS = ((188, 0), (192, 4))
TS_PACKETS = 3
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


def _is_transport_stream(body: bytes) -> bool:
    """Whether ``body`` starts with MPEG-TS (or M2TS) packets: the sync byte at every packet start (of the first 8;
    at least :data:`TS_PACKETS` of them), which no image has (a GIF starts with 0x47 too, but only once)."""
    for size, offset in TS_LAYOUTS:
        starts = range(offset, min(len(body), offset + 8 * size), size)
        if len(starts) >= TS_PACKETS and all(body[i] == 0x47 for i in starts):
            return True
    return False


def video_container(body: bytes) -> str | None:
    """The video container ``body`` starts like (MP4/MOV ``ftyp``, Matroska/WebM EBML, AVI ``RIFF....AVI``, FLV,
    MPEG-PS, MPEG-TS), or None (an image, or anything else: left to the image decoder)."""
    if body[4:8] == b"ftyp" and body[8:12] not in IMAGE_BRANDS:
        return "MP4/MOV"
    if body.startswith(b"\x1a\x45\xdf\xa3"):
        return "Matroska/WebM"
    if body.startswith(b"RIFF") and body[8:12] == b"AVI ":
        return "AVI"
    if body.startswith(b"FLV\x01"):
        return "FLV"
    if body.startswith((b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3")):
        return "MPEG"
    if _is_transport_stream(body):
        return "MPEG-TS"
    return None


def check_not_video(body: bytes) -> None:
    """:class:`RequestFailed` (415) for a video body: videos go through ``infer``."""
    container = video_container(body)
    if container is not None:
        raise RequestFailed(
            f"the body is a video ({container}); /predict takes one image: run videos through fe2e-deploy infer", 415
        )


def camera_options(
    intrinsics: str | None, fov: float | None, max_points: int | None, limit: int = MAX_POINTS
) -> CameraOptions:
    """``format=ply``'s query parameters as :class:`CameraOptions`, or :class:`RequestFailed` (400). At most
    ``limit`` points (the server's ``--max-points``): ``max_points`` None means ``limit``, more is refused."""
    if max_points is not None and max_points > limit:
        raise RequestFailed(f"max_points={max_points}: over this server's limit of {limit} points (--max-points)")
    try:
        return CameraOptions(parse_intrinsics(intrinsics), fov, limit if max_points is None else max_points)
    except InvalidInput as exc:
        raise RequestFailed(str(exc).replace("--max-points", "max_points").replace("--", "")) from None


def encode_prediction(
    prediction: Prediction,
    fmt: str,
    what: str,
    png_compression: int = 1,
    image=None,
    camera: CameraOptions | None = None,
    exif_source: bytes | None = None,
) -> tuple[bytes, str]:
    """The response body and its media type: ``npz`` (``depth`` [H, W] and ``normals`` [H, W, 3], float32),
    ``npy`` (one map, float32), ``png`` (the same pixels as ``infer``'s PNG files) or ``ply`` (``infer``'s point
    cloud: colours of ``image``, intrinsics from ``camera``, else the EXIF focal length of ``exif_source``, the
    request body, else the default field of view)."""
    buffer = io.BytesIO()
    if fmt == "ply":
        camera = camera or CameraOptions()
        height, width = prediction.depth.shape
        intrinsics = resolve_intrinsics(camera, width, height, exif_focal_35mm(exif_source))
        z, note = cloud_depth(np.asarray(prediction.depth, dtype=np.float32), None)
        normals = np.asarray(prediction.normals, dtype=np.float32)
        points = point_cloud(z, normals, map_colors(image, width, height), intrinsics, camera.max_points)
        return ply_bytes(points, header_comments(note, intrinsics)), FORMATS[fmt][1]
    if fmt == "npz":
        np.savez(buffer, depth=prediction.depth.astype(np.float32), normals=prediction.normals.astype(np.float32))
        body = buffer.getvalue()
    elif fmt == "npy":
        np.save(buffer, (prediction.depth if what == "depth" else prediction.normals).astype(np.float32))
        body = buffer.getvalue()
    else:
        body = png_bytes(png_pixels(PNG_KINDS[what], prediction.depth, prediction.normals), png_compression)
    return body, FORMATS[fmt][1]
