"""Bad inputs for ``infer``: bounded memory, 16-bit PNGs, colliding output names, incomplete outputs."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import scene_image
from PIL import Image
from typer.testing import CliRunner

import fe2e_deploy.infer as infer_module
from fe2e_deploy.cli import app
from fe2e_deploy.engines.eager import EagerEngine
from fe2e_deploy.files.images import MAX_IMAGE_PIXELS, read_image
from fe2e_deploy.files.outputs import OUTPUT_KINDS, output_names, output_paths
from fe2e_deploy.infer import run_infer
from fe2e_deploy.resolution import MAX_PROCESSING_PIXELS

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB); ``rows`` default to all zeros."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color_type]
    row = (width * channels * bit_depth + 7) // 8
    raw = rows if rows is not None else bytes((1 + row) * height)  # filter byte 0 + zeros, compresses to little

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def png16_rows(array: np.ndarray) -> bytes:
    """Big-endian 16-bit PNG scanlines (filter 0) of ``array`` [H, W] or [H, W, C]."""
    return b"".join(b"\x00" + line.astype(">u2").tobytes() for line in array)


def gradient16(width: int = 256, height: int = 4) -> np.ndarray:
    return np.linspace(0, 65535, width).round().astype(np.uint16)[None].repeat(height, 0)


@pytest.fixture()
def engine(tiny_pipeline):
    return EagerEngine(tiny_pipeline, processing_res=(32, 32))


# 1. bounded memory ---------------------------------------------------------------------------------------------


def test_default_rule_refuses_a_processing_size_over_the_limit(tiny_pipeline):
    engine = EagerEngine(tiny_pipeline)
    photo = Image.new("1", (8000, 6000))  # FE2E's rule keeps it at its size: 48 MP of processing pixels
    with pytest.raises(ValueError, match="--max-processing-pixels") as error:
        engine.processing_size(photo)
    assert "8000x6000" in str(error.value) and "\n" not in str(error.value)
    assert engine.processing_size(Image.new("1", (4000, 3000))) == (864, 576)
    assert MAX_PROCESSING_PIXELS == 2048 * 2048
    raised = EagerEngine(tiny_pipeline, max_processing_pixels=8000 * 6000)  # the user raised it
    assert raised.processing_size(photo) == (8000, 6000)


def test_processing_res_over_the_limit_is_an_option_error(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    scene_image(40, 30).save(folder / "x.png")
    absent = str(tmp_path / "no-engine")  # checked before any engine is loaded
    base = ["infer", str(folder), "-o", str(tmp_path / "o"), "--engine", absent]
    result = runner.invoke(app, [*base, "--processing-res", "160000x160000"])
    assert result.exit_code == 2, result.output
    assert result.output.count("\n") == 1 and "--processing-res: processing at 160000x160000" in result.output
    assert "--max-processing-pixels" in result.output and not (tmp_path / "o").exists()
    result = runner.invoke(app, [*base, "--max-processing-pixels", "0"])
    assert result.exit_code == 2 and "--max-processing-pixels" in result.output


def test_infer_fails_an_oversized_image_alone(tmp_path, tiny_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    # Wider than 6048: FE2E's rule keeps both at their size; the first is over a 100000-pixel limit.
    Image.new("RGB", (6064, 48), (90, 120, 200)).save(folder / "a_wide.png")
    Image.new("RGB", (6064, 16), (90, 120, 200)).save(folder / "b_good.png")
    out = tmp_path / "o"
    args = ["infer", str(folder), "-o", str(out), "--engine", str(tiny_dir), "--no-progress"]
    result = runner.invoke(app, [*args, "--max-processing-pixels", "100000"])
    assert result.exit_code == 1, result.output
    assert "a_wide.png" in result.output and "--max-processing-pixels" in result.output
    assert "1 image(s) written" in result.output and "1 failed" in result.output
    assert (out / "depth_npy/b_good_depth.npy").is_file() and not (out / "depth_npy/a_wide_depth.npy").exists()


def test_read_image_refuses_giant_images(tmp_path):
    assert MAX_IMAGE_PIXELS == 100_000_000
    over_ours = tmp_path / "over_ours.png"  # 120 MP, under Pillow's own error threshold (179 MP): it would decode
    over_ours.write_bytes(png_bytes(12000, 10000, 1, 0))
    bomb = tmp_path / "bomb.png"  # 400 MP: Pillow's DecompressionBombError, not a ValueError
    bomb.write_bytes(png_bytes(20000, 20000, 1, 0))
    for path in (over_ours, bomb):
        with pytest.raises(ValueError, match="megapixels"):
            read_image(path)


def test_infer_reports_a_decompression_bomb_as_one_unreadable_image(tmp_path, engine):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(png_bytes(20000, 20000, 1, 0))
    scene_image(40, 30).save(folder / "good.png")
    report = run_infer(engine, folder, tmp_path / "o", progress=False)
    assert [p.name for p, _ in report.failed] == ["bomb.png"] and "unreadable image" in report.failed[0][1]
    assert [p.name for p in report.written] == ["good.png"]


_MEASURE = """
import sys, tempfile
from pathlib import Path
import torch
from fe2e_deploy.files.outputs import output_paths, write_prediction
from fe2e_deploy.processing import postprocess

