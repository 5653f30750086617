"""The AOTInductor engine: a ``.pt2`` package from ``build --backend aoti``, one compiled model per resolution."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from ..build_aoti import check_sidecar, load_package_models
from ..pipeline import Prediction, fe2e_processing_size, parse_resolution, postprocess, preprocess
from ..timing import NO_TIMER


class AOTIEngine:
    """image -> depth + normals through a compiled package, at the resolution FE2E's rule (or the override) picks."""

    def __init__(self, package: str | Path, device: str = "cpu", processing_res: tuple[int, int] | None = None):
        package = Path(package)
        if not package.is_file():
            raise FileNotFoundError(f"{package}: engine not found")
        self.package, self.device = package, torch.device(device)
        self.sidecar = check_sidecar(package, device)
        names = {parse_resolution(r): n for r, n in self.sidecar["models"].items()}
        self.resolutions = list(names)
        if processing_res is not None and processing_res not in names:
            raise ValueError(f"{package}: built for {self.built_for}, not for {processing_res[0]}x{processing_res[1]}")
        self.processing_res = processing_res
        runners = load_package_models(package, device)
        if set(runners) != set(names.values()):
            raise ValueError(f"{package}: holds models {sorted(runners)}, its sidecar names {sorted(names.values())}")
        self.runners = {res: runners[name] for res, name in names.items()}
        self.batch = int(self.sidecar["batch"])
        self.name = f"aoti-{self.sidecar['precision']}"
        self.timer = NO_TIMER

    @property
    def built_for(self) -> str:
        return ", ".join(self.sidecar["resolutions"])

    def resolution_for(self, size: tuple[int, int]) -> tuple[int, int]:
        """The override, else FE2E's size for an image of ``size``; a single-resolution package runs everything."""
        if self.processing_res is not None:
            return self.processing_res
        wanted = fe2e_processing_size(*size)
        if wanted in self.runners:
            return wanted
        if len(self.resolutions) == 1:
            return self.resolutions[0]
        raise ValueError(
            f"{self.package}: an image of {size[0]}x{size[1]} is processed at {wanted[0]}x{wanted[1]}; the package "
            f"has {self.built_for} (pass a processing resolution, or rebuild with that resolution)"
        )

    @torch.inference_mode()
    def predict(self, image: Image.Image) -> Prediction:
        resolution = self.resolution_for(image.size)
        with self.timer("preprocess"):
            x = preprocess(image, resolution).to(self.device).contiguous()  # compiled for contiguous input
            x = x.expand(self.batch, -1, -1, -1).contiguous() if self.batch > 1 else x
        with self.timer("model"):
            depth, normals = self.runners[resolution](x)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        with self.timer("postprocess"):
            return postprocess(depth[:1].float(), normals[:1].float(), image.size)
