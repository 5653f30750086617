"""Issue 33, ``infer``'s newer surfaces (clips, point clouds, --align-to, EXR) given bad inputs: nothing lost, nothing
asked for silently dropped, and each problem one line naming it (exit code 2) or one failed input of a finished run."""

from __future__ import annotations

import errno
import importlib.util
import os
import pathlib
import re
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import model_file_args, scene_image
from PIL import Image
from test_video import decoded, write_clip
from typer.testing import CliRunner

from fe2e_deploy import load_gate
from fe2e_deploy.cli import app
from fe2e_deploy.engines.eager import EagerEngine
from fe2e_deploy.errors import ImageError, InvalidInput
from fe2e_deploy.files.outputs import OutputOptions
from fe2e_deploy.files.pointcloud import CameraOptions
from fe2e_deploy.files.video import VideoError, VideoWriter, encoder
from fe2e_deploy.infer import run_infer
from fe2e_deploy.metric_align import align_depth_map
from fe2e_deploy.video_infer import VideoOptions

runner = CliRunner()


@pytest.fixture()
def engine(tiny_pipeline):
    return EagerEngine(tiny_pipeline, processing_res=(32, 32))


def files_under(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# -- 1. a clip's per-frame folder never replaces other outputs ------------------------------------------------------


def test_a_clips_frame_folder_clashing_with_images_fails_the_clip_before_any_work(tmp_path, engine):
    """``col/clip.mp4`` beside ``col/clip/photo.png``: the clip's depth_npy/clip/ would hold the images' outputs."""
    col = tmp_path / "col"
    (col / "clip").mkdir(parents=True)
    write_clip(col / "clip.mp4", frames=3)
    scene_image(40, 30, seed=1).save(col / "clip" / "photo.png")
    scene_image(40, 30, seed=2).save(col / "clip" / "clip_000000.png")  # named like the clip's frame 0
    out, alone = tmp_path / "out", tmp_path / "alone"
    outputs, video = OutputOptions(kinds=("depth_npy",)), VideoOptions(kinds=("depth_npy",))
    report = run_infer(engine, col, out, progress=False, outputs=outputs, video=video)
    assert [p.name for p in report.written] == ["clip_000000.png", "photo.png"]
    assert [p.name for p, _ in report.failed] == ["clip.mp4"]
    reason = report.failed[0][1]
    assert "depth_npy/clip" in reason and "clip_000000.png" in reason, reason
    assert report.frames == 0  # refused before any of its frames went through the engine
    assert files_under(out) == ["depth_npy/clip/clip_000000_depth.npy", "depth_npy/clip/photo_depth.npy"]
    run_infer(engine, col / "clip", alone, progress=False, outputs=outputs)  # the images' own maps
    for name in ("clip_000000", "photo"):
        mine = np.load(alone / f"depth_npy/{name}_depth.npy")
        assert np.array_equal(np.load(out / f"depth_npy/clip/{name}_depth.npy"), mine)
    again = run_infer(engine, col, out, progress=False, outputs=outputs, video=video, overwrite=True)
    assert [p.name for p, _ in again.failed] == ["clip.mp4"] and len(again.written) == 2
    assert files_under(out) == ["depth_npy/clip/clip_000000_depth.npy", "depth_npy/clip/photo_depth.npy"]


def test_a_clip_nested_in_another_clips_frame_folder_fails(tmp_path, engine):
    """``a/b.mp4`` and ``a.mp4`` (in that order): b's depth_npy/a/b/ would sit inside a's depth_npy/a/ (and be
    replaced with it)."""
    col = tmp_path / "col"
    (col / "a").mkdir(parents=True)
    write_clip(col / "a.mp4", frames=2)
    write_clip(col / "a" / "b.mp4", frames=2)
    video = VideoOptions(kinds=("depth_npy",))
    report = run_infer(engine, col, tmp_path / "out", progress=False, video=video)
    assert [p.name for p in report.written] == ["b.mp4"]
    assert [p.name for p, _ in report.failed] == ["a.mp4"] and "b.mp4" in report.failed[0][1]
    assert len(list((tmp_path / "out/depth_npy/a/b").iterdir())) == 2


def test_a_clip_never_replaces_files_it_did_not_write(tmp_path, engine, monkeypatch):
    """Another file in the clip's per-frame folder (not an input of this run) is never deleted, with or without
    --overwrite; a folder or preview that appears while the clip runs (another run) is not replaced without it."""
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    out = tmp_path / "out"
    (out / "depth_npy/clip").mkdir(parents=True)
    (out / "depth_npy/clip/notes.txt").write_text("mine")
    video = VideoOptions(kinds=("depth_npy",))
    for overwrite in (False, True):
        report = run_infer(engine, clip, out, progress=False, video=video, overwrite=overwrite)
        assert [p.name for p, _ in report.failed] == ["clip.mp4"], report
        assert "notes.txt" in report.failed[0][1]
        assert files_under(out) == ["depth_npy/clip/notes.txt"]
    (out / "depth_npy/clip/notes.txt").unlink()
    (out / "depth_npy/clip/.DS_Store").write_bytes(b"Finder was here")  # a file manager's: replaced with the folder
    (out / "depth_npy/clip/clip_000007_depth.npy").write_bytes(b"a frame of an earlier, longer run")
    report = run_infer(engine, clip, out, progress=False, video=video)
    assert not report.failed and files_under(out / "depth_npy") == [f"clip/clip_00000{i}_depth.npy" for i in range(2)]

    # another run writes the same clip meanwhile: its complete folder and preview survive
    for target in ("depth_npy/clip", "depth_video/clip_depth.mp4"):
        fresh = tmp_path / f"fresh_{target.split('/')[0]}"

        def other_run(x, size, target=target, fresh=fresh, run=engine.run):
            path = fresh / target
            if not path.exists():
                if target.endswith(".mp4"):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"the other run's preview")
                else:
                    path.mkdir(parents=True)
                    (path / "clip_000000_depth.npy").write_bytes(b"the other run's frame")
            return run(x, size)

        with monkeypatch.context() as patch:
            patch.setattr(engine, "run", other_run)
            report = run_infer(engine, clip, fresh, progress=False, video=video)
        assert [p.name for p, _ in report.failed] == ["clip.mp4"] and "appeared" in report.failed[0][1], report
        kept = fresh / target
        data = kept.read_bytes() if kept.is_file() else (kept / "clip_000000_depth.npy").read_bytes()
        assert data.startswith(b"the other run's")
        assert files_under(fresh) == [target if target.endswith(".mp4") else f"{target}/clip_000000_depth.npy"]


