"""The pipelined infer: same files as one image after another, output choices, fast encoders, errors."""

from __future__ import annotations

import errno
import io

import numpy as np
import pytest
from conftest import scene_image, strip_tiny
from diffusers.pipelines.marigold.marigold_image_processing import MarigoldImageProcessor
from PIL import Image
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.engines.stripped import StrippedEngine
from fe2e_deploy.files import outputs as outputs_module
from fe2e_deploy.files import png as png_module
from fe2e_deploy.files.colormaps import depth_preview, normals_preview
from fe2e_deploy.files.outputs import OUTPUT_KINDS, OutputOptions
from fe2e_deploy.files.png import png_bytes
from fe2e_deploy.infer import run_infer

runner = CliRunner()


@pytest.fixture(scope="module")
def stripped(tiny_dir, tiny_config, tmp_path_factory):
    return strip_tiny(tiny_dir, tiny_config, tmp_path_factory.mktemp("pipe") / "stripped")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe") / "images"
    (folder / "sub").mkdir(parents=True)
    for i, (w, h) in enumerate([(80, 60), (64, 48), (33, 47), (120, 90), (64, 64), (50, 70), (96, 32)]):
        scene_image(w, h, seed=i).save(folder / ("sub" if i % 3 == 0 else "") / f"im{i}.png")
    scene_image(70, 50, seed=9).convert("RGB").save(folder / "photo.jpg", quality=90)
    (folder / "broken.png").write_bytes(b"not a png")
    return folder


