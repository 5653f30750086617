"""The AOTInductor engine: packages from ``build --backend aoti``, one per resolution, weights from the stripped folder.

A ``.pt2`` file (one resolution, with its sidecar) or an engine folder (``aoti_engine.json`` and one
``fe2e_WxH.pt2`` per resolution). The packages hold no weights: the engine loads the stripped folder
the build recorded (or ``stripped=``, which must have the same sources and dtype), prepares it as the
build did (precision cast, FP8 linears from the scales copied next to the packages) and gives the
same tensors to every package (``load_constants(..., user_managed=True)``: pointers, no copy; this
engine keeps the tensors alive). Each image runs at ``processing_res`` or FE2E's size for it
(``resolution.fe2e_processing_size``), which must be one of the built resolutions.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..artifacts.aoti import (
    ENGINE_FILE,
    check_aoti_engine,
    check_aoti_sidecar,
    check_package_file,
    check_package_metadata,
    check_stripped,
    graph_constants,
    package_files,
    prepare_model,
)
from ..artifacts.scales import load_scales
from ..kernels import preferred_attention
from ..models.fused import FE2EGraph
from ..resolution import resolution_name
from .base import Engine, check_precision


class AOTIEngine(Engine):
    """image -> depth + normals through compiled packages; images are resized to their processing size and back."""

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        processing_res: tuple[int, int] | None = None,
        stripped: str | Path | None = None,
        dtype: str | None = None,
    ):
        path = Path(path)
        if path.is_dir() and (path / ENGINE_FILE).is_file():
            self.description = check_aoti_engine(path, device)
            scales = path / self.description["scales"] if self.description.get("scales") else None
        elif path.is_file():
            self.description = check_aoti_sidecar(path, device)
            scales = path.with_name(self.description["scales"]) if self.description.get("scales") else None
        else:
            raise FileNotFoundError(f"{path}: engine not found (a .pt2 package or a folder with {ENGINE_FILE})")
        files = package_files(path, self.description)
        self.sidecar = self.description  # the name the single-package engine used
        self.path, self.processing_res = path, processing_res
        self.precision, batch = self.description["precision"], self.description["batch"]
        check_precision(str(path), self.precision, dtype)
        self.name = f"aoti-{self.precision}"
        built = ", ".join(resolution_name(s) for s in files)
        if processing_res is not None and processing_res not in files:
            raise ValueError(
                f"{path}: built for {built}, asked for {resolution_name(processing_res)} (build it with "
                f"`fe2e-deploy build STRIPPED --backend aoti --resolution {resolution_name(processing_res)}`)"
            )
        for file in files.values():
            check_package_file(file)  # before the weights are loaded: a corrupt package fails at once
        folder = check_stripped(stripped or self.description["stripped"]["path"], self.description["stripped"], path)
        document = load_scales(scales) if scales is not None else None
        self.device = torch.device(device)
        self.max_batch, self.fixed_batch = batch, True  # static shapes: the last batch is padded
        self.model = prepare_model(folder, self.precision, document, self.device)  # one set of weights for all
        self.graphs: dict[tuple[int, int], FE2EGraph] = {}
        self.runners: dict[tuple[int, int], object] = {}
        for size, file in files.items():
            self.graphs[size] = FE2EGraph(self.model.vae, self.model.dit, *size).eval()  # its own RoPE tables
            self.runners[size] = self._load(file, self.graphs[size], size)

    @property
    def batch(self) -> int:
        return self.max_batch

    def _load(self, file: Path, graph: FE2EGraph, size: tuple[int, int]):
        """The package's runner with the graph's tensors as its constants (pointers: ``self.graphs`` keeps them).

        The package must have been compiled for ``size``, this engine's batch and precision (its metadata).
        """
        index = -1 if self.device.index is None else self.device.index  # -1: the current CUDA device
        try:
            runner = torch._inductor.aoti_load_package(str(file), device_index=index)
        except RuntimeError as exc:  # a damaged archive, a missing or foreign shared library
            reason = " ".join(str(exc).split())[:200]
            raise ValueError(f"{file}: AOTInductor cannot load this package ({reason}); rebuild it") from None
        check_package_metadata(runner.get_metadata(), file, size, self.max_batch, self.precision)
        tensors = graph_constants(graph)
        fqns = runner.get_constant_fqns()
        missing = [fqn for fqn in fqns if fqn not in tensors]
        if missing:
            raise ValueError(
                f"{file}: the package needs constant {missing[0]!r}, which the stripped model does not have "
                f"({len(missing)} missing; rebuild the package from this stripped folder)"
            )
        runner.load_constants({fqn: tensors[fqn] for fqn in fqns}, check_full_update=True, user_managed=True)
        return runner

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        return list(self.runners)

    def sizes(self) -> list[tuple[int, int]]:
        return list(self.runners)

    def how_to_add(self, size: tuple[int, int]) -> str:
        return f"`fe2e-deploy build STRIPPED --backend aoti --resolution {resolution_name(size)}`"

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        with preferred_attention(self.device):
            return self.runners[size](x)
