"""Videos in ``infer``: frames streamed through the engine, preview videos and per-frame files, bad videos alone."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import model_file_args, scene_image
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.engines.eager import EagerEngine
from fe2e_deploy.files.outputs import OutputOptions
from fe2e_deploy.files.video import (
    FrameRange,
    VideoError,
    VideoWriter,
    encoder,
    expected_frames,
    iter_frames,
    probe,
)
from fe2e_deploy.infer import run_infer
from fe2e_deploy.video_infer import VideoOptions

FPS = 12


def write_clip(path: Path, frames: int = 12, width: int = 64, height: int = 48, fps: int = FPS) -> Path:
    """A tiny clip made with PyAV (lossless H.264): a scene drifting sideways; frame i's corner = i * 16."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
    stream.options = {"qp": "0"}
    base = np.asarray(scene_image(width * 2, height, seed=1))
    for i in range(frames):
        rgb = np.ascontiguousarray(base[:, i : i + width])
        rgb[:4, :4] = i * 16  # a marker that says which frame this is
        container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
    container.mux(stream.encode())
    container.close()
    return path


def markers(path: Path, selection: FrameRange = FrameRange()) -> list[int]:
    return [int(round(np.asarray(image)[:4, :4].mean() / 16)) for image in iter_frames(path, selection)]


