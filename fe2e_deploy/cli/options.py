"""Options shared by several commands, declared once (``Annotated`` types), and their parsing.

This module and the command modules import nothing heavy at the top (no torch, diffusers, onnx):
``fe2e-deploy --help`` must answer at once; each command imports its library inside its body.
"""

from __future__ import annotations

import errno
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ..config import MAX_SECONDS, MAX_SEED
from ..errors import InvalidInput, NotAFile, NotAFolder, OutputExists
from ..resolution import MAX_PROCESSING_PIXELS, check_processing_pixels, parse_resolution

#: The most pixels an image or processing-size option may name (a bound for the parser; limits are lower).
MAX_PIXELS = 2**31


class Number:
    """The parser of a numeric option: an integer (``low`` an int) or a finite number, from ``low`` to ``high``
    (None: no upper bound). Anything else is refused while parsing, before any work (one line, exit 2: ``main``),
    with the range; ``--help`` names the type. Every numeric option has one (``tests/test_cli_numbers.py``)."""

    def __init__(self, low: float, high: float | None = None):
        self.kind = int if isinstance(low, int) and isinstance(high, int | None) else float
        self.low, self.high = low, high
        self.__name__ = self.kind.__name__  # Typer names a parser by its __name__

    def describe(self) -> str:
        kind = "an integer" if self.kind is int else "a number"
        show = str if self.kind is int else "{:g}".format
        return (
            f"{kind} from {show(self.low)} to {show(self.high)}"
            if self.high is not None
            else f"{kind} >= {show(self.low)}"
        )

    def takes(self, value: float) -> bool:
        return self.low <= value and (self.high is None or value <= self.high)  # NaN fails both

    def __call__(self, text: str | float) -> float:
        try:
            value = self.kind(text)
        except (TypeError, ValueError, OverflowError):
            raise typer.BadParameter(f"must be {self.describe()}") from None
        if not self.takes(value) or (self.kind is float and not math.isfinite(value)):
            raise typer.BadParameter(f"must be {self.describe()}")
        return value


def number(low: float, high: float | None = None) -> dict:
    """``typer.Option(default, **number(1, 4096))``: the :class:`Number` parser of a numeric option."""
    return {"parser": Number(low, high)}


#: Every seed option: 0 to 2**63-1.
SEED_RANGE = number(0, MAX_SEED)


class Choices:
    """The parser of a string option with fixed choices: another value is refused while parsing (one line, exit
    2: ``main``), naming the choices; ``pattern`` also admits values matching it (``cuda:N``)."""

    def __init__(self, *choices: str, pattern: str | None = None, shown: str | None = None):
        self.choices, self.pattern = choices, re.compile(pattern) if pattern else None
        self.shown = shown or ", ".join(choices)
        self.__name__ = "choice"  # Typer names a parser by its __name__

    def __call__(self, value: str) -> str:
        if value not in self.choices and not (self.pattern and self.pattern.fullmatch(value)):
            raise typer.BadParameter(f"not one of {self.shown}")
        return value


def choice(*choices: str, pattern: str | None = None, shown: str | None = None) -> dict:
    """``typer.Option(..., **choice("a", "b"))``: the parser of a choice option (its help names the choices; a
    metavar listing them would widen --help's table until option names are cut)."""
    return {"parser": Choices(*choices, pattern=pattern, shown=shown)}


#: --device of the commands that run torch: auto, cpu, cuda or cuda:N.
DEVICE_CHOICE = choice("auto", "cpu", "cuda", pattern=r"cuda:\d+", shown="auto, cpu, cuda or cuda:N")

ENGINE_HELP = (
    "Engine: a model folder (official files, as init-tiny writes), a stripped folder, an export folder or its "
    "fe2e_WxH.onnx, an AOTInductor engine folder, or a TensorRT .plan."
)

