"""``quickstart``: the whole deployment chain on the embedded demo model, one stage after another.

merge-lora -> strip (constants folded) -> export (ONNX, checked in ONNX Runtime) -> the best engine
this machine can build -> infer. The model is the embedded demo model (trained on synthetic scenes,
run at its training size unless ``processing_res``), or with ``seed`` a random one (init-tiny first).
Each stage is the same library call its command makes, so the printed command lines reproduce the
run step by step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .artifacts.export import ExportManifest, load_manifest
from .artifacts.stripped import StrippedMeta
from .compile.onnx_check import CHECK_FILE, check_export, check_passed, write_check_report
from .compile.onnx_export import export_onnx
from .config import load_model_config
from .engines import Engine, EngineOptions, load_engine
from .errors import MissingInput, OutputExists
from .files.images import find_images, read_image
from .infer import InferReport, run_infer
from .merge import merge_lora
from .model_files import DEMO_MODEL_DIR, DEMO_RESOLUTION
from .resolution import MAX_PROCESSING_PIXELS, check_processing_pixels, fe2e_processing_size, resolution_name
from .strip import strip_model
from .tiny import FILES, write_tiny_model


@dataclass
class QuickstartReport:
    stages: list[tuple[str, float]] = field(default_factory=list)  # (command line, seconds)
    engine: str = ""
    infer: InferReport | None = None


def processing_sizes(images_dir: Path) -> tuple[tuple[int, int], ...]:
    """FE2E's processing size of every readable image (sorted, unique): the resolutions to export.

    Sizes over the processing limit are left out: infer reports those images as failed, one by one.
    """
    sizes = set()
    for path in find_images(images_dir):
        try:
            size = fe2e_processing_size(*read_image(path).size)
            check_processing_pixels(size, MAX_PROCESSING_PIXELS, str(path))
            sizes.add(size)
        except (OSError, ValueError):
            continue  # infer reports unreadable and too large images
    if not sizes:
        raise MissingInput(f"{images_dir}: no readable .jpg/.jpeg/.png images found")
    return tuple(sorted(sizes))


def best_engine(export_dir: Path, device: str, processing_res=None) -> tuple[Engine, str]:
    """ONNX Runtime on this machine (CPU or CUDA provider); TensorRT/AOTInductor engines need a build step
    that ``quickstart`` leaves to ``build-trt``/``build`` on a GPU."""
    return load_engine(export_dir, EngineOptions(device=device, processing_res=processing_res)), str(export_dir)


def run_quickstart(
    images_dir: str | Path,
    output_dir: str | Path,
    *,
    work_dir: str | Path = "build/quickstart",
    seed: int | None = None,
    processing_res: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], object] = print,
) -> QuickstartReport:
    """Run the chain; ``processing_res`` replaces the model's size (the demo's 128x96, or FE2E's resize rule).

    ``seed``: start from ``init-tiny --seed`` random weights instead of the embedded demo model.
    """
    images_dir, output_dir, work_dir = Path(images_dir), Path(output_dir), Path(work_dir)
    report = QuickstartReport()
    if seed is None and processing_res is None:
        processing_res = DEMO_RESOLUTION
    if processing_res and not find_images(images_dir):  # fail before any stage runs
        raise MissingInput(f"{images_dir}: no readable .jpg/.jpeg/.png images found")
    sizes = (processing_res,) if processing_res else processing_sizes(images_dir)
    # one sub-folder per model: stages reused from an earlier run are always of this model
    work_dir = work_dir / ("demo" if seed is None else f"tiny-seed{seed}")
    model = DEMO_MODEL_DIR if seed is None else work_dir / "model"
    stripped, export_dir = work_dir / "stripped", work_dir / "export"

    def stage(command: str, fn: Callable[[], object], done: Path | None = None) -> object:
        """Run one stage; a stage whose output exists is reused unless ``overwrite``."""
        log(f"$ {command}")
        if done is not None and done.exists() and not overwrite:
            log(f"  (reusing {done.parent}; pass --overwrite to rebuild)")
            return None
        start = time.perf_counter()
        result = fn()
        report.stages.append((command, time.perf_counter() - start))
        return result

    if seed is not None:
        stage(
            f"fe2e-deploy init-tiny {model} --seed {seed}",
            lambda: write_tiny_model(model, seed=seed, overwrite=overwrite),
            model / FILES["lora"],
        )
    files = {role: model / name for role, name in FILES.items()}
    config = load_model_config(files["config"])
    merged = work_dir / "merged_dit.safetensors"
    stage(
        f"fe2e-deploy merge-lora --dit {files['dit']} --lora {files['lora']} --out {merged} "
        f"--model-config {files['config']}",
        lambda: merge_lora(files["dit"], files["lora"], merged, config, overwrite=overwrite, progress=progress),
        merged,
    )
    dtype = torch.float32  # CPU: FP32 runs natively in ONNX Runtime and is the fastest measured (BENCHMARKS.md)
    stage(
        f"fe2e-deploy strip -o {stripped} --model-config {files['config']} --dit {merged} --vae {files['vae']} "
        f"--prompt-embedding {files['prompt']} --dtype fp32",
        lambda: strip_model(
            merged, files["prompt"], files["vae"], stripped, config, dtype=dtype, overwrite=overwrite, progress=progress
        ),
        stripped / StrippedMeta.FILE,
    )
    res_args = " ".join(f"--resolution {resolution_name(s)}" for s in sizes)
    stage(
        f"fe2e-deploy export {stripped} -o {export_dir} {res_args} --graph fe2e --check",
        lambda: _export_and_check(stripped, export_dir, sizes, overwrite, progress),
        export_dir / CHECK_FILE if _has_resolutions(export_dir, sizes) and check_passed(export_dir) else None,
    )
    engine, engine_path = best_engine(export_dir, "cpu", processing_res)
    report.engine = engine.name
    with engine:
        report.infer = stage(
            f"fe2e-deploy infer {images_dir} -o {output_dir} --engine {engine_path}"
            + (f" --processing-res {resolution_name(processing_res)}" if processing_res else ""),
            lambda: run_infer(engine, images_dir, output_dir, overwrite=overwrite, progress=progress),
        )
    return report


def _has_resolutions(export_dir: Path, sizes) -> bool:
    if not (export_dir / ExportManifest.FILE).is_file():
        return False
    have = set(load_manifest(export_dir).resolutions)
    if not set(sizes) <= have:
        exported = ", ".join(resolution_name(s) for s in sorted(have))
        raise OutputExists(f"{export_dir}: exported for {exported}, these images need more; pass --overwrite")
    return True


def _export_and_check(stripped: Path, export_dir: Path, sizes, overwrite: bool, progress: bool) -> None:
    export_onnx(stripped, export_dir, resolutions=sizes, graphs=("fe2e",), overwrite=True, progress=progress)
    results = check_export(export_dir, stripped)
    write_check_report(export_dir, results)
    failed = [r for r in results if not r.ok]
    if failed:
        raise RuntimeError("exported graph does not match PyTorch: " + "; ".join(r.row() for r in failed))
