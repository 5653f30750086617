"""``demo``: a web page (Gradio) over one engine: upload an image or a clip, see depth, normals and the point cloud.

The page is a thin view over ``infer``: every upload is copied into a fresh folder and run through
:func:`~fe2e_deploy.infer.run_infer` with the one engine opened at start (:class:`DemoRunner`), so the maps,
the files offered for download (``.npy``, 16-bit PNG, PLY) and the timings are exactly ``infer``'s. An image
gets every image output plus the point cloud (``--max-points`` of them); a clip gets the two preview videos of
``infer`` on videos (at most ``max_clip_frames`` frames). The 3D viewer shows the PLY turned into the viewer's
axes (y up); the download is ``infer``'s file.

Inputs are checked before the engine sees them: an image over ``max_image_pixels`` (from its header, before
decoding), a file that is no image, a clip that cannot be decoded or whose frames are too large: each is a
:class:`~fe2e_deploy.errors.UserError` the page shows as a message, and the app goes on. One engine call runs at
a time (a lock here, and Gradio's queue with one worker shared by both tabs, at most ``queue_size`` waiting).

Files: the uploads Gradio receives, the copies it serves and every result are in the runner's work folder
(``work_dir``; by default a fresh ``fe2e-demo-*`` under the temporary folder, 0700, deleted by
:meth:`DemoRunner.close`): Gradio's temp folder is its ``gradio/`` (``GRADIO_TEMP_DIR``, set by
:func:`build_app`), not the shared ``/tmp/gradio``. The command also makes the files it creates 0600.

Gradio is the optional ``demo`` extra, imported only by :func:`build_app` and :func:`launch`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from .engines import Engine, EngineOptions
from .errors import ImageError, InvalidInput
from .files.images import READ_ERRORS, read_image, unreadable_image
from .files.outputs import OUTPUT_KINDS, OutputOptions
from .files.pointcloud import CameraOptions
from .infer import InferReport

#: Largest input image by default (serve's default): 6048x4032 = 24.4 MP, the largest FE2E's rule brings down.
MAX_IMAGE_PIXELS = 6048 * 4032
#: Frames of a clip processed at most, by default (the rest of the clip is left out).
MAX_CLIP_FRAMES = 120
#: Points of the point cloud by default (drawn with a fixed seed, as ``infer --max-points``).
MAX_POINTS = 100_000
#: Largest upload by default (MB).
MAX_FILE_MB = 200.0
#: Requests waiting in the queue at most by default (more are refused with a message).
QUEUE_SIZE = 8
#: Result folders kept on disk (older ones are deleted as new uploads arrive).
KEEP_RUNS = 8
#: The image outputs the page offers (infer's five maps and the point cloud).
IMAGE_KINDS = (*OUTPUT_KINDS, "pointcloud")
EXAMPLES_DIR = Path(__file__).parents[1] / "examples" / "images"
#: The rendered calibration scenes shipped in the source tree (the same pixels as ``scenes.render_scene``).
SCENES_DIR = Path(__file__).parents[1] / "calibration" / "images"


@dataclass(frozen=True)
class DemoOptions:
    """Limits of the page: input sizes, clip length, point count, upload size and queue."""

    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_clip_frames: int = MAX_CLIP_FRAMES
    max_points: int = MAX_POINTS
    max_file_mb: float = MAX_FILE_MB
    queue_size: int = QUEUE_SIZE

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_clip_frames", "max_points", "queue_size"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"--{name.replace('_', '-')} {getattr(self, name)}: must be an integer >= 1")
        if not self.max_file_mb > 0:
            raise InvalidInput(f"--max-file-mb {self.max_file_mb}: must be a number > 0")


@dataclass
class ImageResult:
    """What ``infer`` wrote for one uploaded image (``files``: kind -> path), the image shown, and its report."""

    image: Path  # the decoded input as PNG (what the slider shows)
    files: dict[str, Path]
    viewer_ply: Path  # the point cloud in the viewer's axes
    report: InferReport
    engine: str


@dataclass
class ClipResult:
    """The preview videos ``infer`` wrote for one uploaded clip, and its report."""

    depth_video: Path
    normals_video: Path
    report: InferReport
    engine: str
    frames: int = 0
    notes: list[str] = field(default_factory=list)


def open_demo_engine(engine: str | Path | None, options: EngineOptions) -> Engine:
    """The engine at ``engine`` (:func:`~fe2e_deploy.engines.load_engine`), or, when None, the embedded demo
    model at its training size, as ``infer`` opens it without model options."""
    if engine is not None:
        from .engines import load_engine  # noqa: PLC0415

        return load_engine(engine, options)
    from .engines.eager import EagerEngine  # noqa: PLC0415
    from .model_files import demo_model_files  # noqa: PLC0415

    return EagerEngine.from_model_files(demo_model_files(), options)


class DemoRunner:
    """One engine, opened once, and the uploads it runs (one at a time) through ``infer``'s pipeline.

    Each upload gets a folder under ``work_dir``; the newest :data:`KEEP_RUNS` are kept (the page serves their
    files), older ones deleted. Gradio's own files (uploads as received, the copies it serves) go to
    ``gradio_dir``, inside it. A ``work_dir`` made here is private (0700).
    """

    def __init__(self, engine: Engine, options: DemoOptions | None = None, work_dir: str | Path | None = None):
        self.engine = engine
        self.options = options or DemoOptions()
        self._own_dir = work_dir is None
        self.work_dir = Path(tempfile.mkdtemp(prefix="fe2e-demo-") if work_dir is None else work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.gradio_dir = self.work_dir / "gradio"
        self.gradio_dir.mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._runs: deque[Path] = deque()
        self._count = 0

    def _new_run(self, upload: Path) -> tuple[Path, Path, Path]:
        """(input file, input folder, output folder) of a new run: the upload copied under a safe name."""
        while len(self._runs) >= KEEP_RUNS:
            shutil.rmtree(self._runs.popleft(), ignore_errors=True)
        self._count += 1
        run = self.work_dir / f"run_{self._count:06d}"
        self._runs.append(run)
        inputs, outputs = run / "in", run / "out"
        inputs.mkdir(parents=True)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", upload.name).lstrip(".") or "upload"
        target = inputs / name
        shutil.copyfile(upload, target)
        return target, inputs, outputs

    def run_image(self, path: str | Path) -> ImageResult:
        """Run ``infer`` on one image file; :class:`ImageError` (a user error) when it cannot be processed."""
        from .infer import run_infer  # noqa: PLC0415

        path = Path(path)
        try:
            image = read_image(path, max_pixels=self.options.max_image_pixels)  # the size from the header first
        except ImageError as exc:
            raise ImageError(f"{path.name}: {exc}") from None
        except READ_ERRORS as exc:
            raise ImageError(f"{path.name}: {unreadable_image(exc, path)}") from None
        outputs = OutputOptions(kinds=IMAGE_KINDS, camera=CameraOptions(max_points=self.options.max_points))
        with self._lock:
            source, inputs, out_dir = self._new_run(path)
            shown = source.parent.parent / "input.png"
            image.save(shown, compress_level=1)
            report = run_infer(
                self.engine, inputs, out_dir, progress=False, outputs=outputs, images=[source], videos=[]
            )
        if report.failed:
            raise ImageError(f"{path.name}: {report.failed[0][1]}")
        from .files.outputs import output_paths  # noqa: PLC0415

        files = output_paths(out_dir, source.relative_to(inputs), source.stem, IMAGE_KINDS)
        viewer = source.parent.parent / "viewer.ply"
        viewer_cloud(files["pointcloud"], viewer)
        return ImageResult(shown, files, viewer, report, self.engine.name)

    def run_clip(self, path: str | Path) -> ClipResult:
        """Run ``infer`` on one clip (at most ``max_clip_frames`` frames); :class:`ImageError` when it cannot be
        decoded, holds no frame, or its frames are over ``max_image_pixels``."""
        from .files.video import FrameRange, VideoError, probe  # noqa: PLC0415
        from .infer import run_infer  # noqa: PLC0415
        from .video_infer import VideoOptions, video_paths  # noqa: PLC0415

        path = Path(path)
        try:
            info = probe(path)
        except VideoError as exc:
            raise ImageError(f"{path.name}: {exc}") from None
        width, height = info.size
        limit = self.options.max_image_pixels
        if width * height > limit:
            raise ImageError(
                f"{path.name}: frames of {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit of "
                f"{limit / 1e6:.1f} megapixels (--max-image-pixels)"
            )
        video = VideoOptions(frames=FrameRange(max_frames=self.options.max_clip_frames))
        with self._lock:
            source, inputs, out_dir = self._new_run(path)
            report = run_infer(self.engine, inputs, out_dir, progress=False, images=[], videos=[source], video=video)
        if report.failed:
            raise ImageError(f"{path.name}: {report.failed[0][1]}")
        videos, _ = video_paths(out_dir, source.relative_to(inputs), source.stem, ())
        notes = []
        if info.frames is not None and info.frames > self.options.max_clip_frames:
            notes.append(f"the first {self.options.max_clip_frames} of {info.frames} frames (--max-clip-frames)")
        return ClipResult(
            videos["depth_video"], videos["normals_video"], report, self.engine.name, report.frames, notes
        )

    def close(self) -> None:
        """Close the engine and delete the result folders (the whole work folder when this runner made it)."""
        self.engine.close()
        if self._own_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        else:
            for run in self._runs:
                shutil.rmtree(run, ignore_errors=True)
        self._runs.clear()


def viewer_cloud(ply: Path, target: Path) -> None:
    """``infer``'s PLY (OpenCV camera axes: y down, z forward) as the 3D viewer shows it (y up, z towards the
    viewer): y and z, and the normals' y and z, negated."""
    from plyfile import PlyData  # noqa: PLC0415

    from .files.pointcloud import write_ply  # noqa: PLC0415

    data = PlyData.read(str(ply))
    points = data["vertex"].data.copy()
    for name in ("y", "z", "ny", "nz"):
        points[name] = -points[name]
    comments = [*data.comments, "axes turned for the viewer: x right, y up, z towards the viewer"]
    write_ply(target, points, comments)