# -- 3. a clip larger than H.264 allows ------------------------------------------------------------------------------


def write_ffv1_clip(path, frames: int, width: int, height: int):
    """A lossless FFV1 clip in Matroska (any size: libx264 takes at most 16384 a side)."""
    container = av.open(str(path), "w")
    stream = container.add_stream("ffv1", rate=12)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
    rng = np.random.default_rng(0)
    for _ in range(frames):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    container.mux(stream.encode())
    container.close()
    return path


@pytest.mark.parametrize("size", [(20000, 16), (16, 16386)])
def test_a_clip_over_16384_a_side_gets_a_downscaled_preview_and_the_run_goes_on(tmp_path, engine, size):
    folder = tmp_path / "in"
    folder.mkdir()
    write_ffv1_clip(folder / "a.mkv", 2, *size)
    write_clip(folder / "b.mp4", frames=2)
    out = tmp_path / "out"
    report = run_infer(engine, folder, out, progress=False, video=VideoOptions(kinds=("depth_npy",)))
    assert [p.name for p in report.written] == ["a.mkv", "b.mp4"] and not report.failed, report.failed
    width, height = size
    assert np.load(out / "depth_npy/a/a_000001_depth.npy").shape == (height, width)  # the maps at full size
    suffix = encoder()[1]
    for kind in ("depth", "normals"):
        frames, (w, h), _ = decoded(out / f"{kind}_video/a_{kind}{suffix}")
        assert frames == 2 and max(w, h) == 16384 and min(w, h) == min(width, height) * 16384 // max(width, height)


