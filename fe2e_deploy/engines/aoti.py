"""The AOTInductor engine: a folder from ``build``, one package per resolution, the weights from the stripped folder.

The folder holds ``aoti_engine.json`` (:class:`~fe2e_deploy.artifacts.aoti.AotiEngineDescription`) and
one ``fe2e_WxH.pt2`` per resolution. The packages hold no weights: the engine loads the stripped
folder the build recorded (or ``stripped=``, which must have the same sources and dtype), prepares it
as the build did (:func:`prepare_model`: precision cast, FP8 linears from the scales in the folder)
and gives the same tensors to every package (``load_constants(..., user_managed=True)``: pointers, no
copy; this engine keeps the tensors alive). Each image runs at ``processing_res`` or FE2E's size for
it, which must be one of the built resolutions; every call runs the packages' static batch.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..artifacts.aoti import (
    AotiEngineDescription,
    check_built_here,
    check_package_file,
    check_package_metadata,
    check_stripped,
)
from ..artifacts.scales import Fp8Scales, load_scales
from ..artifacts.stripped import read_stripped_meta
from ..errors import InvalidInput
from ..graph_io import BatchProfile
from ..kernels import preferred_attention
from ..load_gate import opening
from ..loading.stripped import StrippedModel, load_stripped
from ..models.fp8 import quantize_dit
from ..models.fused import FE2EGraph
from ..precision import torch_dtype
from ..resolution import resolution_name
from ..timing import NO_TIMER, NoTimer, StageTimer
from .base import Engine, check_precision
from .options import EngineOptions


def prepare_model(
    stripped: str | Path, precision: str, scales: Fp8Scales | None, device: str | torch.device
) -> StrippedModel:
    """The stripped model on ``device`` as a package computes with it: DiT cast to the precision, FP8 linears.

    ``build`` compiles this model and the engine runs the packages on it: the one definition of both.
    """
    if scales is not None:  # checked before the weights are read
        scales.check_model(read_stripped_meta(stripped), stripped)
    model = load_stripped(stripped, device)
    model.dit.cast_weights(torch_dtype(precision))
    if scales is not None:
        quantize_dit(model.dit, scales.layers)
    return model


def graph_constants(graph: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``graph`` under each of its names (a shared module appears under all of them)."""
    return dict(graph.named_parameters(remove_duplicate=False)) | dict(graph.named_buffers(remove_duplicate=False))


class AOTIEngine(Engine):
    """image -> depth + normals through compiled packages; images are resized to their processing size and back."""

    def __init__(
        self,
        path: str | Path,
        options: EngineOptions | None = None,
        *,
        timer: NoTimer | StageTimer = NO_TIMER,
        stripped: str | Path | None = None,
        **fields: object,
    ):
        """``stripped``: the stripped folder to take the weights from, instead of the one the build recorded."""
        options = EngineOptions.of(options, **fields)
        super().__init__(options, timer)
        path = Path(path)
        if not path.is_dir():
            raise InvalidInput(
                f"{path}: not an AOTInductor engine folder (build one with {AotiEngineDescription.REBUILD})"
            )
        self.path = path
        self.description = AotiEngineDescription.read(path / AotiEngineDescription.FILE)
        check_built_here(self.description, path / AotiEngineDescription.FILE, self.device)
        self.precision = self.description.precision
        check_precision(path, self.precision, options.dtype)
        self.name = f"aoti-{self.precision}"
        files = self.description.package_files(path)
        self.files = files
        self.check_built_size(path)
        for file in files.values():
            check_package_file(file)  # before the weights are loaded: a corrupt package fails at once
        folder = check_stripped(stripped or self.description.stripped.path, self.description.stripped, path)
        scales = load_scales(path / self.description.scales) if self.description.scales else None
        self.profile = BatchProfile.fixed(self.description.batch)  # static shapes: the last call is padded
        self.model = prepare_model(folder, self.precision, scales, self.device)  # one set of weights for all
        self.graphs: dict[tuple[int, int], FE2EGraph] = {}
        self.runners: dict[tuple[int, int], object] = {}
        for size, file in files.items():
            self.graphs[size] = FE2EGraph(self.model.vae, self.model.dit, *size).eval()  # its own RoPE tables
            self.runners[size] = self._load(file, self.graphs[size], size)

    def _load(self, file: Path, graph: FE2EGraph, size: tuple[int, int]):
        """The package's runner with the graph's tensors as its constants (pointers: ``self.graphs`` keeps them).

        The package must have been compiled for ``size``, this engine's batch and precision (its metadata).
        """
        index = -1 if self.device.index is None else self.device.index  # -1: the current CUDA device
        opening("AOTInductor package", file)
        try:
            runner = torch._inductor.aoti_load_package(str(file), device_index=index)
        except RuntimeError as exc:  # a damaged archive, a missing or foreign shared library
            reason = " ".join(str(exc).split())[:200]
            raise InvalidInput(f"{file}: AOTInductor cannot load this package ({reason}); rebuild it") from None
        check_package_metadata(runner.get_metadata(), file, size, self.profile.max, self.precision)
        tensors = graph_constants(graph)
        fqns = runner.get_constant_fqns()
        missing = [fqn for fqn in fqns if fqn not in tensors]
        if missing:
            raise InvalidInput(
                f"{file}: the package needs constant {missing[0]!r}, which the stripped model does not have "
                f"({len(missing)} missing; rebuild the package from this stripped folder)"
            )
        runner.load_constants({fqn: tensors[fqn] for fqn in fqns}, check_full_update=True, user_managed=True)
        return runner

    def sizes(self) -> list[tuple[int, int]]:
        return list(self.files)

    def how_to_add(self, size: tuple[int, int]) -> str:
        return f"`fe2e-deploy build STRIPPED -o ENGINE --resolution {resolution_name(size)}`"

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        with preferred_attention(self.device):
            return self.runners[size](x)

    def _release(self) -> None:
        self.runners.clear()  # the packages first: they point into the graphs' tensors
        self.graphs.clear()
        del self.model