def decoded(path: Path) -> tuple[int, tuple[int, int], Fraction]:
    """(frames, (width, height), fps) of a video, by decoding it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        return len(frames), (frames[0].shape[1], frames[0].shape[0]), stream.average_rate


@pytest.fixture()
def engine(tiny_pipeline):
    return EagerEngine(tiny_pipeline, processing_res=(32, 32))


def test_frames_are_selected_by_stride_count_and_time(tmp_path):
    clip = write_clip(tmp_path / "c.mp4")
    info = probe(clip)
    assert info.fps == FPS and info.size == (64, 48) and info.frames == 12
    cases = {
        FrameRange(): list(range(12)),
        FrameRange(stride=3): [0, 3, 6, 9],
        FrameRange(max_frames=5): [0, 1, 2, 3, 4],
        FrameRange(start=0.5, end=0.75): [6, 7, 8],
        FrameRange(stride=2, start=0.25, max_frames=3): [3, 5, 7],
    }
    for selection, frames in cases.items():
        assert markers(clip, selection) == frames, selection
        assert expected_frames(info, selection) == len(frames), selection
    with pytest.raises(VideoError, match="no frame"):
        list(iter_frames(clip, FrameRange(start=5.0)))
    with pytest.raises(ValueError, match="frame-stride"):
        FrameRange(stride=0)


def test_undecodable_and_empty_videos_fail_as_one_line_errors(tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    with pytest.raises(VideoError, match="undecodable video"):
        probe(broken)
    empty = tmp_path / "empty.mkv"
    with av.open(str(empty), "w") as container:
        stream = container.add_stream("ffv1", rate=FPS)
        stream.width, stream.height = 64, 48
    with pytest.raises(VideoError):
        list(iter_frames(empty))


def test_fast_depth_preview_is_within_one_step_of_the_exact_one():
    from fe2e_deploy.files.colormaps import depth_preview
    from fe2e_deploy.video_infer import depth_preview_fast

    depth = np.random.default_rng(0).uniform(-0.1, 1.1, (97, 131)).astype(np.float32)
    diff = np.abs(depth_preview_fast(depth).astype(int) - depth_preview(depth).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.5


def test_video_writer_renames_only_when_complete(tmp_path):
    target = tmp_path / "v" / f"out{encoder()[1]}"
    writer = VideoWriter(target, Fraction(30000, 1001))
    for i in range(5):
        writer.write(np.full((49, 65, 3), i * 40, np.uint8))  # odd sides
    assert not target.exists()  # only a hidden temporary (once the muxer writes) until close()
    writer.close()
    assert decoded(target) == (5, (65, 49), Fraction(30000, 1001))
    aborted = VideoWriter(tmp_path / "w.mp4", Fraction(FPS))
    aborted.write(np.zeros((48, 64, 3), np.uint8))
    aborted.abort()
    assert list(tmp_path.iterdir()) == [tmp_path / "v"] and len(list((tmp_path / "v").iterdir())) == 1


def test_infer_streams_videos_next_to_images(tmp_path, engine):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    scene_image(40, 30).save(folder / "photo.png")
    write_clip(folder / "sub" / "clip.mp4")
    (folder / "broken.mov").write_bytes(b"not a video at all")
    out = tmp_path / "out"
    kinds = ("depth_npy", "depth_png16", "normals_npy")
    options = VideoOptions(FrameRange(stride=2), "align", kinds, smoothing=0.0)  # align alone: affine per frame
    report = run_infer(engine, folder, out, progress=False, video=options, writers=2)
    assert [p.name for p in report.written] == ["photo.png", "clip.mp4"]
    assert [p.name for p, _ in report.failed] == ["broken.mov"] and "undecodable video" in report.failed[0][1]
    assert report.videos == 1 and report.frames == 6 and report.predicted == 7
    suffix = encoder()[1]
    for kind in ("depth", "normals"):
        assert decoded(out / f"{kind}_video/sub/clip_{kind}{suffix}") == (6, (64, 48), Fraction(FPS, 2))
    npys = sorted((out / "depth_npy/sub/clip").iterdir())
    assert [p.name for p in npys] == [f"clip_{i:06d}_depth.npy" for i in range(6)]
    assert len(list((out / "depth_png16/sub/clip").iterdir())) == 6
    normals = np.load(out / "normals_npy/sub/clip/clip_000003_normals.npy")
    assert normals.shape == (48, 64, 3) and np.allclose(np.linalg.norm(normals, axis=-1), 1, atol=1e-4)
    assert not list(out.rglob(".*tmp*")) and not list(out.rglob("*broken*"))  # nothing of the failed video

    # temporal none: the per-frame maps are the engine's own; align without smoothing maps them affinely
    plain = run_infer(
        engine,
        folder / "sub",
        tmp_path / "plain",
        progress=False,
        video=VideoOptions(FrameRange(stride=2), "none", ("depth_npy",)),
    )
    assert plain.frames == 6
    for i in range(6):
        raw = np.load(tmp_path / f"plain/depth_npy/clip/clip_{i:06d}_depth.npy").ravel()
        aligned = np.load(out / f"depth_npy/sub/clip/clip_{i:06d}_depth.npy").ravel()
        scale, shift = np.polyfit(raw, aligned, 1)
        assert np.abs(scale * raw + shift - aligned).max() < 1e-5 and scale > 0
        if i == 0:
            assert scale == pytest.approx(0.5) and shift == pytest.approx(0.25)

    again = run_infer(engine, folder, out, progress=False, video=options)
    assert {p.name for p, _ in again.skipped} == {"photo.png", "clip.mp4"} and again.frames == 0


def test_an_engine_error_midway_leaves_nothing_under_final_names(tmp_path, engine, monkeypatch):
    clip = write_clip(tmp_path / "clip.mp4")
    calls = {"n": 0}
    run = engine.run

    def failing(x, size):
        calls["n"] += 1
        depth, normals = run(x, size)
        return (depth * np.nan if calls["n"] == 5 else depth), normals

    monkeypatch.setattr(engine, "run", failing)
    out = tmp_path / "out"
    report = run_infer(engine, clip, out, progress=False, video=VideoOptions(kinds=("depth_npy",)))
    assert [p.name for p, _ in report.failed] == ["clip.mp4"] and "NaN" in report.failed[0][1]
    assert [p for p in out.rglob("*") if p.is_file()] == []


def test_cli_infer_on_one_video_file(tmp_path, tiny_dir):
    clip = write_clip(tmp_path / "clip.mp4", frames=6)
    out = tmp_path / "out"
    args = ["infer", str(clip), "-o", str(out), "--processing-res", "32x32", "--no-progress", "--max-frames", "4"]
    result = CliRunner().invoke(app, [*args, "--outputs", "depth_npy", *model_file_args(tiny_dir)])
    assert result.exit_code == 0, result.output
    assert "1 clip (4 frames) written" in result.output
    assert len(list((out / "depth_npy/clip").iterdir())) == 4
    assert decoded(out / f"depth_video/clip_depth{encoder()[1]}")[0] == 4
    bad = CliRunner().invoke(app, [*args, "--temporal", "smooth", *model_file_args(tiny_dir)])
    assert bad.exit_code == 2 and "--temporal smooth: not one of align, none" in bad.output
    for value in ("1", "-0.1", "nan"):
        bad = CliRunner().invoke(app, [*args, "--temporal-smoothing", value, *model_file_args(tiny_dir)])
        assert bad.exit_code == 2 and f"--temporal-smoothing {value}: must be a number from 0 to 0.999" in bad.output


def test_outputs_go_through_the_same_files_as_images(tmp_path, engine):
    """A clip and the same frames as PNG images give the same maps with --temporal none (the same pipeline)."""
    clip = write_clip(tmp_path / "clip.mp4", frames=3)
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, image in enumerate(iter_frames(clip)):
        image.save(frames_dir / f"f{i}.png")
    options = OutputOptions(kinds=("depth_npy",))
    run_infer(engine, frames_dir, tmp_path / "img", progress=False, outputs=options)
    run_infer(
        engine,
        clip,
        tmp_path / "vid",
        progress=False,
        outputs=options,
        video=VideoOptions(temporal="none", kinds=("depth_npy",)),
    )
    for i in range(3):
        image = np.load(tmp_path / f"img/depth_npy/f{i}_depth.npy")
        frame = np.load(tmp_path / f"vid/depth_npy/clip/clip_{i:06d}_depth.npy")
        np.testing.assert_array_equal(image, frame)


def test_per_frame_point_clouds_share_the_clips_frame_of_reference(tmp_path, engine):
    """--outputs pointcloud on a video: one PLY per frame, in frame order, z = exp of the frame's aligned depth (so
    the clip's clouds share one scale), the frame's colours, and normals equal to normals_npy; --fov applies."""
    from plyfile import PlyData

    from fe2e_deploy.files.pointcloud import CameraOptions

    clip = write_clip(tmp_path / "clip.mp4", frames=4)
    out = tmp_path / "out"
    kinds = ("pointcloud", "depth_npy", "normals_npy")
    outputs = OutputOptions(kinds=kinds, camera=CameraOptions(fov=90.0))
    report = run_infer(engine, clip, out, progress=False, outputs=outputs, video=VideoOptions(kinds=kinds))
    assert report.frames == 4 and not report.failed
    clouds = sorted((out / "pointcloud/clip").iterdir())
    assert [p.name for p in clouds] == [f"clip_{i:06d}_points.ply" for i in range(4)]
    frames = list(iter_frames(clip))
    for i, path in enumerate(clouds):
        ply = PlyData.read(str(path))
        vertex = ply["vertex"].data
        depth = np.load(out / f"depth_npy/clip/clip_{i:06d}_depth.npy")
        normals = np.load(out / f"normals_npy/clip/clip_{i:06d}_normals.npy")
        assert len(vertex) == 64 * 48
        np.testing.assert_allclose(vertex["z"], np.exp(depth.astype(np.float64)).ravel(), rtol=1e-6)
        for axis, name in enumerate(("nx", "ny", "nz")):
            assert np.array_equal(vertex[name], normals.reshape(-1, 3)[:, axis])
        rgb = np.stack([vertex[c] for c in ("red", "green", "blue")], axis=-1)
        assert np.array_equal(rgb, np.asarray(frames[i]).reshape(-1, 3))
        # --fov 90: fx = width / 2, so the right-most column sits at x = z * (63 - 31.5) / 32
        right = np.arange(len(vertex)) % 64 == 63
        np.testing.assert_allclose(vertex["x"][right], vertex["z"][right] * 31.5 / 32, rtol=1e-5)
        assert any("--fov 90" in c for c in ply.comments)


def write_vfr_clip(path: Path, times: list[float], width: int = 64, height: int = 48) -> Path:
    """A variable-frame-rate clip: frame i shown at ``times[i]`` seconds (90 kHz timestamps), marker i * 16."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=24)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv444p"
    stream.options = {"qp": "0"}
    stream.codec_context.time_base = stream.time_base = Fraction(1, 90_000)
    base = np.asarray(scene_image(width * 2, height, seed=2))
    for i, seconds in enumerate(times):
        rgb = np.ascontiguousarray(base[:, i : i + width])
        rgb[:4, :4] = i * 16
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = round(seconds * 90_000), Fraction(1, 90_000)
        container.mux(stream.encode(frame))
    container.mux(stream.encode())
    container.close()
    return path


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [round(frame.time, 4) for frame in container.decode(container.streams.video[0])]


