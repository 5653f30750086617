"""The I/O contract of the deployment graphs: tensor names, dtypes, shapes per resolution, batch profiles.

One definition, used by every producer and every runtime: the ONNX export names the graphs' inputs
and outputs from it (and checks the exported graph against it), ``build-trt`` builds its optimisation
profiles from it, the AOTInductor build makes its example input from it, and the ONNX Runtime,
TensorRT and AOTInductor engines bind their tensors by it. No graph tensor name is spelled anywhere else.

The graphs (``models/fused.py`` builds them), at a processing size W x H and batch B:

============  ==================================  ===========================================
graph         inputs                              outputs
============  ==================================  ===========================================
vae_encoder   image [B, 3, H, W] in [-1, 1]       latent [B, 16, H/8, W/8]
dit           ref_latent [B, 16, H/8, W/8]        depth_latent, normal_latent [B, 16, H/8, W/8]
vae_decoder   latent [B, 16, H/8, W/8]            decoded [B, 3, H, W] in [-1, 1]
fe2e          image [B, 3, H, W] in [-1, 1]       depth [B, 1, H, W] in [0, 1], normals [B, 3, H, W]
============  ==================================  ===========================================

Every tensor is FP32 at the graph boundary (BF16 and FP8 live inside the graphs).

A :class:`BatchProfile` says which batch sizes a built graph takes: one fixed size (static shapes:
a smaller batch is padded) or a range (dynamic batch axis); :func:`plan_batches` cuts a run of
images into the calls an engine makes. Pure Python (no torch): the command line and the TensorRT
runtime share it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import LATENT_CHANNELS, LATENT_DOWNSAMPLE, RESOLUTION_MULTIPLE
from .errors import InvalidInput
from .resolution import resolution_name

#: The one dtype at every graph boundary (as ONNX / numpy spell it).
BOUNDARY_DTYPE = "float32"
#: The largest batch a dynamic-batch export accepts (the exporter's symbolic dimension's bound).
MAX_DYNAMIC_BATCH = 64


@dataclass(frozen=True)
class TensorIO:
    """One input or output of a graph: ``[batch, channels, H / downsample, W / downsample]``."""

    name: str
    channels: int
    downsample: int = 1
    dtype: str = BOUNDARY_DTYPE

    def shape(self, batch: int | str, width: int, height: int) -> list[int | str]:
        """The tensor's shape at a processing size; ``batch`` may be a symbol (``"batch"``) for a dynamic axis."""
        return [batch, self.channels, height // self.downsample, width // self.downsample]


@dataclass(frozen=True)
class GraphIO:
    """A deployment graph's name, inputs and outputs (in call order)."""

    name: str
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def file_name(self, size: tuple[int, int]) -> str:
        """The graph's file in an export folder: ``<graph>_<W>x<H>.onnx``."""
        return f"{self.name}_{resolution_name(size)}.onnx"

    def shapes(self, batch: int | str, size: tuple[int, int]) -> dict[str, list[int | str]]:
        """Name -> shape of every input and output at ``size`` (width, height)."""
        return {t.name: t.shape(batch, *size) for t in (*self.inputs, *self.outputs)}


_IMAGE = TensorIO("image", 3)
_LATENT_SHAPE = {"channels": LATENT_CHANNELS, "downsample": LATENT_DOWNSAMPLE}

VAE_ENCODER = GraphIO("vae_encoder", (_IMAGE,), (TensorIO("latent", **_LATENT_SHAPE),))
DIT = GraphIO(
    "dit",
    (TensorIO("ref_latent", **_LATENT_SHAPE),),
    (TensorIO("depth_latent", **_LATENT_SHAPE), TensorIO("normal_latent", **_LATENT_SHAPE)),
)
VAE_DECODER = GraphIO("vae_decoder", (TensorIO("latent", **_LATENT_SHAPE),), (TensorIO("decoded", 3),))
#: The fused graph every engine runs: image -> depth, normals.
FE2E = GraphIO("fe2e", (_IMAGE,), (TensorIO("depth", 1), TensorIO("normals", 3)))

#: Every graph an export can hold, in export order.
GRAPHS: dict[str, GraphIO] = {g.name: g for g in (VAE_ENCODER, DIT, VAE_DECODER, FE2E)}


def check_size(size: tuple[int, int]) -> tuple[int, int]:
    """A processing size (width, height): positive multiples of 16 (the 8x VAE and the 2x2 token packing)."""
    width, height = size
    if width <= 0 or height <= 0 or width % RESOLUTION_MULTIPLE or height % RESOLUTION_MULTIPLE:
        raise InvalidInput(
            f"resolution {width}x{height}: width and height must be positive multiples of {RESOLUTION_MULTIPLE}"
        )
    return int(width), int(height)


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes a built graph runs: ``min``..``max`` (``opt``: the size it is tuned for).

    ``min == max``: a static batch (fewer images are padded to it); else a dynamic batch axis.
    """

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InvalidInput(f"batch profile needs 1 <= min <= opt <= max, got {self.min}, {self.opt}, {self.max}")

    @classmethod
    def fixed(cls, batch: int) -> BatchProfile:
        if batch < 1:
            raise InvalidInput(f"batch must be >= 1, got {batch}")
        return cls(batch, batch, batch)

    @classmethod
    def dynamic(cls, max_batch: int, opt: int = 1) -> BatchProfile:
        if max_batch < 1:
            raise InvalidInput(f"max batch must be >= 1, got {max_batch}")
        return cls(1, min(opt, max_batch), max_batch)

    @property
    def is_fixed(self) -> bool:
        return self.min == self.max

    def describe(self) -> str:
        return f"batch {self.max}" if self.is_fixed else f"batch 1-{self.max}"


@dataclass(frozen=True)
class BatchCall:
    """One engine call: ``count`` real images, run as a batch of ``size`` (``size > count``: padded)."""

    start: int
    count: int
    size: int


def plan_batches(count: int, profile: BatchProfile | None, batch_size: int | None = None) -> list[BatchCall]:
    """Cut ``count`` images (of one processing size) into engine calls.

    ``profile``: what the engine takes (None: any batch). ``batch_size``: the most images per call the
    user asked for (None: as many as the engine takes). A static profile runs every call at its size,
    the last one padded; a dynamic one runs full calls and a smaller (ragged) last call, never below
    its ``min`` (padded up to it).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if batch_size is not None and batch_size < 1:
        raise InvalidInput(f"batch size must be >= 1, got {batch_size}")
    if profile is None:
        step = batch_size or max(count, 1)
        return [BatchCall(s, min(step, count - s), min(step, count - s)) for s in range(0, count, step)]
    if profile.is_fixed:
        step = profile.max
        return [BatchCall(s, min(step, count - s), step) for s in range(0, count, step)]
    step = min(batch_size or profile.max, profile.max)
    calls = []
    for start in range(0, count, step):
        real = min(step, count - start)
        calls.append(BatchCall(start, real, max(real, profile.min)))
    return calls