def status(field):  # virtual memory: its peak does not depend on what else runs on the machine
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1]) * 1024

torch.manual_seed(0)
depth, normals = torch.rand(1, 1, 576, 864), torch.randn(1, 3, 576, 864)
width, height = int(sys.argv[1]), int(sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:
    small = postprocess(depth, normals, (1024, 768))
    write_prediction(output_paths(tmp, Path("w.png")), small)  # every code path once, at a small size
    before = status("VmSize")
    write_prediction(output_paths(tmp, Path("x.png")), postprocess(depth, normals, (width, height)))
    print(status("VmPeak") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux's /proc")
def test_postprocess_and_writing_memory_is_bounded_per_pixel():
    """Maps at the input's size are 16 bytes per pixel (depth + normals, float32): post-processing and writing
    the five files must not multiply that. Before: 116 bytes per pixel (1.4 GB for a 12 MP photo); now about 27
    at 12 MP, and under 50 at the 3 MP measured here (a few fixed MB of buffers weigh more on fewer pixels)."""
    width, height = 2000, 1500  # 12 MP takes 10 s, mostly compressing the PNGs
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", _MEASURE, str(width), str(height)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    peak_bytes_per_pixel = int(done.stdout) / (width * height)
    assert peak_bytes_per_pixel < 64, f"{peak_bytes_per_pixel:.0f} bytes per pixel"


# 2. 16-bit PNGs ------------------------------------------------------------------------------------------------


def test_read_image_scales_16_bit_grayscale(tmp_path):
    values = gradient16()
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    rgb = np.asarray(read_image(path))
    assert rgb.shape == (4, 256, 3) and (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    assert np.abs(rgb[0, :, 0].astype(int) - np.round(values[0] / 257)).max() <= 1  # kept the gradient
    assert len(np.unique(rgb)) == 256 and rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255


def test_read_image_scales_32_bit_integer_images(tmp_path):
    """Mode I (32-bit): 16-bit values scale like a 16-bit PNG; anything else by its actual range."""
    from fe2e_deploy.files.images import to_rgb

    sixteen = Image.fromarray(gradient16().astype(np.int32), mode="I")
    assert np.asarray(to_rgb(sixteen))[0, -1, 0] == 255 and np.asarray(to_rgb(sixteen))[0, 128, 0] == 128
    wide = Image.fromarray((gradient16().astype(np.int32) - 30000) * 10, mode="I")
    gray = np.asarray(to_rgb(wide))[0, :, 0]
    assert gray[0] == 0 and gray[-1] == 255 and (np.diff(gray.astype(int)) >= 0).all()


def test_read_image_reads_16_bit_rgb_and_gray_alpha_pngs(tmp_path):
    values = gradient16()
    rgb16 = np.stack([values, values[:, ::-1], values // 2], axis=-1)
    (tmp_path / "rgb16.png").write_bytes(png_bytes(256, 4, 16, 2, png16_rows(rgb16)))
    (tmp_path / "la16.png").write_bytes(png_bytes(256, 4, 16, 4, png16_rows(np.stack([values, values], -1))))
    rgb = np.asarray(read_image(tmp_path / "rgb16.png")).astype(int)
    assert np.abs(rgb - np.round(rgb16 / 257)).max() <= 1
    gray = np.asarray(read_image(tmp_path / "la16.png")).astype(int)
    assert np.abs(gray[..., 0] - np.round(values / 257)).max() <= 1


# 3. colliding output names -------------------------------------------------------------------------------------


def test_output_names_are_unique_when_stems_collide():
    rels = [Path(p) for p in ("x.jpg", "x.png", "X.jpeg", "x.jpg.png", "y.png", "sub/x.jpg", "z.jpg", "z.jpg.png")]
    names = output_names(rels)
    assert names == {
        Path("x.jpg"): "x.jpg",  # x, x and X collide (ignoring case): full file names
        Path("x.png"): "x.png",
        Path("X.jpeg"): "X.jpeg",
        Path("x.jpg.png"): "x.jpg.png",  # its stem is x.jpg's name
        Path("y.png"): "y",  # unique: the stem, as before
        Path("sub/x.jpg"): "x",  # another folder
        Path("z.jpg"): "z",  # z.jpg.png's stem (z.jpg) is this one's name, not its stem
        Path("z.jpg.png"): "z.jpg.png",
    }
    assert output_paths("o", Path("sub/x.jpg"), "x")["depth_npy"] == Path("o/depth_npy/sub/x_depth.npy")
    assert output_paths("o", Path("x.png"), "x.png")["normals_png"] == Path("o/normals_png/x.png_normals.png")
    assert output_paths("o", Path("y.png"))["depth_png16"] == Path("o/depth_png16/y_depth.png")


def test_infer_writes_images_with_a_shared_stem_to_different_files(tmp_path, engine):
    folder = tmp_path / "in"
    folder.mkdir()
    scene_image(40, 30, seed=1).save(folder / "x.jpg")
    scene_image(48, 36, seed=2).save(folder / "x.png")
    scene_image(40, 30, seed=3).save(folder / "y.png")
    out = tmp_path / "o"
    report = run_infer(engine, folder, out, progress=False)
    assert len(report.written) == 3 and not report.skipped and not report.failed
    names = sorted(p.name for p in (out / "depth_npy").iterdir())
    assert names == ["x.jpg_depth.npy", "x.png_depth.npy", "y_depth.npy"]
    assert np.load(out / "depth_npy/x.jpg_depth.npy").shape == (30, 40)
    assert np.load(out / "depth_npy/x.png_depth.npy").shape == (36, 48)
    again = run_infer(engine, folder, out, progress=False)
    assert len(again.skipped) == 3 and not again.written


def test_infer_never_reports_two_images_written_to_the_same_files(tmp_path, engine, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    scene_image(40, 30, seed=1).save(folder / "x.jpg")
    scene_image(40, 30, seed=2).save(folder / "x.png")
    monkeypatch.setattr(infer_module, "output_names", lambda rels: {rel: rel.stem for rel in rels})  # the old names
    for overwrite in (False, True):
        report = run_infer(engine, folder, tmp_path / f"o-{overwrite}", overwrite=overwrite, progress=False)
        assert [p.name for p in report.written] == ["x.jpg"]
        assert [p.name for p, _ in report.failed] == ["x.png"] and "x.jpg" in report.failed[0][1]


# 4. incomplete outputs -----------------------------------------------------------------------------------------


def test_infer_completes_an_image_with_missing_outputs(tmp_path, engine):
    folder = tmp_path / "in"
    folder.mkdir()
    scene_image(40, 30, seed=1).save(folder / "a.png")
    scene_image(40, 30, seed=2).save(folder / "b.png")
    out = tmp_path / "o"
    first = run_infer(engine, folder, out, progress=False)
    assert len(first.written) == 2
    (out / "normals_png/a_normals.png").unlink()  # deleted by the user, or never written by an old version
    kept = (out / "depth_npy/a_depth.npy").stat().st_ino
    again = run_infer(engine, folder, out, progress=False)
    assert [p.name for p in again.completed] == ["a.png"] and [p.name for p, _ in again.skipped] == ["b.png"]
    assert not again.written and "1 completed" in again.summary() and "1 skipped" in again.summary()
    assert all(p.is_file() for p in output_paths(out, Path("a.png")).values())
    assert (out / "depth_npy/a_depth.npy").stat().st_ino != kept  # all five rewritten together
    assert len(OUTPUT_KINDS) == 5
    third = run_infer(engine, folder, out, progress=False)
    assert len(third.skipped) == 2 and not third.completed


def test_infer_fails_an_image_whose_maps_are_not_finite(tmp_path):
    """An engine that returns NaN (broken weights or kernels) fails that image; nothing is written for it."""
    import torch  # noqa: PLC0415

    from fe2e_deploy.engines.base import Engine  # noqa: PLC0415
    from fe2e_deploy.engines.options import EngineOptions  # noqa: PLC0415
    from fe2e_deploy.infer import run_infer  # noqa: PLC0415

    class NaNEngine(Engine):
        name = "nan-engine"

        def run(self, x, size):
            depth = torch.rand(x.shape[0], 1, 32, 32, generator=torch.Generator().manual_seed(0))
            depth[0, 0, 0, 0] = float("nan")  # only the first image of a batch is broken
            return depth, torch.ones(x.shape[0], 3, 32, 32)

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a", "b"):
        scene_image(32, 32).save(images / f"{name}.png")
    engine = NaNEngine(EngineOptions(processing_res=(32, 32), batch_size=2))
    report = run_infer(engine, images, tmp_path / "out", progress=False)
    assert [p.name for p, _ in report.failed] == ["a.png"] and "NaN or Inf" in report.failed[0][1]
    assert [p.name for p in report.written] == ["b.png"]
    assert not list((tmp_path / "out").rglob("a_*"))
