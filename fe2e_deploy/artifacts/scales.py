"""FP8 scales files (``calibrate`` writes them): the contract :class:`Fp8Scales`.

Per quantised Linear of the stripped DiT: the input and weight scales (amax / 448, max calibration)
and the amaxes; the stripped model they were measured on; which images and layers were used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..errors import InvalidInput, MissingInput
from .contract import Contract
from .stripped import StrippedMeta, StrippedSources

#: Linears kept out of FP8 unless ``--exclude`` says otherwise: the x_embedder and the final projection.
DEFAULT_EXCLUDE = ("img_in", "final_layer.linear")


@dataclass(frozen=True)
class LayerScales:
    """One Linear's per-tensor FP8 scales (amax / 448) and the amaxes they came from."""

    input_scale: float
    weight_scale: float
    input_amax: float
    weight_amax: float

    def __post_init__(self) -> None:
        for value in (self.input_scale, self.weight_scale):
            if not (math.isfinite(value) and value > 0):
                raise InvalidInput(f"scales ({self.input_scale}, {self.weight_scale}) must be positive and finite")


@dataclass(frozen=True)
class SkippedImage:
    image: str
    reason: str


@dataclass(frozen=True)
class CalibratedOn:
    """The stripped model the scales were measured on."""

    path: str
    weights_sha256: str
    sources: StrippedSources
    dtype: str


@dataclass(frozen=True)
class Fp8Scales(Contract):
    """An FP8 scales file."""

    FORMAT: ClassVar[str] = "fe2e-fp8-scales"
    VERSION: ClassVar[int] = 1
    REBUILD: ClassVar[str] = "`fe2e-deploy calibrate`"
    WHAT: ClassVar[str] = "FP8 scales file"

    fe2e_deploy: str
    fp8: str  # what the scales mean, in words
    stripped: CalibratedOn
    resolutions: list[str]
    num_images: int
    images: list[str]
    unreadable_images: list[SkippedImage]
    skipped_images: list[SkippedImage]
    exclude_patterns: list[str]
    excluded: list[str]
    not_quantised: str
    layers: dict[str, LayerScales]

    def check_model(self, meta: StrippedMeta, source: str | Path) -> None:
        """Refuse scales measured on another stripped model than ``meta``'s (by source contents)."""
        if not self.stripped.sources.same_model(meta.sources):
            raise InvalidInput(
                f"{source}: FP8 scales calibrated on another stripped model ({self.stripped.path}); "
                "calibrate this one with `fe2e-deploy calibrate`"
            )


def write_scales(scales: Fp8Scales, path: str | Path, overwrite: bool = False) -> Path:
    """Write a scales file atomically; an existing file needs ``overwrite``."""
    return scales.write(path, overwrite=overwrite)


def load_scales(path: str | Path) -> Fp8Scales:
    """A scales file, checked (format, every field, every layer's scales positive and finite)."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: FP8 scales not found (run `fe2e-deploy calibrate`)")
    return Fp8Scales.read(path)
