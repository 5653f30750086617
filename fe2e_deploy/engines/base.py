"""The template every engine follows: images -> processing size -> preprocess -> run -> postprocess.

An engine subclasses :class:`Engine`, builds itself completely in ``__init__`` (from an artifact and
:class:`~fe2e_deploy.engines.options.EngineOptions`) and implements :meth:`Engine.run` (a batch of
pre-processed images at one processing size -> depth ``[B, 1, h, w]`` in [0, 1] and decoded normals
``[B, 3, h, w]``) and, if it holds resources, :meth:`Engine._release`. Everything around it is here,
once: choosing each image's processing size (``processing_res`` or FE2E's resize rule, checked against
what the engine can run and the pixel limit), grouping images by size, cutting groups into the calls
the engine takes (:func:`fe2e_deploy.graph_io.plan_batches`: a static batch padded by repeating the
last image, a dynamic one with a ragged last call), the stage timers, post-processing back to each
input's size, refusing maps with NaN or Inf, and the lifecycle (``close()``, ``with engine: ...``).

Stage markers: ``preprocess`` and ``postprocess`` always; ``model`` around :meth:`run` unless the
engine marks its own stages inside it (``vae_encode``, ``dit``, ``vae_decode``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from PIL import Image

from ..config import FE2E_RESOLUTIONS
from ..errors import ImageError, InvalidInput
from ..graph_io import BatchProfile, plan_batches
from ..precision import parse_precision
from ..processing import Prediction, postprocess, preprocess
from ..resolution import check_processing_pixels, fe2e_processing_size, resolution_name
from ..timing import NO_TIMER, NoTimer, StageTimer
from .options import EngineOptions


class EngineClosed(RuntimeError):
    """An engine was used after :meth:`Engine.close`."""


class Engine:
    """Image -> depth + normals. Subclasses set ``name`` and ``profile`` and implement :meth:`run`."""

    #: A short name for reports (``onnxruntime-bf16-cpu``, ``stripped-fp32``...).
    name: str = "engine"
    #: The batches :meth:`run` takes (None: any number of images).
    profile: BatchProfile | None = None
    #: True when :meth:`run` marks its own stages (vae_encode / dit / vae_decode) instead of one ``model`` stage.
    marks_stages: bool = False

    def __init__(self, options: EngineOptions | None = None, timer: NoTimer | StageTimer = NO_TIMER):
        options = (options or EngineOptions()).resolved()
        self.options = options
        self.device = torch.device(options.device)
        self.timer = timer
        self._closed = False

    # -- what the engine can run --------------------------------------------------------------------------

    @property
    def processing_res(self) -> tuple[int, int] | None:
        return self.options.processing_res

    @property
    def batch_size(self) -> int:
        """Images per :meth:`predict_prepared` call that fill the engine's calls (``infer`` groups this many)."""
        if self.profile is None:
            return self.options.batch_size or 1
        if self.profile.is_fixed:
            return self.profile.max
        return min(self.options.batch_size or self.profile.max, self.profile.max)

    def sizes(self) -> list[tuple[int, int]] | None:
        """The processing sizes this engine can run (None: any multiple of 16)."""
        return None

    def how_to_add(self, size: tuple[int, int]) -> str:
        """How a user gets this engine for another processing size (for error messages)."""
        return f"a build or export at {resolution_name(size)}"

    def check_built_size(self, artifact: object) -> None:
        """Refuse, at opening, a ``processing_res`` this engine was not built for (the CLI's one-line error)."""
        size, sizes = self.processing_res, self.sizes()
        if size is not None and sizes is not None and size not in sizes:
            built = ", ".join(resolution_name(s) for s in sizes)
            raise InvalidInput(
                f"{artifact}: built for {built}, asked for {resolution_name(size)} (add it with "
                f"{self.how_to_add(size)})"
            )

    def processing_size(self, image: Image.Image) -> tuple[int, int]:
        """Where ``image`` runs: ``processing_res`` or FE2E's size for it, which the engine must have and which
        must be at most ``max_processing_pixels`` (:class:`ImageError` otherwise: callers fail that image alone)."""
        size = self.processing_res or fe2e_processing_size(*image.size)
        how = "--processing-res" if self.processing_res else "FE2E's resize rule"
        sizes = self.sizes()
        if sizes is not None and size not in sizes:
            built = ", ".join(resolution_name(s) for s in sizes)
            raise ImageError(
                f"image {resolution_name(image.size)} is processed at {resolution_name(size)} ({how}), but "
                f"{self.name} is built for {built} only; add it with {self.how_to_add(size)}, or pass "
                "--processing-res with a built resolution"
            )
        if not self.processing_res and size not in FE2E_RESOLUTIONS:
            how += " keeps images over 6048x4032 at their size"
        source = f"image {resolution_name(image.size)} ({how})"
        check_processing_pixels(size, self.options.max_processing_pixels, source, error=ImageError)
        return size

    # -- running ------------------------------------------------------------------------------------------

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-processed images ``[B, 3, h, w]`` on the device -> depth ``[B, 1, h, w]``, normals ``[B, 3, h, w]``."""
        raise NotImplementedError

    def prepare(self, image: Image.Image) -> Prepared:
        """The CPU side before the model, for one image: its processing size (checked) and the input tensor.

        Thread-safe: ``infer`` runs it in reader threads, ahead of the engine.
        """
        self._check_open()
        size = self.processing_size(image)
        return Prepared(preprocess(image, size), image.size, size)

    def predict(self, image: Image.Image) -> Prediction:
        return self.predict_batch([image])[0]

    @torch.inference_mode()
    def predict_batch(self, images: list[Image.Image], output_res: str = "input") -> list[Prediction]:
        """One Prediction per image, in order; every image's size is checked before anything runs."""
        prepared = [self.prepare(image) for image in images]
        return [finish() for finish in self.predict_prepared(prepared, output_res)]

    @torch.inference_mode()
    def predict_prepared(self, items: list[Prepared], output_res: str = "input") -> list[Finish]:
        """Run prepared images (grouped by size, in the calls the engine takes); returns, in order, one
        :class:`Finish` per image: calling it post-processes the maps into a :class:`Prediction`.

        On a GPU the maps are upsampled there at once (the cheapest place) and only the result is
        copied back; on a CPU the finishing is left to the caller (``infer`` runs it in writer threads).
        """
        self._check_open()
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[item.size].append(i)
        results: list[Finish | None] = [None] * len(items)
        for size, indices in groups.items():
            for call in plan_batches(len(indices), self.profile, self.options.batch_size):
                chunk = indices[call.start : call.start + call.count]
                finishes = self._run_call([items[i] for i in chunk], size, call.size, output_res)
                for i, finish in zip(chunk, finishes, strict=True):
                    results[i] = finish
        return results

    @torch.inference_mode()
    def run_maps(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One image pre-processed elsewhere (``[1, 3, h, w]`` in [-1, 1] at ``size``) -> its raw maps on the CPU,
        float32 and not resized: depth ``[1, 1, h, w]`` in [0, 1], decoded normals ``[1, 3, h, w]`` (not unit).

        For evaluation protocols that resize and normalise the maps their own way (``evaluate --protocol``).
        """
        self._check_open()
        (call,) = plan_batches(1, self.profile)
        depth, normals = self.run(_pad(x, call.size).to(self.device).contiguous(), size)
        depth, normals = depth[:1].float().cpu(), normals[:1].float().cpu()
        check_finite(self.name, depth, normals)
        return depth, normals

    def _run_call(self, items: list[Prepared], size: tuple[int, int], batch: int, output_res: str) -> list[Finish]:
        with self.timer("preprocess"):
            x = _pad(torch.cat([item.tensor for item in items]), batch).to(self.device).contiguous()
        if self.marks_stages:
            depth, normals = self.run(x, size)
        else:
            with self.timer("model"):
                depth, normals = self.run(x, size)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
        full = output_res == "input"  # "processing": the maps stay at the processing size (no upsampling)
        finishes = [
            Finish(self.name, depth[i : i + 1].float(), normals[i : i + 1].float(), item.image_size if full else size)
            for i, item in enumerate(items)
        ]
        # On a GPU: upsample and normalise on the device now, copy back only the final maps. In timed runs
        # (benchmark) the postprocess stage belongs to the engine too. Else the caller finishes them.
        if self.device.type != "cpu" or self.timer is not NO_TIMER:
            with self.timer("postprocess"):
                for finish in finishes:
                    finish.compute()
        return finishes

    # -- lifecycle ----------------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release what the engine holds (weights, sessions, device buffers); using it afterwards is an error."""
        if not self._closed:
            self._closed = True
            self._release()

    def _release(self) -> None:
        """Drop the engine's resources (subclasses); called once, by :meth:`close`."""

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed(f"{self.name}: the engine is closed (open it again with load_engine)")

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else str(self.device)
        return f"<{type(self).__name__} {self.name} ({state})>"


def _pad(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``x`` ``[n, ...]`` padded to ``batch`` rows by repeating its last row (a static batch's padding)."""
    if x.shape[0] >= batch:
        return x
    return torch.cat([x, x[-1:].expand(batch - x.shape[0], *x.shape[1:])])


def check_finite(engine: str, depth: torch.Tensor, normals: torch.Tensor) -> None:
    """Maps with NaN or Inf (broken weights, an overflow) are refused: never written or returned as results."""
    if not (bool(torch.isfinite(depth).all()) and bool(torch.isfinite(normals).all())):
        raise ImageError(f"{engine} returned NaN or Inf in its maps (nothing written)")


@dataclass
class Prepared:
    """An image ready for the model: ``tensor`` ``[1, 3, h, w]`` at ``size``, from an image of ``image_size``."""

    tensor: torch.Tensor
    image_size: tuple[int, int]
    size: tuple[int, int]


class Finish:
    """The last step of one prediction: maps at the processing size -> a :class:`Prediction` at ``out_size``.

    Calling it returns the prediction, or raises :class:`ImageError` when the maps hold NaN or Inf.
    """

    def __init__(self, engine: str, depth: torch.Tensor, normals: torch.Tensor, out_size: tuple[int, int]):
        self.engine, self.depth, self.normals, self.out_size = engine, depth, normals, out_size
        self.result: Prediction | ImageError | None = None

    @torch.inference_mode()
    def compute(self) -> None:
        """Post-process now (idempotent); an error is kept and raised by :meth:`__call__`."""
        if self.result is not None:
            return
        try:
            check_finite(self.engine, self.depth, self.normals)
            self.result = postprocess(self.depth, self.normals, self.out_size)
        except ImageError as exc:
            self.result = exc
        self.depth = self.normals = None  # the processing-size maps are not needed any more

    def __call__(self) -> Prediction:
        self.compute()
        if isinstance(self.result, ImageError):
            raise self.result
        return self.result


def check_precision(artifact: object, has: str, asked: str | None) -> None:
    """An engine's precision is fixed when it is built: a different ``dtype`` is an error, not ignored."""
    if asked is not None and parse_precision(asked) != parse_precision(has):
        raise InvalidInput(
            f"{artifact} computes in {parse_precision(has)} (fixed when it was built); --dtype {asked} does not "
            "apply to it (leave --dtype out, or build/export the engine in that precision)"
        )
