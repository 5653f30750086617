"""Reading TensorRT plans' sidecars (``build-trt`` writes them) and importing the optional TensorRT extra."""

from __future__ import annotations

from pathlib import Path

from ..resolution import parse_resolution
from .sidecar import check_fields, read_sidecar

SIDECAR_FORMAT = "fe2e-tensorrt-plan"
TRT_PRECISIONS = ("bf16", "fp8")  # a strongly typed build takes its precision from the graph: no fp32 plans
REBUILD = "fe2e-deploy build-trt"
#: The sidecar fields the runtime uses.
SIDECAR_FIELDS = {
    "gpu": {"name": (str, type(None)), "compute_capability": (str, type(None))},
    "precision": str,
    "resolution": str,
}


INSTALL_HINT = "TensorRT is not installed: pip install 'fe2e-deploy[tensorrt]' (needs an NVIDIA GPU and driver)"


class TensorRTUnavailable(RuntimeError):
    """TensorRT (the optional extra) cannot be imported."""


def import_tensorrt():
    try:
        import tensorrt  # noqa: PLC0415  (optional extra)
    except ImportError as exc:
        raise TensorRTUnavailable(f"{INSTALL_HINT} ({exc})") from None
    return tensorrt


def _gpu_identity() -> dict:
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        return {"name": None, "compute_capability": None}
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def check_sidecar(plan: str | Path, gpu: dict | None = None) -> dict:
    """Read a plan's sidecar and refuse a plan built for another GPU (TensorRT plans are not portable)."""
    sidecar = read_sidecar(plan, SIDECAR_FORMAT, REBUILD)
    check_fields(sidecar, f"{plan}.json", SIDECAR_FIELDS, f"rebuild with `{REBUILD}`")
    try:
        parse_resolution(sidecar["resolution"])
    except ValueError as exc:
        raise ValueError(
            f"{plan}.json: resolution {sidecar['resolution']!r}: {exc} (rebuild with `{REBUILD}`)"
        ) from None
    gpu = gpu if gpu is not None else _gpu_identity()
    built = sidecar["gpu"]
    if built.get("compute_capability") != gpu.get("compute_capability") or built.get("name") != gpu.get("name"):
        raise ValueError(
            f"{plan}: built for {built.get('name')} (sm {built.get('compute_capability')}), this machine has "
            f"{gpu.get('name')} (sm {gpu.get('compute_capability')}); rebuild the engine here"
        )
    return sidecar
