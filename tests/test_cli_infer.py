"""``fe2e-deploy init-tiny`` and ``fe2e-deploy infer`` end to end on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import model_file_args, scene_image
from PIL import Image
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.model_files import DEMO_RESOLUTION, demo_model_files
from fe2e_deploy.reference import FE2EPipeline

runner = CliRunner()
OUT_FILES = (
    "depth_npy/{}_depth.npy",
    "depth_png16/{}_depth.png",
    "depth_colored/{}_depth_colored.png",
    "normals_npy/{}_normals.npy",
    "normals_png/{}_normals.png",
)


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    scene_image(64, 48, seed=1).save(folder / "a.png")
    scene_image(70, 52, seed=2).convert("L").save(folder / "sub" / "b.JPG")  # grayscale, upper-case suffix
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    return folder


def model_args(tiny_dir):
    return model_file_args(tiny_dir)


def test_init_tiny_writes_the_official_files(tmp_path):
    result = runner.invoke(app, ["init-tiny", str(tmp_path / "m"), "--seed", "1"])
    assert result.exit_code == 0, result.output
    names = {"model_config.json", "dit.safetensors", "vae.safetensors", "empty_prompt.npz", "lora.safetensors"}
    assert {p.name for p in (tmp_path / "m").iterdir()} == names
    again = runner.invoke(app, ["init-tiny", str(tmp_path / "m")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_infer_writes_all_outputs_and_reports_bad_images(images, tmp_path, tiny_dir):
    out = tmp_path / "out"
    args = ["infer", str(images), "-o", str(out), "--processing-res", "64x48", "--no-progress", *model_args(tiny_dir)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # broken.png is reported, the rest is written
    assert "broken.png" in result.output and "unreadable image" in result.output
    assert "2 image(s) written" in result.output and "s per image" in result.output
    for rel, (w, h) in (("a", (64, 48)), ("sub/b", (70, 52))):
        for pattern in OUT_FILES:
            assert (out / pattern.format(rel)).is_file(), pattern.format(rel)
        depth = np.load(out / f"depth_npy/{rel}_depth.npy")
        normals = np.load(out / f"normals_npy/{rel}_normals.npy")
        assert depth.shape == (h, w) and normals.shape == (h, w, 3)
        png16 = Image.open(out / f"depth_png16/{rel}_depth.png")
        assert png16.mode.startswith("I;16") and png16.size == (w, h)
        assert np.abs(np.asarray(png16, dtype=np.float64) / 65535 - depth).max() < 1e-4
        assert Image.open(out / f"normals_png/{rel}_normals.png").mode == "RGB"
    assert not list(out.rglob(".*tmp*"))  # no temporaries left behind

    before = (out / "depth_npy/a_depth.npy").stat().st_mtime_ns
    again = runner.invoke(app, args)
    assert "2 skipped" in again.output and (out / "depth_npy/a_depth.npy").stat().st_mtime_ns == before
    forced = runner.invoke(app, [*args, "--overwrite"])
    assert "2 image(s) written" in forced.output


def test_infer_default_is_the_demo_model_at_its_training_size(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    scene_image(40, 30).save(folder / "x.png")
    result = runner.invoke(app, ["infer", str(folder), "-o", str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 0, result.output
    files = demo_model_files()
    assert files.processing_res == DEMO_RESOLUTION and files.lora is not None
    want = FE2EPipeline.from_files(files.config, files.dit, files.vae, files.prompt, files.lora)(
        scene_image(40, 30), DEMO_RESOLUTION
    )
    np.testing.assert_allclose(np.load(tmp_path / "o/depth_npy/x_depth.npy"), want.depth, atol=1e-5, rtol=0)


def test_infer_engine_folder_matches_explicit_files(tmp_path, tiny_dir):
    folder = tmp_path / "in"
    folder.mkdir()
    scene_image(64, 48).save(folder / "x.png")
    runner.invoke(
        app, ["infer", str(folder), "-o", str(tmp_path / "a"), "--processing-res", "64x48", *model_args(tiny_dir)]
    )
    result = runner.invoke(
        app, ["infer", str(folder), "-o", str(tmp_path / "b"), "--processing-res", "64x48", "--engine", str(tiny_dir)]
    )
    assert result.exit_code == 0, result.output
    a, b = (np.load(tmp_path / d / "depth_npy/x_depth.npy") for d in "ab")
    assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dit", "nowhere.safetensors"], "also pass --model-config, --vae, --prompt-embedding"),
        (["--processing-res", "100x100"], "multiples of 16"),
        (["--dtype", "fp8"], "--dtype fp8: not one of fp32, bf16"),
        (["--model-config", "huge"], "also pass --dit, --vae, --prompt-embedding"),
    ],
)
def test_infer_option_errors(images, tmp_path, extra, message):
    result = runner.invoke(app, ["infer", str(images), "-o", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2
    assert message in result.output


def test_infer_missing_or_empty_input(tmp_path):
    result = runner.invoke(app, ["infer", str(tmp_path / "absent"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "input folder not found" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["infer", str(tmp_path / "empty"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no .jpg/.jpeg/.png images" in result.output


def test_infer_corrupt_checkpoint_is_a_clear_error(images, tmp_path, tiny_dir):
    bad = tmp_path / "dit.safetensors"
    bad.write_bytes(b"junk")
    args = model_args(tiny_dir)
    args[args.index("--dit") + 1] = str(bad)
    result = runner.invoke(app, ["infer", str(images), "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and "not a readable safetensors file" in result.output


def test_help_explains_every_option():
    result = runner.invoke(app, ["infer", "--help"])
    assert result.exit_code == 0
    for option in (
        "--output-dir",
        "--engine",
        "--model-config",
        "--dit",
        "--vae",
        "--prompt-embedding",
        "--lora",
        "--dtype",
        "--device",
        "--processing-res",
        "--cfg-batch",
        "--overwrite",
    ):
        assert option in result.output
