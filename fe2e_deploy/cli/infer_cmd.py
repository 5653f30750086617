"""``fe2e-deploy infer``."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InvalidInput
from ..files.atomic import outermost_missing, remove_empty_folders
from ..resolution import MAX_PROCESSING_PIXELS
from . import options
from .app import app, report_images, user_errors
from .options import (
    ENGINE_HELP,
    AlignToOption,
    BatchSize,
    Device,
    DitOption,
    Dtype,
    EndSeconds,
    FovOption,
    FrameStride,
    IntrinsicsOption,
    LoraOption,
    MaxFrames,
    MaxPointsOption,
    MaxProcessingPixels,
    ModelConfigOption,
    NpyDtype,
    OutputResOption,
    OutputsOption,
    Overwrite,
    PngCompression,
    ProcessingRes,
    Progress,
    PromptOption,
    StartSeconds,
    TemporalOption,
    TemporalSmoothingOption,
    VaeOption,
    WeightStreamingBudget,
    number,
)


def refuse_unused_options(
    image_kinds: tuple[str, ...],
    frame_kinds: tuple[str, ...],
    source: Path,
    camera: dict[str, object],
    video: dict[str, object],
    npy_dtype: str,
    png_compression: int,
) -> None:
    """An option given that would change nothing is refused in one line, before any work: nothing asked for is
    silently dropped. ``image_kinds``/``frame_kinds``: what the images/videos of the input will get (empty without
    any); ``camera``: the point-cloud options (None: not given); ``video``: the video options given (other than their
    defaults) to an input that holds no video."""
    from ..files.outputs import OUTPUT_KINDS  # noqa: PLC0415  (numpy: at run time, as output_options)

    kinds = set(image_kinds) | set(frame_kinds)
    npy_kinds = [kind for kind, suffix in OUTPUT_KINDS.items() if suffix.endswith(".npy")]  # what --npy-dtype sets
    png_kinds = [kind for kind, suffix in OUTPUT_KINDS.items() if suffix.endswith(".png")]  # --png-compression
    if "pointcloud" not in kinds:
        for option, value in camera.items():
            if value is not None:
                raise InvalidInput(
                    f"{option} applies to point clouds, and none is written (add pointcloud to --outputs)"
                )
    for option, value in video.items():
        shown = f"{value:g}" if isinstance(value, float) else value
        raise InvalidInput(f"{option} {shown} applies to videos, and {source} holds none")
    if npy_dtype != "float32" and not kinds & set(npy_kinds):
        raise InvalidInput(
            f"--npy-dtype {npy_dtype} applies to .npy outputs ({', '.join(npy_kinds)}), and none is written"
        )
    if png_compression != 1 and not kinds & set(png_kinds):
        raise InvalidInput(
            f"--png-compression {png_compression} applies to PNG outputs ({', '.join(png_kinds)}), and none is written"
        )


@app.command("infer")
def infer(
    images_dir: Path = typer.Argument(
        ...,
        help="Folder of .jpg/.jpeg/.png images and/or videos (.mp4/.mov/.mkv/.webm/.avi/.m4v), searched "
        "recursively; or one video file.",
    ),
    output_dir: Path = typer.Option(..., "--output-dir", "-o", help="Output folder (sub-folders mirror the input)."),
    engine: Path = typer.Option(None, help=ENGINE_HELP + " Exclusive with the model file options."),
    model_config: ModelConfigOption = None,
    dit: DitOption = None,
    vae: VaeOption = None,
    prompt_embedding: PromptOption = None,
    lora: LoraOption = None,
    dtype: Dtype = None,
    device: Device = "auto",
    processing_res: ProcessingRes = None,
    max_processing_pixels: MaxProcessingPixels = MAX_PROCESSING_PIXELS,
    cfg_batch: bool = typer.Option(
        False, "--cfg-batch", help="Run the official batch of 2 (cond + uncond, both empty prompts) instead of 1."
    ),
    batch_size: BatchSize = 1,
    weight_streaming_budget: WeightStreamingBudget = None,
    outputs: OutputsOption = "all",
    output_res: OutputResOption = "input",
    png_compression: PngCompression = 1,
    npy_dtype: NpyDtype = "float32",
    writers: int = typer.Option(
        None,
        **number(1, 256),
        help="Threads encoding and writing outputs beside the engine (default: cores - 1, at most 4).",
    ),
    frame_stride: FrameStride = 1,
    max_frames: MaxFrames = None,
    start: StartSeconds = 0.0,
    end: EndSeconds = None,
    temporal: TemporalOption = "align",
    temporal_smoothing: TemporalSmoothingOption = None,
    intrinsics: IntrinsicsOption = None,
    fov: FovOption = None,
    max_points: MaxPointsOption = None,
    align_to: AlignToOption = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
) -> None:
    """Predict depth and surface normals for every image in IMAGES_DIR.

    With no model options, runs the embedded demo model (trained on synthetic scenes) at its training size, 128x96.
    Writes depth_npy/, depth_png16/ (16-bit), depth_colored/, normals_npy/ and normals_png/ at
    each input's resolution (--outputs, --output-res choose). Images are decoded and outputs
    written by threads beside the engine. Images that cannot be read or processed are reported and
    skipped (exit code 1 at the end).

    Videos are streamed frame by frame (never whole in memory; audio dropped) and get depth_video/ and
    normals_video/ previews (H.264, one frame per frame processed, at the clip's fps / --frame-stride), plus
    a per-frame folder for each kind --outputs names (any an image has: npy, PNG, EXR, point clouds).
    --temporal align (default) puts every frame's depth in one scale/shift for the clip (so a clip's point
    clouds share one frame of reference); normals need no alignment. A video that cannot be decoded fails
    alone; its outputs appear under their names only when complete.

    Images: --outputs pointcloud writes a binary PLY per image (see --intrinsics; z is relative, exp of FE2E's
    log depth, unless --align-to makes it metric); --align-to fits each image's depth to known metric depths.
    """
    created = outermost_missing(Path(output_dir))  # what this run makes and writes nothing into does not stay
    try:
        with user_errors():
            from ..infer import check_align_to, check_infer_inputs, run_infer  # noqa: PLC0415  (heavy: at run time)

            settings = options.engine_options(
                device, dtype, processing_res, max_processing_pixels, batch_size, progress, weight_streaming_budget
            )  # checked before anything is loaded
            written = options.output_options(
                outputs, output_res, png_compression, npy_dtype, intrinsics, fov, max_points
            )
            video = options.video_options(outputs, frame_stride, max_frames, start, end, temporal, temporal_smoothing)
            root, images, videos = check_infer_inputs(images_dir, output_dir)  # before loading a model
            check_align_to(align_to, videos, root)
            if align_to is not None:  # an image without known depths refuses the run, before the model is loaded
                from ..metric_align import find_align_files  # noqa: PLC0415

                find_align_files(align_to, [image.relative_to(root) for image in images])
            video_flags = (
                ("--frame-stride", frame_stride, 1),
                ("--max-frames", max_frames, None),
                ("--start", start, 0.0),
                ("--end", end, None),
                ("--temporal", temporal, "align"),
                ("--temporal-smoothing", temporal_smoothing, None),
            )
            refuse_unused_options(
                written.kinds if images else (),
                video.kinds if videos else (),
                images_dir,
                {"--intrinsics": intrinsics, "--fov": fov, "--max-points": max_points},
                {} if videos else {flag: value for flag, value, default in video_flags if value != default},
                npy_dtype,
                png_compression,
            )
            if "pointcloud" in written.kinds and intrinsics is None and fov is None:
                typer.echo(
                    "note: point clouds of images without an EXIF focal length assume a 60 deg horizontal field of "
                    "view (give --intrinsics or --fov)",
                    err=True,
                )
            if engine is not None:
                if any(v is not None for v in (model_config, dit, vae, prompt_embedding, lora)) or cfg_batch:
                    raise InvalidInput(
                        "--engine cannot be combined with "
                        "--model-config/--dit/--vae/--prompt-embedding/--lora/--cfg-batch"
                    )
                from ..engines import load_engine  # noqa: PLC0415  (imports only the backend the engine needs)

                runner = load_engine(engine, settings)
            else:
                from ..engines.eager import EagerEngine  # noqa: PLC0415
                from ..model_files import ModelFiles  # noqa: PLC0415

                files = ModelFiles.resolve(model_config, dit, vae, prompt_embedding, lora)
                runner = EagerEngine.from_model_files(
                    files, settings, cfg_batch=cfg_batch
                )  # the demo: its training size
            with runner:
                report = run_infer(
                    runner,
                    root,
                    output_dir,
                    overwrite=overwrite,
                    progress=progress,
                    outputs=written,
                    writers=writers,
                    images=images,
                    videos=videos,
                    video=video,
                    align_to=align_to,
                )
        report_images(report)
    finally:
        if created is not None:
            remove_empty_folders(created)
