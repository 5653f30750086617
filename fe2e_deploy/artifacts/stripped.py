"""The stripped model folder (``strip`` writes it): its contract :class:`StrippedMeta`.

``STRIPPED/stripped.json`` (:class:`StrippedMeta`), ``STRIPPED/stripped_dit.safetensors`` (the kept
official weights and the folded constants) and ``STRIPPED/vae.safetensors``. The weights are loaded by
:func:`fe2e_deploy.loading.stripped.load_stripped`; this module stays light (no torch), so that telling
what an engine path is costs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import MissingInput, NotAFolder
from ..precision import parse_precision
from .contract import Contract


@dataclass(frozen=True)
class SourceRecord:
    """One source of a stripped model: a file (its path and SHA-256) or a generated source (its label and seed)."""

    path: str
    sha256: str | None = None
    synthetic: str | None = None
    seed: int | None = None
    shape: list[int] | None = None


@dataclass(frozen=True)
class StrippedSources:
    """What a stripped model was made from. Paths may differ between machines; the SHA-256 digests may not."""

    dit: SourceRecord
    prompt_embedding: SourceRecord
    vae: SourceRecord
    lora: SourceRecord | None = None

    def digests(self) -> dict[str, str | None]:
        return {name: record and record.sha256 for name, record in vars(self).items()}

    def same_model(self, other: StrippedSources) -> bool:
        """Made from the same files (by content, wherever they were)."""
        return self.digests() == other.digests()


@dataclass(frozen=True)
class ParameterCounts:
    official_dit: int
    stripped_dit: int
    folded: int


@dataclass(frozen=True)
class StrippedMeta(Contract):
    """``stripped.json``: the config, text length, dtype and sources of a stripped model."""

    FORMAT: ClassVar[str] = "fe2e-stripped"
    VERSION: ClassVar[int] = 1
    REBUILD: ClassVar[str] = "`fe2e-deploy strip`"
    WHAT: ClassVar[str] = "stripped model folder"
    FILE: ClassVar[str] = "stripped.json"
    WEIGHTS: ClassVar[str] = "stripped_dit.safetensors"
    VAE: ClassVar[str] = "vae.safetensors"

    fe2e_deploy: str
    model_config: dict[str, Any]  # the official hyperparameters (``ModelConfig.to_dict``)
    txt_len: int
    dtype: str  # the kept DiT weights' dtype as torch spells it (float32, bfloat16)
    t: float
    sources: StrippedSources
    parameters: ParameterCounts

    @property
    def precision(self) -> str:
        """``fp32`` or ``bf16``."""
        return parse_precision(self.dtype)

    def reference(self, folder: str | Path) -> StrippedRef:
        """How an artifact built from this model records it (the folder's absolute path)."""
        return StrippedRef(str(Path(folder).resolve()), self.sources, self.dtype)


@dataclass(frozen=True)
class StrippedRef:
    """How an artifact records the stripped model it was built from: where it was, its sources and dtype."""

    path: str
    sources: StrippedSources
    dtype: str

    def matches(self, meta: StrippedMeta) -> bool:
        return self.sources.same_model(meta.sources) and self.dtype == meta.dtype


def read_stripped_meta(folder: str | Path) -> StrippedMeta:
    """``stripped.json`` of a stripped folder, checked (cheap: no weights read).

    Commands call it before any long work, so a missing or corrupt folder fails at once.
    """
    folder = Path(folder)
    if not folder.exists():
        raise MissingInput(f"{folder}: stripped model folder not found; run `fe2e-deploy strip` to make one")
    if not folder.is_dir():
        raise NotAFolder(f"{folder}: is a file, not a stripped model folder (run `fe2e-deploy strip` to make one)")
    if not (folder / StrippedMeta.FILE).is_file():
        raise MissingInput(
            f"{folder}: not a stripped model folder (no {StrippedMeta.FILE}); run `fe2e-deploy strip` to make one"
        )
    return StrippedMeta.read(folder / StrippedMeta.FILE)
