"""``serve``'s ``format=ply`` and its refusal of video bodies, as plain functions (no Ray)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import scene_image
from PIL import Image
from plyfile import PlyData

from fe2e_deploy.cluster.responses import (
    RequestFailed,
    camera_options,
    check_not_video,
    check_request,
    encode_prediction,
    video_container,
)
from fe2e_deploy.files.pointcloud import CameraOptions
from fe2e_deploy.processing import Prediction

VIDEOS = {
    "MP4/MOV": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",
    "Matroska/WebM": b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01",
    "AVI": b"RIFF\x24\x00\x00\x00AVI LIST",
}


def mpeg_ts(frames: int = 3, m2ts: bool = False) -> bytes:
    """A real MPEG transport stream (PyAV): 188-byte packets, each starting with the sync byte 0x47 (M2TS: a
    4-byte timestamp before each)."""
    av = pytest.importorskip("av")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mpegts") as container:
        stream = container.add_stream("mpeg2video", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = buffer.getvalue()
    if not m2ts:
        return data
    return b"".join(i.to_bytes(4, "big") + data[i : i + 188] for i in range(0, len(data), 188))


def test_an_mpeg_ts_body_is_415():
    """Issue 33 item 15: an MPEG-TS clip (.ts, .m2ts) was answered 400 "unreadable image"; it is a video (415)."""
    for body in (mpeg_ts(), mpeg_ts(m2ts=True)):
        assert video_container(body) == "MPEG-TS"
        with pytest.raises(RequestFailed) as info:
            check_not_video(body)
        assert info.value.status == 415 and "MPEG-TS" in str(info.value)
    assert video_container(b"\x47" + bytes(187)) is None  # one packet: too little to tell, left to the decoder


@pytest.mark.parametrize("container", list(VIDEOS))
def test_a_video_body_is_415_in_one_line(container):
    body = VIDEOS[container] + bytes(64)
    assert video_container(body) == container
    with pytest.raises(RequestFailed) as info:
        check_not_video(body)
    assert info.value.status == 415 and container in str(info.value) and "\n" not in str(info.value)


def test_images_are_not_videos():
    for image in (scene_image(8, 8), scene_image(8, 8).convert("L")):
        for fmt in ("PNG", "JPEG", "WEBP", "GIF"):  # a GIF starts with 0x47 ("G"), as MPEG-TS packets do
            buffer = io.BytesIO()
            image.save(buffer, format=fmt)
            assert video_container(buffer.getvalue()) is None
            check_not_video(buffer.getvalue())
    assert video_container(b"\x00\x00\x00\x18ftypheic" + bytes(16)) is None  # HEIF: an image, left to the decoder
    assert video_container(b"") is None


def prediction(seed: int = 0, shape=(6, 8)) -> Prediction:
    rng = np.random.default_rng(seed)
    normals = rng.normal(size=(*shape, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return Prediction(rng.uniform(0, 1, shape).astype(np.float32), normals)


def test_format_ply_is_the_point_cloud_of_infer():
    assert check_request("ply", None, "input") == "pointcloud"
    with pytest.raises(RequestFailed, match="choose one of pointcloud"):
        check_request("ply", "depth", "input")
    pred = prediction()
    image = scene_image(8, 6, seed=1)
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0xA405] = 24
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    jpeg = buffer.getvalue()
    body, media = encode_prediction(pred, "ply", "pointcloud", image=Image.open(io.BytesIO(jpeg)), exif_source=jpeg)
    assert media == "application/x-ply"
    ply = PlyData.read(io.BytesIO(body))
    vertex = ply["vertex"].data
    assert len(vertex) == 48 and any("EXIF FocalLengthIn35mmFilm 24 mm" in c for c in ply.comments)
    assert np.array_equal(np.stack([vertex[c] for c in ("nx", "ny", "nz")], -1), pred.normals.reshape(-1, 3))
    np.testing.assert_allclose(vertex["z"], np.exp(pred.depth.astype(np.float64)).ravel(), rtol=1e-6)
    rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).reshape(-1, 3)
    assert np.array_equal(np.stack([vertex[c] for c in ("red", "green", "blue")], -1), rgb)
    camera = camera_options("10,10,3.5,2.5", None, 5)
    body, _ = encode_prediction(pred, "ply", "pointcloud", image=image, camera=camera, exif_source=jpeg)
    ply = PlyData.read(io.BytesIO(body))
    assert len(ply["vertex"].data) == 5 and any("from --intrinsics" in c for c in ply.comments)
    assert camera_options(None, 90.0, None) == CameraOptions(fov=90.0, max_points=100_000)


def test_format_ply_has_a_default_point_cap():
    """Issue 33 item 15: without ``max_points`` a ply answer held every pixel (618 MB for a 24 MP image); now the
    demo's 100k points by default, and a request may ask fewer, not more than the server's ``--max-points``."""
    from fe2e_deploy.cluster.responses import MAX_POINTS
    from fe2e_deploy.web_demo import MAX_POINTS as DEMO_MAX_POINTS

    assert MAX_POINTS == DEMO_MAX_POINTS == 100_000
    assert camera_options(None, None, None).max_points == 100_000
    assert camera_options(None, None, 50).max_points == 50
    assert camera_options(None, None, None, limit=7).max_points == 7
    with pytest.raises(RequestFailed, match=r"max_points=100001: over this server's limit of 100000") as info:
        camera_options(None, None, 100_001)
    assert info.value.status == 400
    body, _ = encode_prediction(
        prediction(shape=(6, 8)), "ply", "pointcloud", camera=camera_options(None, 90.0, None, 5)
    )
    assert len(PlyData.read(io.BytesIO(body))["vertex"].data) == 5


def test_bad_ply_parameters_are_400():
    for args, named in (("1,2,3", "intrinsics"), ((None, 200.0, None), "fov"), ((None, None, 0), "max_points")):
        with pytest.raises(RequestFailed, match=named) as info:
            camera_options(*(args if isinstance(args, tuple) else (args, None, None)))
        assert info.value.status == 400 and "--" not in str(info.value)