def test_an_encoder_that_refuses_the_preview_is_a_video_error(tmp_path, monkeypatch):
    """What fails a clip alone (the run goes on), not a traceback: here libx264 given a side over 16384."""
    import fe2e_deploy.files.video as video_module

    if encoder()[0] == "ffv1":
        pytest.skip("no H.264 encoder in this PyAV")
    monkeypatch.setattr(video_module, "preview_size", lambda width, height, codec: (width, height))
    writer = VideoWriter(tmp_path / "p.mp4", Fraction(12))
    with pytest.raises(VideoError, match=r"cannot encode the preview p\.mp4"):
        writer.write(np.zeros((16, 16386, 3), np.uint8))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


# -- 4. a full disk: one line naming the file, nothing partial, old outputs kept ------------------------------------


def one_line_error(result, *needles: str) -> str:
    """Exit code 2, exactly one ``error:`` line holding every needle, no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {type(result.exception).__name__}: {result.exception}\n{result.output}"
    )
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    return errors[0]


def test_a_full_disk_is_one_line_naming_the_file_and_old_outputs_survive(tmp_path, tiny_dir, monkeypatch):
    """ENOSPC from a write (as Python raises it: no file name) while infer writes an image's or a clip's frame's PNG."""
    images = tmp_path / "images"
    images.mkdir()
    scene_image(64, 48, seed=1).save(images / "a.png")
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    args = [
        "--processing-res",
        "32x32",
        "--no-progress",
        "--outputs",
        "depth_npy,depth_png16",
        *model_file_args(tiny_dir),
    ]
    cases = {images: ("depth_png16/a_depth.png", "depth_npy/a_depth.npy"), clip: ("depth_png16/clip", "depth_npy/clip")}
    for source, (failing, other) in cases.items():
        out = tmp_path / f"out_{source.name}"
        assert runner.invoke(app, ["infer", str(source), "-o", str(out), *args]).exit_code == 0
        before = {name: (out / name).read_bytes() for name in files_under(out)}

        def full(self, data, out=out, real=pathlib.Path.write_bytes):
            if out in self.parents:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(self, data)

        with monkeypatch.context() as patch:
            patch.setattr(pathlib.Path, "write_bytes", full)
            result = runner.invoke(app, ["infer", str(source), "-o", str(out), *args, "--overwrite"])
        one_line_error(result, str(out / failing), "No space left on device")
        assert {name: (out / name).read_bytes() for name in files_under(out)} == before  # no partial or lost file
        assert (out / other).exists()


def unshare_available() -> bool:
    import shutil
    import subprocess

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return probe.returncode == 0


FULL_DISK_SCRIPT = """
import json, subprocess, sys
from typer.testing import CliRunner
from fe2e_deploy.cli import app
mount, runs = sys.argv[1], json.loads(sys.argv[2])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20k", "none", mount], check=True)
results = []
for args in runs:
    subprocess.run(["find", mount, "-mindepth", "1", "-delete"], check=True)
    result = CliRunner().invoke(app, args)
    results.append({"code": result.exit_code, "output": result.output, "exception": repr(result.exception),
                    "left": subprocess.run(["find", mount, "-type", "f"], capture_output=True, text=True).stdout})
print(json.dumps(results))
"""


@pytest.mark.skipif(not unshare_available(), reason="needs unshare -rm (a private tmpfs)")
def test_a_really_full_disk_is_one_line(tmp_path, tiny_dir):
    """infer into a 20 KiB tmpfs (in a private mount namespace): numpy's short write of a .npy (an image's, a clip
    frame's), a preview's and OpenEXR's write error are one line naming the file, and nothing partial is left."""
    import json
    import subprocess
    import sys

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        scene_image(64, 48, seed=i).save(images / f"a{i}.png")
    clip = write_clip(tmp_path / "clip.mp4", frames=3)
    mount = tmp_path / "disk"
    mount.mkdir()
    common = ["--processing-res", "32x32", "--no-progress", *model_file_args(tiny_dir)]
    cases = [(images, "depth_npy", ["depth_npy/a"])]
    cases += [(clip, "depth_npy", ["depth_npy/clip/clip_0", "depth_video/clip_depth.", "normals_video/clip_normals."])]
    if HAS_EXR:  # OpenEXR's own write error (a RuntimeError) on a full disk
        cases += [(images, "depth_exr", ["depth_exr/a"])]
    runs = [["infer", str(source), "-o", str(mount / "out"), "--outputs", kinds, *common] for source, kinds, _ in cases]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", FULL_DISK_SCRIPT, str(mount), json.dumps(runs)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for result, (_, _, files) in zip(json.loads(done.stdout.splitlines()[-1]), cases, strict=True):
        errors = [line for line in result["output"].splitlines() if line.startswith("error:")]
        assert result["code"] == 2 and len(errors) == 1 and result["exception"] == "SystemExit(2)", result
        assert "No space left on device" in errors[0], result
        assert any(f"error: {mount / 'out' / name}" in errors[0] for name in files), result  # the file, not a temporary
        assert ".tmp" not in result["left"], result


