"""Engines: one interface (image -> depth + normals), backends chosen by what the path is.

``load_engine`` picks the backend from the path: a model folder (official files) runs the eager
reference pipeline, a stripped folder the deployment graph in eager PyTorch (``stripped.py``), an
export folder or ``.onnx`` graph ONNX Runtime (``onnx.py``), a ``.pt2`` package or a folder with
``aoti_engine.json`` AOTInductor (``aoti.py``), a ``.plan`` TensorRT (``tensorrt.py``). All share
pre- and post-processing with the reference (``pipeline.preprocess`` / ``pipeline.postprocess``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from ..model_files import ModelFiles
from ..processing import Prediction
from ..reference import FE2EPipeline
from ..timing import NoTimer, StageTimer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class Engine(Protocol):
    name: str
    timer: NoTimer | StageTimer  # stage markers (preprocess, vae_encode, dit, vae_decode / model, postprocess)

    def predict(self, image: Image.Image) -> Prediction: ...


class EagerEngine:
    """The reference pipeline behind the engine interface."""

    def __init__(self, pipeline: FE2EPipeline, processing_res: tuple[int, int] | None = None, name: str = "eager"):
        self.pipeline, self.processing_res, self.name = pipeline, processing_res, name

    @classmethod
    def from_model_files(
        cls,
        files: ModelFiles,
        dtype: str = "fp32",
        device: str = "cpu",
        processing_res: tuple[int, int] | None = None,
        cfg_batch: bool = False,
    ) -> EagerEngine:
        if dtype not in DTYPES:
            raise ValueError(f"dtype {dtype!r} not supported; choose one of {', '.join(DTYPES)}")
        pipe = FE2EPipeline.from_files(
            files.config, files.dit, files.vae, files.prompt, files.lora, DTYPES[dtype], device, cfg_batch
        )
        return cls(pipe, processing_res, name=f"eager-{dtype}")

    @property
    def timer(self) -> NoTimer | StageTimer:
        return self.pipeline.timer

    @timer.setter
    def timer(self, value: NoTimer | StageTimer) -> None:
        self.pipeline.timer = value

    def predict(self, image: Image.Image) -> Prediction:
        return self.pipeline(image, self.processing_res)


def predict_batch(engine: Engine, images: list[Image.Image]) -> list[Prediction]:
    """Several images through one engine call where the engine batches (``predict_batch``), else one by one."""
    if len(images) > 1 and hasattr(engine, "predict_batch"):
        return engine.predict_batch(images)
    return [engine.predict(image) for image in images]


def load_engine(
    path: str | Path, device: str = "cpu", dtype: str = "fp32", processing_res: tuple[int, int] | None = None
) -> Engine:
    """Open an engine by path.

    ``.plan`` -> TensorRT (CUDA); ``.pt2`` or a folder with ``aoti_engine.json`` -> AOTInductor;
    ``.onnx`` (a fused graph) or an export folder -> ONNX Runtime; a folder with ``stripped.json`` ->
    the stripped model in eager PyTorch (its own dtype; ``dtype`` is ignored); another folder -> the
    official files through the eager reference pipeline.
    """
    path = Path(path)
    if path.suffix == ".plan":
        from .tensorrt import TensorRTEngine  # noqa: PLC0415  (optional TensorRT extra)

        return TensorRTEngine(path, device if device != "cpu" else "cuda", processing_res)
    if path.suffix == ".pt2" or (path / "aoti_engine.json").is_file():  # build_aoti.ENGINE_FILE
        from .aoti import AOTIEngine  # noqa: PLC0415

        return AOTIEngine(path, device, processing_res)
    if path.suffix == ".onnx" or (path / "manifest.json").is_file():
        from .onnx import OnnxEngine  # noqa: PLC0415  (onnxruntime is imported only when used)

        return OnnxEngine(path, device, processing_res)
    if path.is_dir():
        if (path / "stripped.json").is_file():
            from .stripped import StrippedEngine  # noqa: PLC0415  (imports the strip module only when used)

            return StrippedEngine(path, device, processing_res)
        return EagerEngine.from_model_files(ModelFiles.from_dir(path), dtype, device, processing_res)
    if not path.exists():
        raise FileNotFoundError(f"{path}: engine not found")
    raise ValueError(
        f"{path}: unsupported engine (supported: a model folder with the official files, a stripped folder, "
        "an export folder or its fe2e_WxH.onnx, a TensorRT .plan, an AOTInductor .pt2 or engine folder)"
    )
