"""Issue 33, ``infer``'s newer surfaces (clips, point clouds, --align-to, EXR) given bad inputs: nothing lost, nothing
asked for silently dropped, and each problem one line naming it (exit code 2) or one failed input of a finished run."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import scene_image
from test_video import decoded, write_clip

from fe2e_deploy.engines.eager import EagerEngine
from fe2e_deploy.files.outputs import OutputOptions
from fe2e_deploy.files.video import VideoError, VideoWriter, encoder
from fe2e_deploy.infer import run_infer
from fe2e_deploy.video_infer import VideoOptions


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