WRITER_SCRIPT = """
import pathlib, subprocess, sys
from fractions import Fraction
import numpy as np
from fe2e_deploy.files.video import VideoWriter
mount = pathlib.Path(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20k", "none", str(mount)], check=True)
(mount / "fill").write_bytes(bytes(18000))  # room for the first packet, not for the header and the second
writer, rng, errors = VideoWriter(mount / "v.mp4", Fraction(12)), np.random.default_rng(0), []
for _ in range(4):
    try:
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    except OSError as exc:
        errors.append(f"{exc.filename}: {exc.strerror}")
writer.abort()
print(len(errors), errors[-1], sorted(p.name for p in mount.iterdir()))
"""


@pytest.mark.skipif(not unshare_available(), reason="needs unshare -rm (a private tmpfs)")
def test_a_preview_that_hit_a_full_disk_takes_no_more_frames(tmp_path):
    """PyAV crashes (SIGSEGV) muxing on into a file whose header did not fit: the writer refuses further frames."""
    import subprocess
    import sys

    mount = tmp_path / "disk"
    mount.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", WRITER_SCRIPT, str(mount)],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == f"3 {mount / 'v.mp4'}: No space left on device ['fill']", done.stdout


# -- 5. an unreadable --align-to file fails its image alone -----------------------------------------------------------


def test_unreadable_known_depths_fail_their_image_and_the_run_goes_on(tmp_path, tiny_dir):
    images, align = tmp_path / "images", tmp_path / "align"
    images.mkdir()
    align.mkdir()
    names = ["empty", "npz", "strings", "structured", "objects", "complex", "nul", "binary", "good"]
    for i, name in enumerate(names):
        scene_image(64, 48, seed=i).save(images / f"{name}.png")
    args = ["infer", str(images), "--processing-res", "32x32", "--no-progress", "--outputs", "depth_npy"]
    args += model_file_args(tiny_dir)
    assert runner.invoke(app, [*args, "-o", str(tmp_path / "relative")]).exit_code == 0
    d = np.load(tmp_path / "relative/depth_npy/good_depth.npy").astype(np.float64)
    np.save(align / "good.npy", np.exp(1.5 * d + 0.2))  # dense, the image's size
    (align / "empty.npy").write_bytes(b"")
    np.savez(align / "npz.npz", depth=np.ones((48, 64)))
    (align / "npz.npz").rename(align / "npz.npy")
    np.save(align / "strings.npy", np.array([["1", "2", "x"]] * 5))
    np.save(align / "structured.npy", np.zeros(5, dtype=[("u", "f4"), ("v", "f4"), ("depth", "f4")]))
    np.save(align / "objects.npy", np.array([[1, 2, None]] * 5, dtype=object), allow_pickle=True)
    np.save(align / "complex.npy", np.ones((5, 3), dtype=np.complex64))
    (align / "nul.csv").write_bytes(b"u,v,depth\n1,2,\x003\n")
    (align / "binary.csv").write_bytes(bytes(range(128, 256)))
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "out"), "--align-to", str(align)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    failed = [line for line in result.output.splitlines() if line.startswith("failed ")]
    assert len(failed) == len(names) - 1, result.output
    for name, line in zip(sorted(set(names) - {"good"}), sorted(failed), strict=True):
        assert f"{name}.png: " in line and line.count("unreadable known depths (") == 1 and f"{name}." in line, line
    assert "1 image(s) written" in result.output and f"{len(names) - 1} failed" in result.output, result.output
    assert files_under(tmp_path / "out") == ["alignment/good_alignment.json", "depth_npy/good_depth.npy"]


