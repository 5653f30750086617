"""TensorRT plans (``build-trt`` writes them): the sidecar contract :class:`TensorRTPlan`, the optional import.

``ENGINE.plan`` is the serialized engine; ``ENGINE.plan.json`` says what it was built from and for:
the GPU (plans are not portable), TensorRT's version, the precision, resolution and batch profile of
the fused graph (:data:`fe2e_deploy.graph_io.FE2E`), and whether its weights stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..errors import InvalidInput, UserError
from ..graph_io import GRAPHS, BatchProfile
from ..resolution import parse_resolution
from .contract import Contract

TRT_PRECISIONS = ("bf16", "fp8")  # a strongly typed build takes its precision from the graph: no fp32 plans
INSTALL_HINT = "TensorRT is not installed: pip install 'fe2e-deploy[tensorrt]' (needs an NVIDIA GPU and driver)"


class TensorRTUnavailable(UserError, RuntimeError):
    """TensorRT (the optional extra) cannot be imported."""


def import_tensorrt():
    try:
        import tensorrt  # noqa: PLC0415  (optional extra)
    except ImportError as exc:
        raise TensorRTUnavailable(f"{INSTALL_HINT} ({exc})") from None
    return tensorrt


@dataclass(frozen=True)
class GpuIdentity:
    name: str | None
    compute_capability: str | None

    @classmethod
    def here(cls) -> GpuIdentity:
        """This machine's first visible GPU (both None without one)."""
        import torch  # noqa: PLC0415

        if not torch.cuda.is_available():
            return cls(None, None)
        major, minor = torch.cuda.get_device_capability()
        return cls(torch.cuda.get_device_name(), f"{major}.{minor}")


@dataclass(frozen=True)
class PlanSource:
    """The exported graph a plan was built from."""

    onnx: str
    precision: str


@dataclass(frozen=True)
class TensorRTPlan(Contract):
    """``NAME.plan.json``: the sidecar of a TensorRT plan."""

    FORMAT: ClassVar[str] = "fe2e-tensorrt-plan"
    VERSION: ClassVar[int] = 2
    REBUILD: ClassVar[str] = "`fe2e-deploy build-trt`"
    WHAT: ClassVar[str] = "TensorRT plan"

    fe2e_deploy: str
    tensorrt: str
    gpu: GpuIdentity
    precision: str
    graph: str  # which graph of :data:`fe2e_deploy.graph_io.GRAPHS` the plan runs (``fe2e``)
    resolution: str
    batch: BatchProfile
    source: PlanSource
    weight_streaming: bool
    builder_optimization_level: int
    build_seconds: float

    def __post_init__(self) -> None:
        if self.precision not in TRT_PRECISIONS:
            raise InvalidInput(f"precision {self.precision!r} is none of {', '.join(TRT_PRECISIONS)}")
        if self.graph not in GRAPHS:
            raise InvalidInput(f"graph {self.graph!r} is none of {', '.join(GRAPHS)}")
        parse_resolution(self.resolution)

    @property
    def size(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)

    @staticmethod
    def path_of(plan: str | Path) -> Path:
        """The sidecar of ``plan``: ``NAME.plan.json``."""
        return Path(f"{plan}.json")

    def check_gpu(self, plan: str | Path, gpu: GpuIdentity) -> None:
        """Refuse a plan built for another GPU (TensorRT plans are not portable)."""
        if gpu != self.gpu:
            raise InvalidInput(
                f"{plan}: built for {self.gpu.name} (sm {self.gpu.compute_capability}), this machine has "
                f"{gpu.name} (sm {gpu.compute_capability}); rebuild the engine here"
            )

    @classmethod
    def upgrade(cls, document: dict, version: object, source: str) -> dict:
        """Sidecars of fe2e-deploy 0.1 before the typed contracts (no version): batch and source spelled otherwise."""
        if version is not None:
            return super().upgrade(document, version, source)
        batch = document.get("batch")
        if isinstance(batch, dict):  # a dynamic profile {min, max}
            batch = {"min": batch.get("min"), "opt": batch.get("min"), "max": batch.get("max")}
        elif isinstance(batch, int):
            batch = {"min": batch, "opt": batch, "max": batch}
        old_source = document.get("source") if isinstance(document.get("source"), dict) else {}
        return document | {
            "format_version": cls.VERSION,
            "graph": "fe2e",
            "batch": batch,
            "source": {"onnx": old_source.get("onnx"), "precision": document.get("precision")},
        }


def read_plan_sidecar(plan: str | Path) -> TensorRTPlan:
    """A plan's sidecar, checked (missing, corrupt, another format or version: one line naming it)."""
    return TensorRTPlan.read(TensorRTPlan.path_of(plan))