def test_a_variable_frame_rate_clip_keeps_its_timing(tmp_path, engine):
    """Frames of a VFR clip keep their times in the previews (not re-timed at the average rate); --frame-stride
    counts frames, not ticks of the average rate."""
    times = [0.0, 0.04, 0.1, 0.13, 0.3, 0.31, 0.5, 0.62]
    clip = write_vfr_clip(tmp_path / "vfr.mp4", times)
    assert markers(clip) == list(range(8)) and frame_times(clip) == times
    report = run_infer(engine, clip, tmp_path / "out", progress=False, video=VideoOptions(kinds=("depth_npy",)))
    assert report.frames == 8 and not report.failed
    suffix = encoder()[1]
    for kind in ("depth", "normals"):
        assert frame_times(tmp_path / f"out/{kind}_video/vfr_{kind}{suffix}") == times
    assert len(list((tmp_path / "out/depth_npy/vfr").iterdir())) == 8
    assert markers(clip, FrameRange(stride=3)) == [0, 3, 6]
    strided = run_infer(engine, clip, tmp_path / "s", progress=False, video=VideoOptions(FrameRange(stride=3)))
    assert strided.frames == 3
    assert frame_times(tmp_path / f"s/depth_video/vfr_depth{suffix}") == [0.0, 0.13, 0.5]
    late = run_infer(engine, clip, tmp_path / "late", progress=False, video=VideoOptions(FrameRange(start=0.1)))
    assert late.frames == 6  # from 0.1 s; the previews start at 0
    assert frame_times(tmp_path / f"late/depth_video/vfr_depth{suffix}") == [0.0, 0.03, 0.2, 0.21, 0.4, 0.52]