# -- 12. dense known-depth maps: the image's size, bounded memory, a spread to fit ------------------------------------


def test_a_dense_map_of_another_size_is_refused_before_it_is_read(tmp_path):
    import tracemalloc

    d = np.random.default_rng(0).uniform(0.05, 0.95, (96, 128)).astype(np.float32)
    np.save(tmp_path / "small.npy", np.random.default_rng(1).uniform(1, 3, (7, 5)))
    with pytest.raises(ImageError, match=re.escape("known-depth map is 7x5, the image is 96x128")):
        align_depth_map(d, tmp_path / "small.npy", image_size=(128, 96))
    big = np.lib.format.open_memmap(tmp_path / "big.npy", mode="w+", dtype=np.float32, shape=(1500, 2000))
    big[:] = 2.0
    del big
    tracemalloc.start()
    try:
        with pytest.raises(ImageError, match=re.escape("known-depth map is 1500x2000, the image is 48x64")):
            align_depth_map(d[:48, :64], tmp_path / "big.npy")  # the image: the map's size by default
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak  # the 12 MB map was never read (it was: 100+ MB of points at 6000x8000: 5.8 GB)


def test_a_large_dense_map_is_fitted_on_a_bounded_sample(tmp_path, monkeypatch):
    import fe2e_deploy.metric_align as metric_align

    d = np.random.default_rng(2).uniform(0.05, 0.95, (48, 64)).astype(np.float32)
    np.save(tmp_path / "a.npy", np.exp(1.7 * d.astype(np.float64) + 0.3))
    monkeypatch.setattr(metric_align, "MAX_FIT_POINTS", 500)
    metric, fit = align_depth_map(d, tmp_path / "a.npy")
    assert fit.points == 500 and abs(fit.scale - 1.7) < 1e-4 and abs(fit.shift - 0.3) < 1e-4
    np.testing.assert_allclose(metric, np.exp(1.7 * d.astype(np.float64) + 0.3), rtol=1e-4)
    assert align_depth_map(d, tmp_path / "a.npy")[1] == fit  # the same sample every run


@pytest.mark.parametrize("value", [2.0, 1.0, 1e-3])
def test_a_constant_known_depth_is_refused_as_having_no_spread(tmp_path, value):
    d = np.random.default_rng(3).uniform(0.05, 0.95, (48, 64)).astype(np.float32)
    np.save(tmp_path / "dense.npy", np.full((48, 64), value))
    rng = np.random.default_rng(4)
    np.save(
        tmp_path / "sparse.npy", np.stack([rng.integers(0, 64, 20), rng.integers(0, 48, 20), np.full(20, value)], -1)
    )
    for name in ("dense.npy", "sparse.npy"):
        with pytest.raises(ImageError, match="known depths have no spread: cannot fit a scale"):
            align_depth_map(d, tmp_path / name)


# -- 8. --start / --end: finite seconds, checked before the model loads ---------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [("--start", "nan"), ("--end", "nan"), ("--start", "inf"), ("--end", "inf"), ("--start", "1e300"),
     ("--end", "1e300"), ("--start", "-inf"), ("--end", "-1")],
)  # fmt: skip
def test_non_finite_or_huge_start_and_end_are_refused_before_loading(tmp_path, option, value):
    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    with load_gate.closed():
        result = runner.invoke(app, ["infer", str(clip), "-o", str(tmp_path / "out"), option, value, "--no-progress"])
    one_line_error(result, f"{option} {value}", "must be a number from 0 to 1e+09")  # refused while parsing
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


# -- 11. a focal length that would put the cloud at infinity ----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--intrinsics", "1e-300,1e-300,31.5,23.5"], "fx 1e-300"),
        (["--intrinsics", "500,1e-300,31.5,23.5"], "fy 1e-300"),
        (["--intrinsics", "500,500,1e300,23.5"], "cx 1e+300"),
        (["--fov", "1e-300"], "--fov 1e-300"),
    ],
)
def test_a_focal_length_out_of_range_is_refused_before_loading(tmp_path, extra, needle):
    scene_image(64, 48).save(tmp_path / "a.png")
    with load_gate.closed():
        result = runner.invoke(
            app, ["infer", str(tmp_path), "-o", str(tmp_path / "out"), "--outputs", "pointcloud", *extra]
        )
    one_line_error(result, needle)
    assert not (tmp_path / "out").exists()


