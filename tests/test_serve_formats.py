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


@pytest.mark.parametrize("container", list(VIDEOS))
def test_a_video_body_is_415_in_one_line(container):
    body = VIDEOS[container] + bytes(64)
    assert video_container(body) == container
    with pytest.raises(RequestFailed) as info:
        check_not_video(body)
    assert info.value.status == 415 and container in str(info.value) and "\n" not in str(info.value)


def test_images_are_not_videos():
    for image in (scene_image(8, 8), scene_image(8, 8).convert("L")):
        for fmt in ("PNG", "JPEG", "WEBP"):
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
    assert camera_options(None, 90.0, None) == CameraOptions(fov=90.0)


def test_bad_ply_parameters_are_400():
    for args, named in (("1,2,3", "intrinsics"), ((None, 200.0, None), "fov"), ((None, None, 0), "max_points")):
        with pytest.raises(RequestFailed, match=named) as info:
            camera_options(*(args if isinstance(args, tuple) else (args, None, None)))
        assert info.value.status == 400 and "--" not in str(info.value)
