"""The AOTInductor engine folder (``build`` writes it): its contract :class:`AotiEngineDescription`, its packages.

``ENGINE/aoti_engine.json`` (:class:`AotiEngineDescription`), one ``fe2e_WxH.pt2`` per resolution and,
for FP8, ``fp8_scales.json``. Packages hold no weights: the engine loads the stripped folder the build
recorded (checked by source hashes and dtype) and prepares it exactly as the build did
(:func:`prepare_model`). Each package also records what it was compiled for in its own metadata
(:func:`package_metadata`), so a package and a description that do not belong together are refused.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..errors import InvalidInput, MissingInput
from ..precision import PRECISIONS
from ..resolution import parse_resolution, resolution_name
from .contract import Contract
from .stripped import StrippedRef, read_stripped_meta

REBUILD = "`fe2e-deploy build STRIPPED -o ENGINE_FOLDER`"

#: Keys of the metadata compiled into each package (``aot_inductor.metadata``), read back at load.
METADATA_RESOLUTION, METADATA_BATCH, METADATA_PRECISION = "fe2e_resolution", "fe2e_batch", "fe2e_precision"
#: The format of the one-package sidecars older versions wrote (``NAME.pt2.json``): refused with how to rebuild.
LEGACY_PACKAGE_FORMAT = "fe2e-aoti-package"


@dataclass(frozen=True)
class DeviceIdentity:
    """What a package is tied to: the CPU, or a GPU's name and compute capability."""

    kind: str
    name: str
    compute_capability: str | None = None


@dataclass(frozen=True)
class AotiEngineDescription(Contract):
    """``aoti_engine.json``: precision, batch, device, the stripped model and one package per resolution."""

    FORMAT: ClassVar[str] = "fe2e-aoti-engine"
    VERSION: ClassVar[int] = 2
    REBUILD: ClassVar[str] = REBUILD
    WHAT: ClassVar[str] = "AOTInductor engine folder"
    FILE: ClassVar[str] = "aoti_engine.json"
    SCALES: ClassVar[str] = "fp8_scales.json"

    fe2e_deploy: str
    torch: str
    precision: str
    batch: int  # static: every package runs exactly this many images per call
    device: DeviceIdentity
    stripped: StrippedRef
    packages: dict[str, str]  # resolution WxH -> package file name
    scales: str | None  # FP8: the scales file in the folder
    fp8_gemm: str | None  # FP8: which GEMM the packages compiled (auto, scaled_mm, dequantized)
    build_seconds: dict[str, float]
    package_bytes: dict[str, int]

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InvalidInput(f"precision {self.precision!r} is none of {', '.join(PRECISIONS)}")
        if self.batch < 1:
            raise InvalidInput(f"batch {self.batch} is not >= 1")
        for resolution, name in self.packages.items():
            parse_resolution(resolution)
            if Path(name).name != name:
                raise InvalidInput(f"package {name!r} of {resolution} is not a file name")

    def package_files(self, folder: Path) -> dict[tuple[int, int], Path]:
        """The packages by processing size (width, height)."""
        return {parse_resolution(r): folder / name for r, name in self.packages.items()}

    @classmethod
    def upgrade(cls, document: dict, version: object, source: str) -> dict:
        """The folders of fe2e-deploy 0.1 before the typed contracts (no version): the same fields and two more."""
        if version is not None or document.get("weights_in_package") is not False:
            return super().upgrade(document, version, source)
        dropped = ("backend", "weights_in_package", "resolutions")
        fp8_gemm = "auto" if document.get("scales") else None  # what those builds did
        return {k: v for k, v in document.items() if k not in dropped} | {
            "format_version": cls.VERSION,
            "fp8_gemm": fp8_gemm,
        }


def package_metadata(size: tuple[int, int], batch: int, precision: str) -> dict[str, str]:
    """What a package records about itself at build time (AOTInductor metadata values are strings)."""
    return {
        METADATA_RESOLUTION: resolution_name(size),
        METADATA_BATCH: str(batch),
        METADATA_PRECISION: precision,
    }


def package_name(size: tuple[int, int]) -> str:
    return f"fe2e_{resolution_name(size)}.pt2"


def check_package_file(file: Path) -> Path:
    """``file`` is a package archive at all (a truncated or foreign file is refused before AOTInductor opens it)."""
    if not file.is_file():
        raise MissingInput(f"{file}: package missing from the engine (rebuild it with {REBUILD})")
    if not zipfile.is_zipfile(file):
        raise InvalidInput(
            f"{file}: not an AOTInductor package (not a .pt2 archive: corrupt or truncated?); rebuild it with {REBUILD}"
        )
    return file


def check_package_metadata(metadata: dict[str, str], file: Path, size: tuple[int, int], batch: int, precision: str):
    """The package was compiled for the resolution, batch and precision its description states.

    A package whose description was edited or paired with another package would run on tensors of the
    wrong shape and return wrong maps; one built before packages recorded these (no metadata) cannot be
    checked and is refused too.
    """
    if METADATA_RESOLUTION not in metadata:
        raise InvalidInput(
            f"{file}: the package does not record the resolution and batch it was compiled for (built by an "
            f"older fe2e-deploy); rebuild it with {REBUILD}"
        )
    stated = package_metadata(size, batch, precision)
    for key, what in (
        (METADATA_RESOLUTION, "resolution"),
        (METADATA_BATCH, "batch"),
        (METADATA_PRECISION, "precision"),
    ):
        if metadata.get(key) != stated[key]:
            raise InvalidInput(
                f"{file}: compiled for {what} {metadata.get(key)}, but its description states {stated[key]} "
                f"(a package and description that do not belong together); rebuild it with {REBUILD}"
            )


def device_identity(device) -> DeviceIdentity:
    """The CPU, or the GPU's name and compute capability (``device``: a name or ``torch.device``)."""
    import torch  # noqa: PLC0415  (this module stays light until a device is asked about)

    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInput(f"device {device}: no CUDA GPU is visible")
        major, minor = torch.cuda.get_device_capability(device)
        return DeviceIdentity("cuda", torch.cuda.get_device_name(device), f"{major}.{minor}")
    if device.type != "cpu":
        raise InvalidInput(f"device {device} not supported; use cpu, cuda or auto")
    return DeviceIdentity("cpu", "cpu", None)


def check_built_here(description: AotiEngineDescription, path: Path, device) -> None:
    """Packages run only on the device kind, GPU and torch version they were compiled for."""
    import torch  # noqa: PLC0415

    here, built = device_identity(device), description.device
    if here != built:
        raise InvalidInput(f"{path}: built for {built.name}, this device is {here.name}; rebuild it here ({REBUILD})")
    if description.torch != torch.__version__:
        raise InvalidInput(
            f"{path}: built with torch {description.torch}, this is {torch.__version__}; rebuild it ({REBUILD})"
        )


def check_stripped(folder: str | Path, recorded: StrippedRef, engine: str | Path) -> Path:
    """``folder`` (a stripped model) stripped from the recorded sources in the recorded dtype, else a one-line error."""
    folder = Path(folder)
    try:
        meta = read_stripped_meta(folder)
    except MissingInput:
        raise MissingInput(
            f"{folder}: stripped model folder not found; {engine} holds no weights and reads them from it "
            f"(restore it, pass the folder explicitly (stripped=...), or rebuild with {REBUILD})"
        ) from None
    if not recorded.matches(meta):
        raise InvalidInput(
            f"{folder}: not the stripped model {engine} was built from (other sources or dtype than "
            f"{recorded.path}); pass that folder or rebuild with {REBUILD}"
        )
    return folder