def test_serve_refuses_a_tiny_fov_too():
    from fe2e_deploy.cluster.responses import RequestFailed, camera_options

    for fov in (1e-300, 1e-4):
        with pytest.raises(RequestFailed, match=f"fov {fov:g}") as info:
            camera_options(None, fov, None)
        assert "--" not in str(info.value)


def test_a_cloud_that_overflows_float32_fails_its_image_alone(tmp_path, engine):
    """The cloud is checked finite before it is written: extreme metric depths and a short (allowed) focal length."""
    images, align = tmp_path / "images", tmp_path / "align"
    images.mkdir()
    align.mkdir()
    for name in ("far", "near"):
        scene_image(64, 48, seed=1).save(images / f"{name}.png")
    relative = tmp_path / "relative"
    run_infer(engine, images, relative, progress=False, outputs=OutputOptions(kinds=("depth_npy",)))
    for name, shift in (("far", 85.0), ("near", 0.0)):  # metric depth up to e^80 (clipped): x = 32 e^80 / 1e-3
        d = np.load(relative / f"depth_npy/{name}_depth.npy").astype(np.float64)
        np.save(align / f"{name}.npy", np.exp(d + shift))
    camera = CameraOptions((1e-3, 1e-3, 31.5, 23.5))
    outputs = OutputOptions(kinds=("pointcloud", "depth_npy"), camera=camera)
    report = run_infer(engine, images, tmp_path / "out", progress=False, outputs=outputs, align_to=align)
    assert [p.name for p in report.written] == ["near.png"]
    assert [p.name for p, _ in report.failed] == ["far.png"] and "not finite in float32" in report.failed[0][1]
    assert not list((tmp_path / "out").rglob("far*"))


# -- 16. messages that say what is wrong ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "name"), [("nan,1,1,1", "fx"), ("1,inf,1,1", "fy"), ("1,1,-inf,1", "cx")])
def test_a_non_finite_intrinsic_is_named(tmp_path, text, name):
    scene_image(64, 48).save(tmp_path / "a.png")
    args = ["infer", str(tmp_path), "-o", str(tmp_path / "out"), "--outputs", "pointcloud", "--intrinsics", text]
    with load_gate.closed():
        line = one_line_error(runner.invoke(app, args), f"--intrinsics: {name} is ", "not a finite number")
    assert "4 numbers" not in line


def test_align_to_a_file_says_it_is_a_file(tmp_path):
    scene_image(64, 48).save(tmp_path / "a.png")
    np.save(tmp_path / "a.npy", np.ones((48, 64)))
    with load_gate.closed():
        result = runner.invoke(
            app, ["infer", str(tmp_path), "-o", str(tmp_path / "out"), "--align-to", str(tmp_path / "a.npy")]
        )
    line = one_line_error(
        result, "a.npy: is a file", "give the folder that holds one <stem>.npy or <stem>.csv per image"
    )
    assert "not found" not in line


def test_the_summary_counts_clips_and_their_frames():
    from fe2e_deploy.infer import InferReport

    clip = InferReport(written=[pathlib.Path("c.mp4")], videos=1, frames=3, clip_frames={pathlib.Path("c.mp4"): 3})
    assert clip.summary().startswith("1 clip (3 frames) written, 0 skipped (all outputs exist), 0 failed; ")
    assert " s per frame end to end" in clip.summary()
    both = InferReport(
        written=[pathlib.Path(p) for p in ("a.png", "b.png", "c.mp4", "d.mkv")],
        completed=[pathlib.Path("e.mov")],
        videos=3,
        frames=12,
        clip_frames={pathlib.Path("c.mp4"): 5, pathlib.Path("d.mkv"): 4, pathlib.Path("e.mov"): 3},
    )
    assert both.summary().startswith(
        "2 image(s) and 2 clips (9 frames) written, 1 clip (3 frames) completed (some outputs were missing), "
        "0 skipped (all outputs exist), 0 failed; "
    ), both.summary()
    assert " s per image or frame end to end" in both.summary()
    images = InferReport(written=[pathlib.Path("a.png")], completed=[pathlib.Path("b.png")])
    assert images.summary().startswith("1 image(s) written, 1 completed (some outputs were missing), 0 skipped")
    assert " s per image end to end" in images.summary()
    skipped = InferReport(skipped=[(pathlib.Path("c.mp4"), "all its outputs exist")])
    assert skipped.summary().startswith("0 clips written, 1 skipped (all outputs exist), 0 failed; ")


