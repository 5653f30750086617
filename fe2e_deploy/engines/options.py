"""How an engine is opened: :class:`EngineOptions`, checked when made (pure Python: the CLI builds them early)."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

from ..errors import InvalidInput
from ..graph_io import check_size
from ..precision import PRECISIONS, parse_precision
from ..resolution import MAX_PROCESSING_PIXELS, check_processing_pixels

_DEVICE = re.compile(r"(cpu|cuda(:\d+)?)")


@dataclass(frozen=True)
class EngineOptions:
    """Everything an engine is opened with; every engine takes the same options and refuses what it cannot honour.

    - ``device``: ``cpu``, ``cuda`` or ``cuda:N`` (``auto`` is resolved by :func:`~fe2e_deploy.engines.load_engine`).
    - ``dtype``: the DiT's precision. A model or stripped folder runs in it (fp32 or bf16; default: fp32 for a
      model folder, as stored for a stripped one); a built engine (ONNX, AOTInductor, TensorRT) computes in the
      precision it was built in, and a different ``dtype`` is an error, never ignored.
    - ``processing_res``: (width, height) every image runs at, instead of FE2E's resize rule; it must be one the
      engine was built for.
    - ``max_processing_pixels``: larger processing sizes are refused (an image alone fails).
    - ``batch_size``: images per engine call, at most (None: as many as the engine takes). An engine built for a
      static batch runs every call at that batch, the last one padded.
    - ``progress``: progress bars while weights load.
    - ``weight_streaming_budget``: TensorRT weight-streaming plans only: GPU memory for the weights, in bytes
      (``8589934592``, ``8GiB``, ``8GB``) or as a fraction of the streamable weights (``0.5``); None: as much as
      fits in the free GPU memory next to the activations.
    """

    device: str = "cpu"
    dtype: str | None = None
    processing_res: tuple[int, int] | None = None
    max_processing_pixels: int = MAX_PROCESSING_PIXELS
    batch_size: int | None = None
    progress: bool = False
    weight_streaming_budget: str | None = None

    def __post_init__(self) -> None:
        if self.device != "auto" and not _DEVICE.fullmatch(str(self.device)):
            raise InvalidInput(f"device {self.device!r} not supported; use auto, cpu, cuda or cuda:N")
        if self.dtype is not None:
            object.__setattr__(self, "dtype", parse_precision(self.dtype, PRECISIONS))
        if self.max_processing_pixels < 1:
            raise InvalidInput(f"--max-processing-pixels must be >= 1, got {self.max_processing_pixels}")
        if self.processing_res is not None:
            size = check_size(tuple(self.processing_res))
            object.__setattr__(self, "processing_res", size)
            check_processing_pixels(size, self.max_processing_pixels, "--processing-res")
        if self.batch_size is not None and self.batch_size < 1:
            raise InvalidInput(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.weight_streaming_budget is not None:
            parse_budget(self.weight_streaming_budget)

    def resolved(self) -> EngineOptions:
        """These options with ``device="auto"`` made cuda (a GPU is visible) or cpu."""
        if self.device != "auto":
            return self
        from ..kernels import resolve_device  # noqa: PLC0415  (torch)

        return replace(self, device=resolve_device("auto"))

    @classmethod
    def of(cls, options: EngineOptions | None = None, **fields_: object) -> EngineOptions:
        """``options`` as given, or options made of keyword fields (not both)."""
        if options is not None and fields_:
            raise TypeError("give EngineOptions or keyword options, not both")
        unknown = set(fields_) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"unknown engine option(s) {sorted(unknown)}")
        return options if options is not None else cls(**fields_)


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20}
_UNITS |= {"gib": 2**30, "tib": 2**40}


def parse_budget(text: str) -> tuple[str, float]:
    """A weight-streaming budget: ``("bytes", n)`` for ``8GiB`` / ``8e9`` / ``123``, ``("fraction", f)`` for 0 < f <= 1.

    A plain number at most 1 is a fraction of the streamable weights; anything larger is bytes.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if match is None or match.group(2) not in _UNITS:
        raise InvalidInput(
            f"--weight-streaming-budget {text!r}: give bytes (8GiB, 8GB, 8589934592) or a fraction of the weights (0.5)"
        )
    value, unit = float(match.group(1)), match.group(2)
    if not unit and 0 < value <= 1:
        return "fraction", value
    if value <= 0:
        raise InvalidInput(f"--weight-streaming-budget {text!r}: must be positive")
    return "bytes", value * _UNITS[unit]
