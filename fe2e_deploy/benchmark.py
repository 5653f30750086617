"""``benchmark``: per-stage and end-to-end latency of engines, measured side by side with the reference.

Every engine is loaded alone (the previous one freed), warmed up, then run ``runs`` times on the
same image; stages are timed by the engine's own markers (CUDA events on a GPU, wall clock on
CPU), end to end by the wall clock around ``predict`` (which returns host arrays, so it includes
every synchronisation). The reference is the official path: BF16 eager DiT, FP32 VAE, CFG batch
2, unstripped. Speedups are ratios of medians measured in the same run, plus the ratio to the
paper's 1.78 s. Accuracy: each engine's maps against the FP32 eager reference on the same image.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import __version__
from .engines import Engine, EngineOptions, load_engine
from .engines.eager import EagerEngine
from .errors import InvalidInput
from .evaluation.metrics import angular_error, relative_l2
from .files.atomic import atomic_write, write_json
from .kernels import exact_fp32
from .memory import PeakMemory
from .model_files import ModelFiles
from .processing import Prediction
from .timing import StageTimer

PAPER_SECONDS = 1.78  # FE2E's reported inference time per image
STAGE_ORDER = ("preprocess", "vae_encode", "dit", "vae_decode", "model", "postprocess")


def summarize(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(a)), "p90": float(np.percentile(a, 90)), "min": float(a.min()), "n": len(a)}


@dataclass
class EngineResult:
    name: str
    source: str
    stages: dict[str, dict[str, float]]
    end_to_end: dict[str, float]
    peak_memory_bytes: int | None
    memory_kind: str
    accuracy: dict[str, float] | None = None
    speedups: dict[str, float] = field(default_factory=dict)
    host: dict[str, float] | None = None  # infer over a folder of real-size images (host side included)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "source": self.source,
            "stages": self.stages,
            "end_to_end": self.end_to_end,
            "images_per_second": 1.0 / self.end_to_end["median"],
            "peak_memory_bytes": self.peak_memory_bytes,
            "memory_kind": self.memory_kind,
            "accuracy_vs_fp32_reference": self.accuracy,
            "speedups": self.speedups,
            "infer_over_folder": self.host,
        }


def map_errors(pred: Prediction, ref: Prediction) -> dict[str, float]:
    """Relative L2 error of the depth and normal maps, and the mean normal angle difference (degrees)."""
    return {
        "depth_rel_l2": relative_l2(pred.depth, ref.depth),
        "normals_rel_l2": relative_l2(pred.normals, ref.normals),
        "normals_mean_angle_deg": float(np.mean(angular_error(pred.normals, ref.normals))),
    }


def time_engine(
    engine: Engine, timer: StageTimer, image: Image.Image, runs: int, warmup: int, cuda: bool
) -> tuple[dict, dict, Prediction]:
    """Warm up, then ``runs`` timed predictions; returns (stage summaries, end-to-end summary, last prediction).

    ``timer`` is the one the engine was opened with (it records only while this function says so).
    """
    prediction = None
    for _ in range(warmup):
        prediction = engine.predict(image)
    timer.recording = True
    totals = []
    for _ in range(runs):
        start = time.perf_counter()
        prediction = engine.predict(image)
        if cuda:
            torch.cuda.synchronize()
        totals.append(time.perf_counter() - start)
    timer.recording = False
    recorded = timer.seconds()
    stages = {s: summarize(recorded[s]) for s in STAGE_ORDER if s in recorded}
    return stages, summarize(totals), prediction


def run_benchmark(
    engines: list[str | Path],
    image: Image.Image,
    reference: ModelFiles | None = None,
    options: EngineOptions | None = None,
    runs: int = 10,
    warmup: int = 2,
    accuracy: bool = True,
    log=print,
    host_images: str | Path | None = None,
) -> dict:
    """Benchmark ``engines`` (paths as ``infer --engine`` takes) and, with ``reference``, the official path.

    ``options``: how every engine is opened (device, processing size, precision of model and stripped
    folders; the reference always runs BF16 with CFG batch 2, its accuracy reference FP32).
    ``host_images``: also run each engine through ``infer`` over this folder (real-size images, all
    outputs, into a temporary folder) and record end to end per image, the engine's share and the host
    side: what a user of ``infer`` gets, not only the engine on one pre-sized image.
    """
    if runs < 1 or warmup < 0:
        raise InvalidInput(f"runs must be >= 1 and warmup >= 0 (got {runs}, {warmup})")
    options = options or EngineOptions()
    device, processing_res = options.device, options.processing_res
    cuda = device.startswith("cuda")
    fp32_maps = None
    if reference is not None and accuracy:
        log("reference FP32 maps for accuracy ...")
        reference32 = EagerEngine.from_model_files(reference, replace(options, dtype="fp32"))
        with reference32, exact_fp32():  # cuDNN would run the FP32 VAE's convolutions in TF32 otherwise
            fp32_maps = reference32.predict(image)
        _free(cuda)
    jobs: list[tuple[str, object]] = []
    if reference is not None:
        jobs.append(("reference (eager BF16 DiT, FP32 VAE, CFG batch 2)", reference))
    jobs.extend((str(e), e) for e in engines)
    results: list[EngineResult] = []
    for label, source in jobs:
        log(f"benchmarking {label} ...")
        # Peak memory as the device (or the OS) sees it, sampled while loading and over one untimed run;
        # torch's own counters miss AOTInductor's and the libraries' allocations.
        timer = StageTimer(cuda=cuda)
        with (memory := PeakMemory(device)):
            if isinstance(source, ModelFiles):
                reference_options = replace(options, dtype="bf16")
                engine = EagerEngine.from_model_files(
                    source, reference_options, timer=timer, cfg_batch=True, name="reference-bf16-cfg2"
                )
            else:
                engine = load_engine(source, options, timer=timer)
            try:
                engine.predict(image)
            except BaseException:
                engine.close()
                raise
        with engine:  # closed (its memory released) before the next engine loads
            stages, total, prediction = time_engine(engine, timer, image, runs, warmup, cuda)
            peak, kind = memory.peak, memory.kind
            errors = map_errors(prediction, fp32_maps) if fp32_maps is not None else None
            host = infer_over_folder(engine, host_images, log) if host_images is not None else None
            results.append(EngineResult(engine.name, label, stages, total, peak, kind, errors, host=host))
        _free(cuda)
    ref_median = results[0].end_to_end["median"] if reference is not None else None
    for r in results:
        r.speedups["vs_paper_1.78s"] = PAPER_SECONDS / r.end_to_end["median"]
        if ref_median is not None:
            r.speedups["vs_reference"] = ref_median / r.end_to_end["median"]
    return {
        "fe2e_deploy": __version__,
        "machine": machine_info(device),
        "settings": {
            "image_size": list(image.size),
            "processing_res": list(processing_res) if processing_res else None,
            "runs": runs,
            "warmup": warmup,
            "device": device,
            "timing": "CUDA events per stage, wall clock end to end" if cuda else "wall clock",
        },
        "results": [r.to_dict() for r in results],
    }


def infer_over_folder(engine: Engine, folder: str | Path, log=print) -> dict[str, float]:
    """``infer`` with ``engine`` over every image of ``folder`` (outputs to a temporary folder, deleted)."""
    from .infer import run_infer  # noqa: PLC0415

    log(f"  infer over {folder} ...")
    with tempfile.TemporaryDirectory(prefix="fe2e-bench-") as out:
        report = run_infer(engine, folder, out, progress=False)
    return {
        "images": report.predicted,
        "failed": len(report.failed),
        "e2e_s_per_image": report.seconds_per_image,
        "engine_s_per_image": report.predict_seconds / max(1, report.predicted),
        "host_cpu_s_per_image": report.host_seconds_per_image,
    }


def _free(cuda: bool) -> None:
    """Return the closed engine's cached blocks to the GPU, so the next engine's peak starts from nothing."""
    if cuda:
        torch.cuda.empty_cache()


def machine_info(device: str) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__}
    info["cpu"] = platform.processor() or platform.machine()
    info["cpu_threads"] = torch.get_num_threads()
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def format_table(report: dict) -> str:
    """A fixed-width table: stage medians (ms), end to end median / p90 / min, images/s, speedups, accuracy."""
    stages = [s for s in STAGE_ORDER if any(s in r["stages"] for r in report["results"])]
    head = ["engine", *stages, "e2e med", "p90", "min", "img/s", "x ref", "x 1.78s", "depth rel", "normal deg"]
    rows = []
    for r in report["results"]:
        ms = [f"{r['stages'][s]['median'] * 1e3:.1f}" if s in r["stages"] else "-" for s in stages]
        e2e = r["end_to_end"]
        acc = r["accuracy_vs_fp32_reference"] or {}
        rows.append(
            [
                r["name"],
                *ms,
                f"{e2e['median'] * 1e3:.1f}",
                f"{e2e['p90'] * 1e3:.1f}",
                f"{e2e['min'] * 1e3:.1f}",
                f"{r['images_per_second']:.2f}",
                f"{r['speedups']['vs_reference']:.2f}" if "vs_reference" in r["speedups"] else "-",
                f"{r['speedups']['vs_paper_1.78s']:.2f}",
                f"{acc['depth_rel_l2']:.2e}" if acc else "-",
                f"{acc['normals_mean_angle_deg']:.3f}" if acc else "-",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *rows]]
    host = [
        f"{r['name']}: infer over {h['images']} images: {h['e2e_s_per_image'] * 1e3:.1f} ms per image end to end "
        f"({h['engine_s_per_image'] * 1e3:.1f} ms in the engine, host side {h['host_cpu_s_per_image'] * 1e3:.1f} "
        "CPU-ms per image, overlapped)"
        for r in report["results"]
        if (h := r.get("infer_over_folder"))
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:], "(times in ms)", *host])


def write_plot(report: dict, path: str | Path) -> None:
    """Stacked horizontal bars of the median stage times per engine (PNG)."""
    results = report["results"]
    title = f"FE2E stage times on {report['machine'].get('gpu', report['machine']['cpu'])}"
    stage_bar_chart([r["name"] for r in results], [r["stages"] for r in results], title, path)


def stage_bar_chart(labels: list[str], stages: list[dict], title: str, path: str | Path, paper: bool = False) -> None:
    """Stacked horizontal bars of median stage times (``stages[i][stage]["median"]``, seconds) as a PNG.

    ``paper`` draws the paper's 1.78 s per image as a vertical line.
    """
    import matplotlib  # noqa: PLC0415  (imported only for the plot)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.5 * len(labels)))
    left = np.zeros(len(labels))
    for stage in STAGE_ORDER:
        ms = np.array([s.get(stage, {}).get("median", 0.0) * 1e3 for s in stages])
        if ms.any():
            ax.barh(labels, ms, left=left, label=stage)
            left += ms
    if paper:
        ax.axvline(PAPER_SECONDS * 1e3, color="grey", linestyle="--", label="paper 1.78 s")
    ax.set_xlabel("median time per image (ms)")
    ax.set_title(title)
    ax.invert_yaxis()
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=120))
    plt.close(fig)


def write_report(report: dict, path: str | Path) -> None:
    write_json(Path(path), report)
