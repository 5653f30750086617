"""The AOTInductor engine: packages from ``build --backend aoti``, one per resolution, weights from the stripped folder.

A ``.pt2`` file (one resolution, with its sidecar) or an engine folder (``aoti_engine.json`` and one
``fe2e_WxH.pt2`` per resolution). The packages hold no weights: the engine loads the stripped folder
the build recorded (or ``stripped=``, which must have the same sources and dtype), prepares it as the
build did (precision cast, FP8 linears from the scales copied next to the packages) and gives the
same tensors to every package (``load_constants(..., user_managed=True)``: pointers, no copy; this
engine keeps the tensors alive). Each image runs at ``processing_res`` or FE2E's size for it
(``pipeline.fe2e_processing_size``), which must be one of the built resolutions.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image

from ..artifacts.aoti import (
    ENGINE_FILE,
    check_aoti_engine,
    check_aoti_sidecar,
    check_stripped,
    graph_constants,
    prepare_model,
)
from ..artifacts.scales import load_scales
from ..kernels import preferred_attention
from ..models.fused import FE2EGraph
from ..processing import Prediction, fe2e_processing_size, parse_resolution, postprocess, preprocess, resolution_name
from ..timing import NO_TIMER


class AOTIEngine:
    """image -> depth + normals through compiled packages; images are resized to their processing size and back."""

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        processing_res: tuple[int, int] | None = None,
        stripped: str | Path | None = None,
    ):
        path = Path(path)
        if path.is_dir() and (path / ENGINE_FILE).is_file():
            self.description = check_aoti_engine(path, device)
            files = {parse_resolution(r): path / name for r, name in self.description["packages"].items()}
            scales = path / self.description["scales"] if self.description.get("scales") else None
        elif path.is_file():
            self.description = check_aoti_sidecar(path, device)
            files = {parse_resolution(self.description["resolution"]): path}
            scales = path.with_name(self.description["scales"]) if self.description.get("scales") else None
        else:
            raise FileNotFoundError(f"{path}: engine not found (a .pt2 package or a folder with {ENGINE_FILE})")
        self.sidecar = self.description  # the name the single-package engine used
        self.path, self.processing_res = path, processing_res
        self.built = ", ".join(resolution_name(s) for s in files)
        if processing_res is not None and processing_res not in files:
            raise ValueError(
                f"{path}: built for {self.built}, asked for {resolution_name(processing_res)} (build it with "
                f"`fe2e-deploy build STRIPPED --backend aoti --resolution {resolution_name(processing_res)}`)"
            )
        for file in files.values():
            if not file.is_file():
                raise FileNotFoundError(f"{file}: package missing from the engine (rebuild it)")
        folder = check_stripped(stripped or self.description["stripped"]["path"], self.description["stripped"], path)
        document = load_scales(scales) if scales is not None else None
        self.device = torch.device(device)
        self.precision, self.batch = self.description["precision"], int(self.description["batch"])
        self.model = prepare_model(folder, self.precision, document, self.device)  # one set of weights for all
        self.graphs: dict[tuple[int, int], FE2EGraph] = {}
        self.runners: dict[tuple[int, int], object] = {}
        for size, file in files.items():
            self.graphs[size] = FE2EGraph(self.model.vae, self.model.dit, *size).eval()  # its own RoPE tables
            self.runners[size] = self._load(file, self.graphs[size])
        self.name = f"aoti-{self.precision}"
        self.timer = NO_TIMER

    def _load(self, file: Path, graph: FE2EGraph):
        """The package's runner with the graph's tensors as its constants (pointers: ``self.graphs`` keeps them)."""
        index = -1 if self.device.index is None else self.device.index  # -1: the current CUDA device
        runner = torch._inductor.aoti_load_package(str(file), device_index=index)
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

    def processing_size(self, image: Image.Image) -> tuple[int, int]:
        """Where ``image`` runs: ``processing_res`` or FE2E's size for it; a size not built is an error."""
        size = self.processing_res or fe2e_processing_size(*image.size)
        if size not in self.runners:
            raise ValueError(
                f"image {resolution_name(image.size)} is processed at {resolution_name(size)} (FE2E's resize rule), "
                f"but {self.path} is built for {self.built} only; build it with `fe2e-deploy build STRIPPED --backend "
                f"aoti --resolution {resolution_name(size)}`, or pass --processing-res with a built resolution"
            )
        return size

    @torch.inference_mode()
    def predict_batch(self, images: list[Image.Image]) -> list[Prediction]:
        """One Prediction per image, in order: images grouped by processing size, run ``batch`` at a time."""
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(images):
            groups[self.processing_size(image)].append(i)  # every size checked before anything runs
        results: list[Prediction | None] = [None] * len(images)
        for size, indices in groups.items():
            for start in range(0, len(indices), self.batch):
                chunk = indices[start : start + self.batch]
                for i, prediction in zip(chunk, self._run(size, [images[i] for i in chunk]), strict=True):
                    results[i] = prediction
        return results

    def predict(self, image: Image.Image) -> Prediction:
        return self.predict_batch([image])[0]

    def _run(self, size: tuple[int, int], images: list[Image.Image]) -> list[Prediction]:
        """Up to ``batch`` images at ``size`` through one package call (the last image repeated to fill it)."""
        with self.timer("preprocess"):
            x = torch.cat([preprocess(image, size) for image in images])
            if len(images) < self.batch:
                x = torch.cat([x, x[-1:].expand(self.batch - len(images), -1, -1, -1)])
            x = x.to(self.device).contiguous()  # compiled for contiguous input
        with self.timer("model"), preferred_attention(self.device):
            depth, normals = self.runners[size](x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        with self.timer("postprocess"):
            return [
                postprocess(depth[i : i + 1].float(), normals[i : i + 1].float(), image.size)
                for i, image in enumerate(images)
            ]