# -- 7. nothing asked for is silently dropped: each combination is done, or refused in one line before any work ------

HAS_EXR = importlib.util.find_spec("OpenEXR") is not None
#: (what, the input: images, clip or both, the options, "done" and the files it writes | "refused" and the error)
COMBINATIONS = [
    ("a clip's EXR maps", "clip", ["--outputs", "depth_exr,normals_exr"],
     ("done", ["depth_exr/clip/clip_000001_depth.exr", "normals_exr/clip/clip_000001_normals.exr"])),
    ("a clip's colour PNGs", "clip", ["--outputs", "depth_colored,normals_png"],
     ("done", ["depth_colored/clip/clip_000001_depth_colored.png", "normals_png/clip/clip_000001_normals.png"])),
    ("a clip's maps and clouds", "clip", ["--outputs", "depth_npy,depth_png16,normals_npy,pointcloud"],
     ("done", ["depth_npy/clip/clip_000001_depth.npy", "depth_png16/clip/clip_000001_depth.png",
               "normals_npy/clip/clip_000001_normals.npy", "pointcloud/clip/clip_000001_points.ply"])),
    ("--align-to with a clip beside images", "both", ["--align-to", "ALIGN"],
     ("refused", "--align-to: videos get no metric depth (clip.mp4)")),
    ("--align-to with a clip alone", "clip", ["--align-to", "ALIGN"],
     ("refused", "--align-to: videos get no metric depth (clip.mp4)")),
    ("--temporal-smoothing with --temporal none", "clip", ["--temporal", "none", "--temporal-smoothing", "0.5"],
     ("refused", "--temporal-smoothing 0.5: applies to --temporal align")),
    ("--intrinsics without point clouds", "images", ["--intrinsics", "50,50,31.5,23.5"],
     ("refused", "--intrinsics applies to point clouds")),
    ("--fov without point clouds", "both", ["--outputs", "depth_npy", "--fov", "70"],
     ("refused", "--fov applies to point clouds")),
    ("--max-points without point clouds", "clip", ["--max-points", "100"],
     ("refused", "--max-points applies to point clouds")),
    ("--frame-stride without a video", "images", ["--frame-stride", "2"],
     ("refused", "--frame-stride 2 applies to videos")),
    ("--max-frames without a video", "images", ["--max-frames", "2"], ("refused", "--max-frames 2 applies to videos")),
    ("--start without a video", "images", ["--start", "1"], ("refused", "--start 1 applies to videos")),
    ("--end without a video", "images", ["--end", "1"], ("refused", "--end 1 applies to videos")),
    ("--temporal without a video", "images", ["--temporal", "none"], ("refused", "--temporal none applies to videos")),
    ("--temporal-smoothing without a video", "images", ["--temporal-smoothing", "0.2"],
     ("refused", "--temporal-smoothing 0.2 applies to videos")),
    ("--npy-dtype without a .npy output", "both", ["--outputs", "depth_png16", "--npy-dtype", "float16"],
     ("refused", "--npy-dtype float16 applies to .npy outputs")),
    ("--png-compression without a PNG output", "images", ["--outputs", "depth_npy", "--png-compression", "6"],
     ("refused", "--png-compression 6 applies to PNG outputs")),
]  # fmt: skip