def timings_markdown(report: InferReport, engine: str) -> str:
    """The engine's name and ``infer``'s figures for one run (per stage, then ``infer``'s summary line)."""
    rows = [
        ("decode + pre-process (reader thread)", report.read_seconds),
        ("engine (predict_prepared)", report.predict_seconds),
        ("post-process + encode + write (writer threads)", report.write_seconds),
        ("end to end", report.total_seconds),
    ]
    table = "\n".join(f"| {stage} | {seconds:.3f} |" for stage, seconds in rows)
    return (
        f"**Engine:** `{engine}`\n\n| stage (infer's timers) | seconds |\n|---|---:|\n{table}\n\n"
        f"infer's summary: `{report.summary()}`"
    )


def examples_cache() -> Path:
    """Where rendered examples are kept between starts: ``$XDG_CACHE_HOME/fe2e-deploy/demo-examples``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fe2e-deploy" / "demo-examples"


def example_images(folder: Path | None = None, scenes: int = 3) -> list[Path]:
    """The project's example images and the first ``scenes`` calibration scenes (from the source tree, else
    rendered once into ``folder``, default :func:`examples_cache`: the same pixels)."""
    from .files.atomic import atomic_write  # noqa: PLC0415
    from .scenes import render_scene, scene_name  # noqa: PLC0415

    found = sorted(EXAMPLES_DIR.glob("*.jpg")) + sorted(EXAMPLES_DIR.glob("*.png")) if EXAMPLES_DIR.is_dir() else []
    folder = folder or examples_cache()
    for index in range(scenes):
        shipped = SCENES_DIR / scene_name(index)
        path = shipped if shipped.is_file() else folder / scene_name(index)
        if not path.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp, image=render_scene(index): image.save(tmp, format="PNG"))
        found.append(path)
    return found


def example_clips(folder: Path | None = None, kinds: tuple[str, ...] = ("dolly",), frames: int = 24) -> list[Path]:
    """Rendered camera clips (:mod:`~fe2e_deploy.scene_clips`, 128x96) as examples of the clip tab, rendered once
    into ``folder`` (default :func:`examples_cache`); none without PyAV."""
    from .scene_clips import write_clip  # noqa: PLC0415

    try:
        import av  # noqa: F401, PLC0415  (PyAV writes the clips)
    except ImportError:
        return []
    folder = folder or examples_cache()
    clips = []
    for kind in kinds:
        path = folder / f"{kind}_{frames}.mp4"
        if not path.is_file():  # the video is renamed into place when complete
            folder.mkdir(parents=True, exist_ok=True)
            video, depth = write_clip(folder, kind, frames)
            depth.unlink()
            video.replace(path)
        clips.append(path)
    return clips


def build_app(runner: DemoRunner, examples: bool = True):
    """The Gradio Blocks of the page over ``runner`` (not launched); Gradio's files go to ``runner.gradio_dir``."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["GRADIO_TEMP_DIR"] = str(runner.gradio_dir)  # read by the components and the server as they are made
    import gradio as gr  # noqa: PLC0415  (the demo extra)

    from .errors import describe, is_user_error  # noqa: PLC0415

    def run(method, path: str):
        """``method(path)``; a user error becomes a message in the page, a bug keeps its traceback in the log."""
        try:
            return method(path)
        except Exception as exc:
            if is_user_error(exc):
                raise gr.Error(
                    describe(exc), title="Cannot process this file", duration=None, print_exception=False
                ) from None
            raise gr.Error(f"{type(exc).__name__}: {exc}", title="Internal error", duration=None) from exc

    def predict_image(path: str | None):
        if path is None:
            return None, None, None, None, None, ""
        result = run(runner.run_image, path)
        files = result.files
        downloads = [str(files[k]) for k in ("depth_npy", "depth_png16", "normals_npy", "normals_png", "pointcloud")]
        return (
            (str(result.image), str(files["depth_colored"])),
            str(files["depth_colored"]),
            str(files["normals_png"]),
            str(result.viewer_ply),
            downloads,
            timings_markdown(result.report, result.engine),
        )

    def predict_clip(path: str | None):
        if path is None:
            return None, None, ""
        result = run(runner.run_clip, path)
        notes = "".join(f"\n\nNote: {note}" for note in result.notes)
        text = f"{result.frames} frames. " + timings_markdown(result.report, result.engine) + notes
        return str(result.depth_video), str(result.normals_video), text

    with gr.Blocks(title="FE2E depth + normals", delete_cache=(3600, 3600)) as blocks:
        gr.Markdown(
            f"# FE2E: depth and surface normals\nEngine: `{runner.engine.name}`. Drop or pick an image (or a clip "
            "in the Clip tab); the maps are what `fe2e-deploy infer` writes. Depth colour map: near is warm "
            "(red), far is cool (blue)."
        )
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column():
                    image_in = gr.File(label="Image (.png, .jpg, ...)", file_types=["image"], elem_id="image-input")
                    if examples:
                        gr.Examples([[str(p)] for p in example_images()], inputs=[image_in])
                    timings = gr.Markdown(elem_id="timings")
                slider = gr.ImageSlider(label="Input | depth (drag the slider)", type="filepath", elem_id="slider")
            with gr.Row():
                depth_out = gr.Image(label="Depth (near = warm)", type="filepath", elem_id="depth")
                normals_out = gr.Image(label="Normals", type="filepath", elem_id="normals")
            cloud = gr.Model3D(
                label="Point cloud (with normals; relative depth)", display_mode="point_cloud", elem_id="cloud"
            )
            downloads = gr.File(
                label="Downloads: depth .npy, 16-bit PNG, normals .npy and PNG, PLY", elem_id="downloads"
            )
        with gr.Tab("Clip"), gr.Row():
            with gr.Column():
                clip_in = gr.File(
                    label="Clip (.mp4, .mov, .mkv, .webm, ...)", file_types=["video"], elem_id="clip-input"
                )
                if examples:
                    gr.Examples([[str(p)] for p in example_clips()], inputs=[clip_in])
                clip_timings = gr.Markdown(elem_id="clip-timings")
            depth_video = gr.Video(label="Depth video", elem_id="depth-video")
            normals_video = gr.Video(label="Normals video", elem_id="normals-video")
        common = {"concurrency_limit": 1, "concurrency_id": "engine"}  # one engine call at a time, both tabs
        image_in.change(
            predict_image,
            inputs=[image_in],
            outputs=[slider, depth_out, normals_out, cloud, downloads, timings],
            api_name="predict_image",
            **common,
        )
        clip_in.change(
            predict_clip,
            inputs=[clip_in],
            outputs=[depth_video, normals_video, clip_timings],
            api_name="predict_clip",
            **common,
        )
    blocks.queue(max_size=runner.options.queue_size, default_concurrency_limit=1)
    return blocks


def launch(runner: DemoRunner, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page on ``host:port`` (never a public share link; an IPv6 address such as ``::1`` with or
    without brackets); blocks until Ctrl-C unless ``block`` is False (then returns the Blocks: ``.close()`` stops
    it)."""
    blocks = build_app(runner)
    blocks.launch(
        server_name=url_host(host),  # Gradio builds its URL with it (and strips the brackets to bind)
        server_port=port,
        share=False,
        inbrowser=False,
        show_error=True,
        quiet=True,
        prevent_thread_lock=not block,
        max_file_size=int(runner.options.max_file_mb * 2**20),
        allowed_paths=[str(runner.work_dir), str(EXAMPLES_DIR), str(SCENES_DIR), str(examples_cache())],
    )
    for path in runner.gradio_dir.rglob("*"):  # Gradio copies the examples with their modes (0644)
        path.chmod(0o700 if path.is_dir() else 0o600)
    return blocks


def url_host(host: str) -> str:
    """``host`` as it goes into a URL: an IPv6 address in brackets (``::1`` -> ``[::1]``)."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