def files_of(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("batch", [1, 3])
def test_pipelined_outputs_equal_the_sequential_ones_byte_for_byte(stripped, images, tmp_path, batch):
    """The same engine batches, one thread vs readers and writers: identical files (batching itself changes
    the last bits of a batched matmul; that is compared within tolerance in test_strip/test_export)."""
    engine = StrippedEngine(stripped, processing_res=(32, 32), batch_size=batch)
    sequential = run_infer(engine, images, tmp_path / "seq", progress=False, readers=1, writers=0, prefetch=batch)
    piped = run_infer(engine, images, tmp_path / "pipe", progress=False, readers=2, writers=3)
    for report in (sequential, piped):
        assert len(report.written) == 8 and [p.name for p, _ in report.failed] == ["broken.png"]
    assert piped.written == sequential.written  # reported in input order, whatever order the writers finished in
    a, b = files_of(tmp_path / "seq"), files_of(tmp_path / "pipe")
    assert a.keys() == b.keys() and len(a) == 8 * 5
    assert all(a[k] == b[k] for k in a)  # npy and PNG files identical, byte for byte
    assert piped.read_seconds > 0 and piped.write_seconds > 0 and "host side" in piped.summary()


def test_previews_equal_diffusers_marigold_visualisers():
    rng = np.random.default_rng(0)
    depth = rng.random((61, 83)).astype(np.float32)
    depth[0, :4] = (0.0, 1.0, 0.1, 0.7)  # table stops and exact ends
    normals = rng.normal(size=(61, 83, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    want_depth = np.asarray(MarigoldImageProcessor.visualize_depth(depth[None, :, :, None])[0])
    want_normals = np.asarray(MarigoldImageProcessor.visualize_normals(normals[None])[0])
    np.testing.assert_array_equal(depth_preview(depth), want_depth)
    np.testing.assert_array_equal(normals_preview(normals), want_normals)


@pytest.mark.parametrize("backend", ["libdeflate", "zlib"])
@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_png_writer_decodes_to_the_same_pixels(level, backend, monkeypatch):
    if backend == "zlib":  # the fallback where the deflate package is not installed
        monkeypatch.setattr(png_module, "libdeflate", None)
    rng = np.random.default_rng(level)
    yy, xx = np.mgrid[0:37, 0:53]
    arrays = [
        rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),  # noise
        np.stack([xx * 4, yy * 6, (xx + yy) * 2], -1).astype(np.uint8),  # smooth RGB
        rng.integers(0, 256, (37, 53, 4), dtype=np.uint8),  # RGBA
        rng.integers(0, 256, (37, 53), dtype=np.uint8),  # grey
        rng.integers(0, 65536, (37, 53), dtype=np.uint16),  # 16-bit grey
        (xx * 1200 + yy * 7).astype(np.uint16),
    ]
    for array in arrays:
        decoded = np.asarray(Image.open(io.BytesIO(png_bytes(array, level))))
        assert decoded.dtype.itemsize == array.dtype.itemsize or array.dtype == np.uint16
        np.testing.assert_array_equal(decoded.astype(np.int64), array.astype(np.int64))
    with pytest.raises(ValueError, match="cannot write"):
        png_bytes(np.zeros((4, 4, 2), np.uint8))


def test_output_choices(stripped, images, tmp_path):
    engine = StrippedEngine(stripped, processing_res=(32, 32))
    chosen = OutputOptions(kinds=("depth_npy", "normals_png"), resolution="processing", npy_dtype="float16")
    report = run_infer(engine, images, tmp_path / "some", progress=False, outputs=chosen)
    assert len(report.written) == 8
    assert sorted(p.name for p in (tmp_path / "some").iterdir()) == ["depth_npy", "normals_png"]
    depth = np.load(tmp_path / "some" / "depth_npy" / "im1_depth.npy")
    assert depth.dtype == np.float16 and depth.shape == (32, 32)  # the processing size, not the image's
    assert Image.open(tmp_path / "some" / "normals_png" / "im1_normals.png").size == (32, 32)
    again = run_infer(engine, images, tmp_path / "some", progress=False, outputs=chosen)
    assert len(again.skipped) == 8  # complete for the chosen kinds
    more = run_infer(engine, images, tmp_path / "some", progress=False)  # all five: the others are missing
    assert len(more.completed) == 8
    full = np.load(tmp_path / "some" / "depth_npy" / "im1_depth.npy")
    assert full.dtype == np.float32 and full.shape == (48, 64)
    levels = [tmp_path / f"png{level}" for level in (0, 9)]
    for level, out in zip((0, 9), levels, strict=True):
        run_infer(engine, images, out, progress=False, outputs=OutputOptions(("depth_colored",), png_compression=level))
    stored, small = (out / "depth_colored" / "im4_depth_colored.png" for out in levels)
    assert stored.stat().st_size > small.stat().st_size  # different files, the same pixels
    np.testing.assert_array_equal(np.asarray(Image.open(stored)), np.asarray(Image.open(small)))
    for bad, message in (
        ({"kinds": ("depth_jpg",)}, "choose one or more"),
        ({"resolution": "half"}, "--output-res"),
        ({"png_compression": 10}, "0-9"),
        ({"npy_dtype": "float64"}, "--npy-dtype"),
    ):
        with pytest.raises(ValueError, match=message):
            OutputOptions(**bad)


def test_a_write_error_stops_the_run_in_one_line_and_leaves_no_partial_file(stripped, images, tmp_path, monkeypatch):
    def disk_full(path, array, level=1):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(outputs_module, "write_png", disk_full)
    args = ["infer", str(images), "-o", str(tmp_path / "out"), "--engine", str(stripped), "--processing-res", "32x32"]
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 2 and "No space left on device" in result.output, result.output
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # each image's files appear together


def test_infer_cli_output_options(stripped, images, tmp_path):
    args = ["infer", str(images), "-o", str(tmp_path / "o"), "--engine", str(stripped), "--processing-res", "32x32"]
    result = runner.invoke(app, [*args, "--outputs", "depth_png16,normals_npy", "--writers", "1", "--no-progress"])
    assert result.exit_code == 1 and "8 image(s) written" in result.output  # exit 1: broken.png
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["depth_png16", "normals_npy"]
    bad = runner.invoke(app, [*args, "--outputs", "depth,normals"])
    assert bad.exit_code == 2 and "choose one or more of " + ", ".join(OUTPUT_KINDS) in bad.output
    text = runner.invoke(app, ["infer", "--help"], env={"COLUMNS": "200"}).output
    for option in ("--outputs", "--output-res", "--png-compression", "--npy-dtype", "--writers"):
        assert option in text