Device = Annotated[
    str, typer.Option(**DEVICE_CHOICE, help="Torch device: auto (cuda when a GPU is visible, else cpu), cpu or cuda.")
]
Dtype = Annotated[
    str | None,
    typer.Option(
        **choice("fp32", "bf16"),
        help="DiT precision, fp32 or bf16 (the VAE stays FP32): of a model folder (default fp32) or a stripped "
        "folder (default: as stripped); built engines run in the precision they were built in.",
    ),
]
ProcessingRes = Annotated[
    str | None, typer.Option(help="Process at WIDTHxHEIGHT (multiples of 16) instead of FE2E's resize rule.")
]
MaxProcessingPixels = Annotated[
    int,
    typer.Option(
        **number(1, MAX_PIXELS),
        help="Largest processing size in pixels (width x height; default 2048x2048 = 4.2 MP): a larger "
        "--processing-res is refused, and an image FE2E's rule keeps at a larger size (over 6048x4032) fails alone.",
    ),
]
MaxImagePixels = Annotated[
    int | None,
    typer.Option(
        **number(1, MAX_PIXELS),
        help="Largest input image in pixels (width x height), read from its header before it is decoded: a larger "
        "one is refused (a small PNG can decode to gigabytes, and the maps come back at its size). serve's "
        "default: 6048x4032 = 24.4 MP, the largest image FE2E's resize rule brings down to 864x576.",
    ),
]
BatchSize = Annotated[
    int,
    typer.Option(
        **number(1, 4096),
        help="Images per engine call, at most (engines built for a static batch run that batch, the last call padded; "
        "dynamic-batch exports and plans run real batches up to their maximum).",
    ),
]
WeightStreamingBudget = Annotated[
    str | None,
    typer.Option(
        help="TensorRT plans built with --weight-streaming: GPU memory for their weights, in bytes (8GiB, 8GB, "
        "8589934592) or as a fraction of the streamable weights (0.5). Default: what fits in free GPU memory."
    ),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (else they are refused).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
ModelConfigOption = Annotated[
    str | None, typer.Option(help="Model config: a preset (step1x-edit, tiny) or a model_config.json (official names).")
]
DitOption = Annotated[Path | None, typer.Option(help="Official DiT checkpoint (.safetensors or .index.json).")]
VaeOption = Annotated[Path | None, typer.Option(help="Official FLUX VAE checkpoint (.safetensors).")]
PromptOption = Annotated[
    Path | None, typer.Option(help="Empty-prompt embedding (.npz with 'embeds' [L, C] and 'masks' [L]).")
]
LoraOption = Annotated[Path | None, typer.Option(help="FE2E LoRA (kohya .safetensors).")]
OutputsOption = Annotated[
    str,
    typer.Option(
        help="What to write, comma-separated: depth_npy, depth_png16, depth_colored, normals_npy, normals_png "
        "(default all; skipping the ones you do not need saves most of the host time). Only when named: pointcloud "
        "(binary PLY: x, y, z, colour, normal per pixel; see --intrinsics), depth_exr, normals_exr (float32 "
        "OpenEXR; pip install 'fe2e-deploy\\[exr]').",
    ),
]
OutputResOption = Annotated[
    str,
    typer.Option(
        **choice("input", "processing"),
        help="Resolution of the maps: input (each image's size) or processing (the size the model ran at).",
    ),
]
PngCompression = Annotated[
    int,
    typer.Option(
        **number(0, 9),
        help="zlib level 0-9 of the PNGs: smaller files or faster writing, the same pixels (old default: 6).",
    ),
]
NpyDtype = Annotated[
    str,
    typer.Option(
        **choice("float32", "float16"), help="Dtype of the .npy maps: float32 (exact) or float16 (half size)."
    ),
]

# -- point clouds and metric depth (infer) --
IntrinsicsOption = Annotated[
    str | None,
    typer.Option(
        help="Point clouds: camera intrinsics fx,fy,cx,cy in pixels of the output maps (OpenCV: integers are pixel "
        "centres). Precedence: --intrinsics, --fov, the image's EXIF 35 mm focal length, a 60 deg horizontal default."
    ),
]
FovOption = Annotated[
    float | None,
    typer.Option(
        **number(0.001, 179.999),
        help="Point clouds: horizontal field of view in degrees (principal point at the centre).",
    ),
]
MaxPointsOption = Annotated[
    int | None,
    typer.Option(
        **number(1), help="Point clouds: keep at most N points, drawn with a fixed seed (the same points every run)."
    ),
]
AlignToOption = Annotated[
    Path | None,
    typer.Option(
        help="Metric depth: a folder with one file of known depths per image, named after its stem (<stem>.npy as "
        "N x 3 u,v,depth or a dense HxW map of the image's size with NaN/0 invalid, or <stem>.csv with the header "
        "u,v,depth; u,v in pixels of the input image). Scale and shift are fitted robustly in FE2E's log-depth "
        "space; depth_npy, depth_exr, depth_png16 (x1000, mm for m) and point clouds become metric; the fit goes to "
        "alignment/. An image without a file refuses the run; one with too few valid points (< 4) fails alone."
    ),
]

# -- videos (infer) --
FrameStride = Annotated[
    int, typer.Option(**number(1), help="Videos: process every N-th frame (the preview videos run at fps / N).")
]
MaxFrames = Annotated[int | None, typer.Option(**number(1), help="Videos: process at most this many frames per video.")]
StartSeconds = Annotated[
    float, typer.Option("--start", **number(0.0, MAX_SECONDS), help="Videos: first second to process (default 0).")
]
EndSeconds = Annotated[
    float | None,
    typer.Option("--end", **number(0.0, MAX_SECONDS), help="Videos: stop at this second (default: the end)."),
]
TemporalOption = Annotated[
    str,
    typer.Option(
        **choice("align", "none"),
        help="Videos: align (each frame's depth fitted, robustly, onto the previous aligned frame moved by the "
        "picture's shift: one scale/shift for the whole clip, reset at scene cuts) or none (per-frame maps, each "
        "with its own scale/shift). Normals need no alignment (camera-space unit vectors, no scale or shift).",
    ),
]
TemporalSmoothingOption = Annotated[
    float | None,
    typer.Option(
        "--temporal-smoothing",
        **number(0.0, 0.999),
        help="Videos, --temporal align: weight in [0, 1) of the previous aligned frame (moved by the picture's "
        "shift) in each frame's depth, on the pixels where they agree (moving objects and new surfaces keep "
        "their own). 0: each frame's depth is an affine map of its own prediction. Default 0.7.",
    ),
]


def engine_options(
    device_name: str = "auto",
    dtype: str | None = None,
    processing_res_text: str | None = None,
    max_processing_pixels: int = MAX_PROCESSING_PIXELS,
    batch_size: int | None = None,
    progress: bool = False,
    weight_streaming_budget: str | None = None,
):
    """The engine options of a command's flags (parsed here, checked by ``EngineOptions`` itself)."""
    from ..engines.options import EngineOptions  # noqa: PLC0415  (torch: not at start-up)

    return EngineOptions(
        device=device(device_name),
        dtype=dtype,
        processing_res=parse_resolution(processing_res_text) if processing_res_text else None,
        max_processing_pixels=max_processing_pixels,
        batch_size=batch_size,
        progress=progress,
        weight_streaming_budget=weight_streaming_budget,
    )


def processing_res(text: str | None, max_pixels: int = MAX_PROCESSING_PIXELS) -> tuple[int, int] | None:
    """``--processing-res`` parsed (None when not given) and checked against ``--max-processing-pixels``."""
    size = parse_resolution(text) if text else None
    check_processing_pixels(size, max_pixels, "--processing-res")
    return size


def output_options(
    outputs: str,
    output_res: str,
    png_compression: int,
    npy_dtype: str,
    intrinsics: str | None = None,
    fov: float | None = None,
    max_points: int | None = None,
):
    """``--outputs/--output-res/--png-compression/--npy-dtype`` (and the point cloud's ``--intrinsics/--fov/
    --max-points``) as an ``OutputOptions`` (checked)."""
    from ..files.outputs import OUTPUT_KINDS, OutputOptions  # noqa: PLC0415  (numpy: not at start-up)
    from ..files.pointcloud import CameraOptions, parse_intrinsics  # noqa: PLC0415

    kinds = tuple(OUTPUT_KINDS) if outputs == "all" else tuple(k.strip() for k in outputs.split(",") if k.strip())
    if "alignment" in kinds:
        raise InvalidInput("--outputs alignment: the fit is written by --align-to, with the metric depth maps")
    camera = CameraOptions(parse_intrinsics(intrinsics), fov, max_points)
    return OutputOptions(kinds, output_res, png_compression, npy_dtype, camera)


def video_options(
    outputs: str,
    stride: int,
    max_frames: int | None,
    start: float,
    end: float | None,
    temporal: str,
    smoothing: float | None = None,
):
    """The video flags as a ``VideoOptions`` (checked): per-frame kinds are those ``--outputs`` names (none by
    default: a video gets its two preview videos); ``--temporal-smoothing`` needs ``--temporal align``."""
    from ..files.video import FrameRange  # noqa: PLC0415
    from ..video_infer import FRAME_KINDS, VideoOptions  # noqa: PLC0415

    named = () if outputs == "all" else tuple(k.strip() for k in outputs.split(",") if k.strip())
    kinds = tuple(k for k in named if k in FRAME_KINDS)
    frames = FrameRange(stride, max_frames, start, end)
    if smoothing is not None and temporal == "none":
        raise InvalidInput(
            f"--temporal-smoothing {smoothing:g}: applies to --temporal align only (got --temporal none)"
        )
    if smoothing is None:
        return VideoOptions(frames, temporal, kinds)
    return VideoOptions(frames, temporal, kinds, smoothing)


def device(name: str) -> str:
    """``--device`` resolved (auto -> cuda/cpu) and checked (cuda without a visible GPU is an error)."""
    from ..kernels import resolve_device  # noqa: PLC0415  (imports torch)

    return resolve_device(name)


def output_file(path: Path | None, overwrite: bool = True) -> Path | None:
    """Check an output FILE before any work: not a folder, not below a file, in a place files can be created;
    an existing file needs ``overwrite``. Nothing is created."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise NotAFile(f"{path}: is a folder; give a file path")
    if path.exists() and not overwrite:
        raise OutputExists(f"{path}: exists (pass --overwrite to replace it)")
    _check_creatable(path.parent, path)  # written beside it, then renamed over it
    return path


def output_dir(path: Path | None) -> Path | None:
    """Check an output FOLDER before any work: not a file, not below a file, in a place folders can be created
    (or itself accepting files). Nothing is created; what may be replaced is the library's decision."""
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotAFolder(f"{path}: is a file; give a folder path")
    _check_creatable(path, path)
    return path


def _check_creatable(folder: Path, path: Path) -> None:
    """The nearest existing folder at or above ``folder`` is a folder, and files can be created in it (for ``path``)."""
    here = folder.absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    if not here.is_dir():
        raise NotAFolder(f"{here}: is a file, so {path} cannot be created there; give another path")
    try:  # the surest test of permissions, ACLs, read-only mounts: create (and remove) a file
        with tempfile.NamedTemporaryFile(dir=here, prefix=".fe2e-write-test-"):
            pass
    except OSError as exc:
        code = exc.errno or errno.EACCES
        raise OSError(code, exc.strerror or os.strerror(code), str(here)) from None
