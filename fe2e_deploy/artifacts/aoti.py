"""Reading AOTInductor engines (``build --backend aoti`` writes them): sidecars, engine folders, their weights.

A ``.pt2`` package (one resolution, sidecar ``NAME.pt2.json``) or an engine folder
(``aoti_engine.json`` + ``fe2e_WxH.pt2`` per resolution). Packages hold no weights: the engine
loads the stripped folder the build recorded (checked by source hashes and dtype) and prepares it
exactly as the build did (:func:`prepare_model`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from ..models.fp8 import quantize_dit
from ..precision import torch_dtype
from ..resolution import resolution_name
from .sidecar import check_fields, read_description, read_json, read_sidecar, recorded_resolution
from .stripped import META_FILE, StrippedModel, load_stripped

SIDECAR_FORMAT = "fe2e-aoti-package"


ENGINE_FORMAT, ENGINE_FILE, SCALES_FILE = "fe2e-aoti-engine", "aoti_engine.json", "fp8_scales.json"


REBUILD = "fe2e-deploy build --backend aoti"


#: What every description (package sidecar or engine folder) must hold, and each kind in addition.
DESCRIPTION_FIELDS = {
    "torch": str,
    "precision": str,
    "batch": int,
    "device": {"kind": str, "name": str},
    "stripped": {"path": str, "sources": dict, "dtype": str},
}
PACKAGE_FIELDS = DESCRIPTION_FIELDS | {"resolution": str}
ENGINE_FIELDS = DESCRIPTION_FIELDS | {"packages": dict}

#: Keys of the metadata compiled into each package (``aot_inductor.metadata``), read back at load.
METADATA_RESOLUTION, METADATA_BATCH, METADATA_PRECISION = "fe2e_resolution", "fe2e_batch", "fe2e_precision"


def package_metadata(size: tuple[int, int], batch: int, precision: str) -> dict[str, str]:
    """What a package records about itself at build time (AOTInductor metadata values are strings)."""
    return {
        METADATA_RESOLUTION: resolution_name(size),
        METADATA_BATCH: str(batch),
        METADATA_PRECISION: precision,
    }


def check_package_file(file: Path) -> Path:
    """``file`` is a package archive at all (a truncated or foreign file is refused before AOTInductor opens it)."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: package missing from the engine (rebuild it with `{REBUILD}`)")
    if not zipfile.is_zipfile(file):
        raise ValueError(
            f"{file}: not an AOTInductor package (not a .pt2 archive: corrupt or truncated?); "
            f"rebuild it with `{REBUILD}`"
        )
    return file


def check_package_metadata(metadata: dict[str, str], file: Path, size: tuple[int, int], batch: int, precision: str):
    """The package was compiled for the resolution, batch and precision its description states.

    A package whose sidecar (or engine description) was edited or paired with another package would
    run on tensors of the wrong shape and return wrong maps; one built before packages recorded
    these (no metadata) cannot be checked and is refused too.
    """
    if METADATA_RESOLUTION not in metadata:
        raise ValueError(
            f"{file}: the package does not record the resolution and batch it was compiled for (built by an "
            f"older fe2e-deploy); rebuild it with `{REBUILD}`"
        )
    stated = package_metadata(size, batch, precision)
    for key, what in (
        (METADATA_RESOLUTION, "resolution"),
        (METADATA_BATCH, "batch"),
        (METADATA_PRECISION, "precision"),
    ):
        if metadata.get(key) != stated[key]:
            raise ValueError(
                f"{file}: compiled for {what} {metadata.get(key)}, but its description states {stated[key]} "
                f"(a package and description that do not belong together); rebuild it with `{REBUILD}`"
            )