@pytest.mark.parametrize(("what", "source", "extra", "expected"), COMBINATIONS, ids=[c[0] for c in COMBINATIONS])
def test_every_combination_is_done_or_refused_before_any_work(tmp_path, tiny_dir, what, source, extra, expected):
    if "_exr" in " ".join(extra) and not HAS_EXR:
        pytest.skip("needs OpenEXR")
    folder = tmp_path / "in"
    folder.mkdir()
    if source in ("images", "both"):
        scene_image(64, 48).save(folder / "a.png")
    if source in ("clip", "both"):
        write_clip(folder / "clip.mp4", frames=2)
    align = tmp_path / "align"
    align.mkdir()
    np.save(align / "a.npy", np.exp(np.random.default_rng(0).uniform(0, 1, (48, 64))))
    extra = [str(align) if arg == "ALIGN" else arg for arg in extra]
    out = tmp_path / "out"
    target = folder / "clip.mp4" if source == "clip" else folder
    args = ["infer", str(target), "-o", str(out), "--processing-res", "32x32", "--no-progress", *extra]
    kind, detail = expected
    if kind == "refused":
        with load_gate.closed():
            result = runner.invoke(app, [*args, *model_file_args(tiny_dir)])
        one_line_error(result, detail)
        assert not out.exists() or files_under(out) == [], what
    else:
        result = runner.invoke(app, [*args, *model_file_args(tiny_dir)])
        assert result.exit_code == 0, result.output
        written = files_under(out)
        assert set(detail) <= set(written), (what, written)


@pytest.mark.skipif(not HAS_EXR, reason="needs OpenEXR")
def test_a_clips_per_frame_exr_and_colour_maps_are_those_of_its_npy(tmp_path, engine):
    from fe2e_deploy.files.exr import read_exr
    from fe2e_deploy.files.outputs import png_pixels

    clip = write_clip(tmp_path / "clip.mp4", frames=2)
    kinds = ("depth_npy", "normals_npy", "depth_exr", "normals_exr", "depth_colored", "normals_png")
    report = run_infer(engine, clip, tmp_path / "out", progress=False, outputs=OutputOptions(kinds=kinds),
                       video=VideoOptions(kinds=kinds))  # fmt: skip
    assert report.frames == 2 and not report.failed
    out = tmp_path / "out"
    for i in range(2):
        depth = np.load(out / f"depth_npy/clip/clip_{i:06d}_depth.npy")
        normals = np.load(out / f"normals_npy/clip/clip_{i:06d}_normals.npy")
        assert np.array_equal(read_exr(out / f"depth_exr/clip/clip_{i:06d}_depth.exr"), depth)
        assert np.array_equal(read_exr(out / f"normals_exr/clip/clip_{i:06d}_normals.exr"), normals)
        colored = np.asarray(Image.open(out / f"depth_colored/clip/clip_{i:06d}_depth_colored.png"))
        assert np.array_equal(colored, png_pixels("depth_colored", depth, normals))
        rgb = np.asarray(Image.open(out / f"normals_png/clip/clip_{i:06d}_normals.png"))
        assert np.array_equal(rgb, png_pixels("normals_png", depth, normals))


def test_run_infer_refuses_align_to_with_videos_before_any_work(tmp_path, engine):
    folder = tmp_path / "in"
    folder.mkdir()
    scene_image(64, 48).save(folder / "a.png")
    write_clip(folder / "clip.mp4", frames=2)
    (tmp_path / "align").mkdir()
    np.save(tmp_path / "align/a.npy", np.ones((48, 64)))
    with pytest.raises(InvalidInput, match="--align-to: videos get no metric depth"):
        run_infer(engine, folder, tmp_path / "out", progress=False, align_to=tmp_path / "align")
    assert not (tmp_path / "out").exists() or files_under(tmp_path / "out") == []


# -- failed inputs leave nothing behind ---------------------------------------------------------------------------


def test_a_run_that_writes_nothing_leaves_no_output_folder(tmp_path):
    """Every image unreadable, or an option refused after the folder was checked: the folders this run made go
    again; a folder that was there before stays (with what it held)."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_text("not an image")
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "new" / "out"
    result = runner.invoke(app, ["infer", str(images), "-o", str(out), "--no-progress"])
    assert result.exit_code == 1 and "2 image(s) failed" in result.output
    assert not (tmp_path / "new").exists()
    result = runner.invoke(app, ["infer", str(images), "-o", str(out), "--fov", "60", "--no-progress"])
    assert result.exit_code == 2 and not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    (kept / "old").mkdir(parents=True)
    result = runner.invoke(app, ["infer", str(images), "-o", str(kept), "--no-progress"])
    assert result.exit_code == 1 and (kept / "old").is_dir()
