"""The template every engine follows: images -> processing size -> preprocess -> run -> postprocess.

An engine subclasses :class:`Engine` and implements :meth:`Engine.run` (a batch of pre-processed
images at one processing size -> depth ``[B, 1, h, w]`` in [0, 1] and decoded normals
``[B, 3, h, w]``); everything around it is here, once: choosing each image's processing size
(``processing_res`` or FE2E's resize rule, checked against what the engine can run), grouping
images by size, cutting groups into the batches the engine takes (padding a fixed batch by
repeating the last image), the stage timers, and post-processing back to each input's size.

Stage markers: ``preprocess`` and ``postprocess`` always; ``model`` around :meth:`run` unless the
engine marks its own stages inside it (``vae_encode``, ``dit``, ``vae_decode``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch
from PIL import Image

from ..config import FE2E_RESOLUTIONS
from ..processing import Prediction, postprocess, preprocess
from ..resolution import MAX_PROCESSING_PIXELS, check_processing_pixels, fe2e_processing_size, resolution_name
from ..timing import NO_TIMER, NoTimer, StageTimer


class Engine:
    """Image -> depth + normals. Subclasses set ``name`` and implement :meth:`run`."""

    name: str = "engine"
    device: torch.device = torch.device("cpu")
    processing_res: tuple[int, int] | None = None
    #: Images per :meth:`run` call: None = any number, an int = at most that many.
    max_batch: int | None = 1
    #: True when :meth:`run` needs exactly ``max_batch`` images (static-shape engines): the last batch is padded.
    fixed_batch: bool = False
    #: True when :meth:`run` marks its own stages (vae_encode / dit / vae_decode) instead of one ``model`` stage.
    marks_stages: bool = False
    #: The largest processing size in pixels (``--max-processing-pixels``); larger sizes are refused.
    max_processing_pixels: int = MAX_PROCESSING_PIXELS
    timer: NoTimer | StageTimer = NO_TIMER

    def sizes(self) -> list[tuple[int, int]] | None:
        """The processing sizes this engine can run (None: any multiple of 16)."""
        return None

    def how_to_add(self, size: tuple[int, int]) -> str:
        """How a user gets this engine for another processing size (for error messages)."""
        return f"a build or export at {resolution_name(size)}"

    def processing_size(self, image: Image.Image) -> tuple[int, int]:
        """Where ``image`` runs: ``processing_res`` or FE2E's size for it, which the engine must have and which
        must be at most ``max_processing_pixels`` (ValueError otherwise: callers fail that image alone)."""
        size = self.processing_res or fe2e_processing_size(*image.size)
        how = "--processing-res" if self.processing_res else "FE2E's resize rule"
        sizes = self.sizes()
        if sizes is not None and size not in sizes:
            built = ", ".join(resolution_name(s) for s in sizes)
            raise ValueError(
                f"image {resolution_name(image.size)} is processed at {resolution_name(size)} ({how}), but "
                f"{self.name} is built for {built} only; add it with {self.how_to_add(size)}, or pass "
                "--processing-res with a built resolution"
            )
        if not self.processing_res and size not in FE2E_RESOLUTIONS:
            how += " keeps images over 6048x4032 at their size"
        check_processing_pixels(size, self.max_processing_pixels, f"image {resolution_name(image.size)} ({how})")
        return size

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pre-processed images ``[B, 3, h, w]`` on the device -> depth ``[B, 1, h, w]``, normals ``[B, 3, h, w]``."""
        raise NotImplementedError

    @torch.inference_mode()
    def run_maps(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """One image pre-processed elsewhere (``[1, 3, h, w]`` in [-1, 1] at ``size``) -> its raw maps on the CPU,
        float32 and not resized: depth ``[1, 1, h, w]`` in [0, 1], decoded normals ``[1, 3, h, w]`` (not unit).

        For evaluation protocols that resize and normalise the maps their own way (``evaluate --protocol``).
        """
        if self.fixed_batch and self.max_batch and self.max_batch > 1:
            x = x.expand(self.max_batch, -1, -1, -1)
        depth, normals = self.run(x.to(self.device).contiguous(), size)
        return depth[:1].float().cpu(), normals[:1].float().cpu()

    def predict(self, image: Image.Image) -> Prediction:
        return self.predict_batch([image])[0]

    def prepare(self, image: Image.Image) -> Prepared:
        """The CPU side before the model, for one image: its processing size (checked) and the input tensor.

        Thread-safe: ``infer`` runs it in reader threads, ahead of the engine.
        """
        size = self.processing_size(image)
        return Prepared(preprocess(image, size), image.size, size)

    @torch.inference_mode()
    def predict_batch(self, images: list[Image.Image], output_res: str = "input") -> list[Prediction]:
        """One Prediction per image, in order; every image's size is checked before anything runs."""
        prepared = [self.prepare(image) for image in images]
        return [finish() for finish in self.predict_prepared(prepared, output_res)]

    @torch.inference_mode()
    def predict_prepared(self, items: list[Prepared], output_res: str = "input") -> list[Finish]:
        """Run prepared images (grouped by size, in batches the engine takes); returns, in order, one
        :class:`Finish` per image: calling it post-processes the maps into a :class:`Prediction`.

        On a GPU the maps are upsampled there at once (the cheapest place) and only the result is
        copied back; on a CPU the finishing is left to the caller (``infer`` runs it in writer threads).
        """
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[item.size].append(i)
        results: list[Finish | None] = [None] * len(items)
        for size, indices in groups.items():
            step = self.max_batch or len(indices)
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                for i, finish in zip(chunk, self._run_chunk([items[i] for i in chunk], size, output_res), strict=True):
                    results[i] = finish
        return results

    def _run_chunk(self, items: list[Prepared], size: tuple[int, int], output_res: str) -> list[Finish]:
        with self.timer("preprocess"):
            x = torch.cat([item.tensor for item in items])
            if self.fixed_batch and self.max_batch and len(items) < self.max_batch:
                x = torch.cat([x, x[-1:].expand(self.max_batch - len(items), -1, -1, -1)])
            x = x.to(self.device).contiguous()
        if self.marks_stages:
            depth, normals = self.run(x, size)
        else:
            with self.timer("model"):
                depth, normals = self.run(x, size)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
        full = output_res == "input"  # "processing": the maps stay at the processing size (no upsampling)
        finishes = [
            Finish(depth[i : i + 1].float(), normals[i : i + 1].float(), item.image_size if full else size)
            for i, item in enumerate(items)
        ]
        # On a GPU: upsample and normalise on the device now, copy back only the final maps. In timed runs
        # (benchmark) the postprocess stage belongs to the engine too. Else the caller finishes them.
        if self.device.type != "cpu" or self.timer is not NO_TIMER:
            with self.timer("postprocess"):
                for finish in finishes:
                    finish()
        return finishes


@dataclass
class Prepared:
    """An image ready for the model: ``tensor`` ``[1, 3, h, w]`` at ``size``, from an image of ``image_size``."""

    tensor: torch.Tensor
    image_size: tuple[int, int]
    size: tuple[int, int]


class Finish:
    """The last step of one prediction: maps at the processing size -> a :class:`Prediction` at ``out_size``."""

    def __init__(self, depth: torch.Tensor, normals: torch.Tensor, out_size: tuple[int, int]):
        self.depth, self.normals, self.out_size = depth, normals, out_size
        self.result: Prediction | None = None

    @torch.inference_mode()
    def __call__(self) -> Prediction:
        if self.result is None:
            self.result = postprocess(self.depth, self.normals, self.out_size)
            self.depth = self.normals = None  # the processing-size maps are not needed any more
        return self.result


def check_precision(artifact: str, has: str, asked: str | None) -> None:
    """An engine's precision is fixed when it is built: a different ``--dtype`` is an error, not ignored."""
    from ..precision import parse_precision  # noqa: PLC0415

    if asked is not None and parse_precision(asked) != parse_precision(has):
        raise ValueError(
            f"{artifact} computes in {parse_precision(has)} (fixed when it was built); --dtype {asked} does not "
            "apply to it (leave --dtype out, or build/export the engine in that precision)"
        )
