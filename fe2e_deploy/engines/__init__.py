"""Engines: one interface (image -> depth + normals), the backend chosen by the artifact's contract.

Every engine follows the template of :mod:`.base` (processing size -> preprocess -> run ->
postprocess, timed, batched, closed when done) and is opened by :func:`load_engine` with one
:class:`EngineOptions`. :func:`engine_kind` tells the backend from the ``format`` the artifact's
contract declares (:mod:`fe2e_deploy.artifacts`), reading only that small JSON file; file names
decide only for a bare ``.onnx`` / ``.plan``. Only the chosen backend's module is imported:

========  =========================================================  ==================
kind      artifact                                                   module
========  =========================================================  ==================
eager     a model folder (the official files, as ``init-tiny``)      ``eager.py``
stripped  a stripped folder (``stripped.json``)                      ``stripped.py``
onnx      an export folder (``manifest.json``) or its fe2e_WxH.onnx  ``onnx.py``
aoti      an AOTInductor engine folder (``aoti_engine.json``)        ``aoti.py``
tensorrt  a TensorRT ``.plan`` (sidecar ``.plan.json``)              ``tensorrt.py``
========  =========================================================  ==================

Engines read artifacts; they never import the stages that build them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..artifacts.aoti import LEGACY_PACKAGE_FORMAT, AotiEngineDescription
from ..artifacts.contract import peek_format
from ..artifacts.export import ExportManifest
from ..artifacts.stripped import StrippedMeta
from ..artifacts.tensorrt import TensorRTPlan
from ..errors import InvalidInput, MissingInput
from .options import EngineOptions

if TYPE_CHECKING:
    from ..timing import NoTimer, StageTimer
    from .base import Engine, EngineClosed

__all__ = ["KINDS", "Engine", "EngineClosed", "EngineOptions", "engine_kind", "load_engine"]

#: What :func:`engine_kind` answers, by backend module.
KINDS = ("tensorrt", "aoti", "onnx", "stripped", "eager")
#: Folder artifacts: the kind, the contract whose file marks the folder.
FOLDER_KINDS = (("aoti", AotiEngineDescription), ("onnx", ExportManifest), ("stripped", StrippedMeta))
SUPPORTED = (
    "a model folder with the official files, a stripped folder, an export folder or its fe2e_WxH.onnx, "
    "an AOTInductor engine folder, or a TensorRT .plan"
)


def engine_kind(path: str | Path) -> str:
    """Which backend opens ``path`` (one of :data:`KINDS`), from its contract's ``format``, reading nothing heavy.

    A path that does not exist, is no engine, or whose description declares another format is an error
    here, so commands can check their engines before loading any of them.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInput(f"{path}: engine not found")
    if path.is_dir():
        for kind, contract in FOLDER_KINDS:
            marker = path / contract.FILE
            if marker.is_file():
                found = peek_format(marker)
                if found != contract.FORMAT:
                    raise InvalidInput(
                        f"{marker}: format {found!r} is not {contract.FORMAT!r} (a damaged {contract.WHAT}?); "
                        f"make it again with {contract.REBUILD}"
                    )
                return kind
        return "eager"  # a model folder: its files are checked when it is opened
    sidecar = Path(f"{path}.json")
    found = peek_format(sidecar) if sidecar.is_file() else None
    if found == TensorRTPlan.FORMAT or path.suffix == ".plan":
        return "tensorrt"
    if found == LEGACY_PACKAGE_FORMAT or path.suffix == ".pt2":
        raise InvalidInput(
            f"{path}: a single AOTInductor package (older fe2e-deploy versions wrote these); engines are folders "
            f"now: {AotiEngineDescription.REBUILD} with --resolution for each size"
        )
    if path.suffix == ".onnx":
        return "onnx"
    raise InvalidInput(f"{path}: unsupported engine (supported: {SUPPORTED})")


def __getattr__(name: str):
    """``Engine`` and ``EngineClosed`` on first use: this package imports no torch until an engine is opened."""
    if name in ("Engine", "EngineClosed"):
        from . import base  # noqa: PLC0415

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_engine(
    path: str | Path,
    options: EngineOptions | None = None,
    *,
    timer: NoTimer | StageTimer | None = None,
    **fields: object,
) -> Engine:
    """Open the engine at ``path`` with ``options`` (or keyword fields of :class:`EngineOptions`).

    ``device="auto"`` becomes cuda when a GPU is visible, else cpu. ``timer``: the stage timer the engine
    marks (``benchmark`` passes a recording one). Use it as a context manager, or call ``close()``.
    """
    from ..timing import NO_TIMER  # noqa: PLC0415  (torch)

    timer = NO_TIMER if timer is None else timer
    options = EngineOptions.of(options, **fields)
    kind = engine_kind(path)
    options = options.resolved()
    if kind == "tensorrt":
        from .tensorrt import TensorRTEngine  # noqa: PLC0415  (optional TensorRT extra)

        return TensorRTEngine(path, options, timer=timer)
    if kind == "aoti":
        from .aoti import AOTIEngine  # noqa: PLC0415

        return AOTIEngine(path, options, timer=timer)
    if kind == "onnx":
        from .onnx import OnnxEngine  # noqa: PLC0415  (onnxruntime is imported only when used)

        return OnnxEngine(path, options, timer=timer)
    if kind == "stripped":
        from .stripped import StrippedEngine  # noqa: PLC0415

        return StrippedEngine(path, options, timer=timer)
    from ..model_files import ModelFiles  # noqa: PLC0415
    from .eager import EagerEngine  # noqa: PLC0415

    return EagerEngine.from_model_files(ModelFiles.from_dir(path), options, timer=timer)
