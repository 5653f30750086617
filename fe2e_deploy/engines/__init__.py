"""Engines: one interface (image -> depth + normals), backends chosen by what the path is.

Every engine follows the template of :mod:`.base` (processing size -> preprocess -> run ->
postprocess, timed, batched). :func:`load_engine` picks the backend from the path and imports only
that backend: a model folder (official files) runs the eager reference (``eager.py``), a stripped
folder the deployment graph in PyTorch (``stripped.py``), an export folder or ``fe2e_WxH.onnx``
ONNX Runtime (``onnx.py``), a ``.pt2`` package or AOTInductor engine folder (``aoti.py``), a
``.plan`` TensorRT (``tensorrt.py``). Engines read artifacts (``fe2e_deploy.artifacts``); they never
import the stages that build them.
"""

from __future__ import annotations

from pathlib import Path

from .base import Engine

__all__ = ["KINDS", "Engine", "engine_kind", "load_engine"]


#: What :func:`engine_kind` answers, by backend module.
KINDS = ("tensorrt", "aoti", "onnx", "stripped", "eager")


def engine_kind(path: str | Path) -> str:
    """Which backend opens ``path`` (one of :data:`KINDS`), from what the path is, reading nothing heavy.

    A path that does not exist or is no engine is an error here, so commands can check their engines
    before loading any of them.
    """
    path = Path(path)
    if path.suffix == ".plan" and not path.is_dir():
        kind = "tensorrt"
    elif (path.suffix == ".pt2" and not path.is_dir()) or (path / "aoti_engine.json").is_file():
        kind = "aoti"
    elif (path.suffix == ".onnx" and not path.is_dir()) or (path / "manifest.json").is_file():
        kind = "onnx"
    elif path.is_dir():
        kind = "stripped" if (path / "stripped.json").is_file() else "eager"
    else:
        kind = ""
    if not path.exists():
        raise FileNotFoundError(f"{path}: engine not found")
    if not kind:
        raise ValueError(
            f"{path}: unsupported engine (supported: a model folder with the official files, a stripped folder, "
            "an export folder or its fe2e_WxH.onnx, a TensorRT .plan, an AOTInductor .pt2 or engine folder)"
        )
    return kind


def load_engine(
    path: str | Path,
    device: str = "cpu",
    dtype: str | None = None,
    processing_res: tuple[int, int] | None = None,
    progress: bool = False,
) -> Engine:
    """Open an engine by path.

    ``dtype`` (fp32/bf16): the DiT precision of a model folder (default fp32) or a stripped folder
    (default: as stripped); for built engines (.onnx, .pt2, .plan) it must equal their precision.
    ``progress``: show bars while weights load (model and stripped folders).
    """
    path = Path(path)
    kind = engine_kind(path)
    if kind == "tensorrt":
        from .tensorrt import TensorRTEngine  # noqa: PLC0415  (optional TensorRT extra)

        return TensorRTEngine(path, device if device != "cpu" else "cuda", processing_res, dtype=dtype)
    if kind == "aoti":
        from .aoti import AOTIEngine  # noqa: PLC0415

        return AOTIEngine(path, device, processing_res, dtype=dtype)
    if kind == "onnx":
        from .onnx import OnnxEngine  # noqa: PLC0415  (onnxruntime is imported only when used)

        return OnnxEngine(path, device, processing_res, dtype=dtype)
    if kind == "stripped":
        from .stripped import StrippedEngine  # noqa: PLC0415

        return StrippedEngine(path, device, processing_res, dtype=dtype, progress=progress)
    from ..model_files import ModelFiles  # noqa: PLC0415
    from .eager import EagerEngine  # noqa: PLC0415

    return EagerEngine.from_model_files(ModelFiles.from_dir(path), dtype, device, processing_res, progress=progress)