def device_identity(device: str) -> dict:
    """What a package is tied to: CPU, or the GPU's name and compute capability."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is visible")
        major, minor = torch.cuda.get_device_capability(device)
        return {"kind": "cuda", "name": torch.cuda.get_device_name(device), "compute_capability": f"{major}.{minor}"}
    if device != "cpu":
        raise ValueError(f"device {device!r} not supported; use cpu, cuda or auto")
    return {"kind": "cpu", "name": "cpu", "compute_capability": None}


def package_name(width: int, height: int) -> str:
    return f"fe2e_{width}x{height}.pt2"


def source_hashes(sources: dict) -> dict:
    """The SHA-256 of each source of a stripped model (paths may differ between machines; contents may not)."""
    return {name: entry and entry.get("sha256") for name, entry in sources.items()}


def stripped_identity(model: StrippedModel) -> dict:
    """What the engine checks a stripped folder against: its path, sources and dtype."""
    return {"path": str(model.folder.resolve()), "sources": model.meta["sources"], "dtype": model.meta["dtype"]}


def check_stripped(folder: str | Path, recorded: dict, engine: str | Path) -> Path:
    """``folder`` (a stripped model) stripped from the recorded sources in the recorded dtype, else a one-line error."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{folder}: stripped model folder not found; {engine} holds no weights and reads them from it "
            f"(restore it, pass the folder explicitly (stripped=...), or rebuild with `{REBUILD}`)"
        )
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path}: not a JSON object (strip the model again)")
    if (
        source_hashes(meta.get("sources") or {}) != source_hashes(recorded["sources"])
        or meta.get("dtype") != recorded["dtype"]
    ):
        raise ValueError(
            f"{folder}: not the stripped model {engine} was built from (other sources or dtype than "
            f"{recorded['path']}); pass that folder or rebuild with `{REBUILD}`"
        )
    return folder


def prepare_model(
    stripped: str | Path, precision: str, scales: dict | None, device: str | torch.device
) -> StrippedModel:
    """The stripped model on ``device`` as a package computes with it: DiT cast to the precision, FP8 linears."""
    model = load_stripped(stripped, device)
    model.dit.cast_weights(torch_dtype(precision))
    if scales is not None:
        if source_hashes(scales["stripped"]["sources"]) != source_hashes(
            model.meta["sources"]
        ):  # checked by load_scales
            raise ValueError(f"FP8 scales calibrated on another stripped model ({scales['stripped']['path']})")
        quantize_dit(model.dit, scales)
    return model


def graph_constants(graph: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``graph`` under each of its names (a shared module appears under all of them)."""
    return dict(graph.named_parameters(remove_duplicate=False)) | dict(graph.named_buffers(remove_duplicate=False))


def _check_built_here(description: dict, path: Path, device: str, fields: dict) -> dict:
    if description.get("weights_in_package") is not False or "stripped" not in description:
        raise ValueError(f"{path}: an older package with its weights inside; rebuild with `{REBUILD}`")
    check_fields(description, path, fields, f"rebuild with `{REBUILD}`")
    here, built = device_identity(device), description["device"]
    if (built.get("kind"), built.get("name"), built.get("compute_capability")) != (
        here["kind"],
        here["name"],
        here["compute_capability"],
    ):
        raise ValueError(f"{path}: built for {built.get('name')}, this device is {here['name']}; rebuild it here")
    if description.get("torch") != torch.__version__:
        raise ValueError(f"{path}: built with torch {description.get('torch')}, this is {torch.__version__}; rebuild")
    return description


def _resolution(text: object, path: Path) -> tuple[int, int]:
    return recorded_resolution(text, path, "resolution", f"rebuild with `{REBUILD}`")


def check_aoti_sidecar(package: str | Path, device: str) -> dict:
    """The package's sidecar, refusing a package built for another device kind or GPU or torch."""
    path = Path(f"{package}.json")
    description = _check_built_here(read_sidecar(package, SIDECAR_FORMAT, REBUILD), path, device, PACKAGE_FIELDS)
    _resolution(description["resolution"], path)
    return description


def check_aoti_engine(folder: str | Path, device: str) -> dict:
    """An engine folder's ``aoti_engine.json``, with the same checks as :func:`check_aoti_sidecar`."""
    path = Path(folder) / ENGINE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not an AOTInductor engine folder (no {ENGINE_FILE}; run `{REBUILD}`)")
    description = _check_built_here(read_description(path, ENGINE_FORMAT), path, device, ENGINE_FIELDS)
    for resolution, name in description["packages"].items():
        _resolution(resolution, path)
        if not isinstance(name, str) or Path(name).name != name:
            raise ValueError(f"{path}: package {name!r} of {resolution} is not a file name; rebuild with `{REBUILD}`")
    return description


def package_files(path: Path, description: dict) -> dict[tuple[int, int], Path]:
    """The packages of a checked description by resolution: the engine folder's, or the lone ``.pt2``."""
    if "packages" in description:
        return {_resolution(r, path): path / name for r, name in description["packages"].items()}
    return {_resolution(description["resolution"], path): path}
