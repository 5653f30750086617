"""``benchmark --synthetic-weights PRESET``: full-size speed with no weight files.

Each engine is built directly on the device from a :class:`~fe2e_deploy.synthetic.SyntheticModel`
(meta -> on the device -> filled in place from seeded random tensors; the stripped form folded in
memory), timed, compared and freed before the next one. Engines, in the order they run at each
resolution (1024x768 first by default):

``stripped-bf16``    the stripped model, eager BF16 DiT, FP32 VAE: the baseline every map error is against
``reference``        the official-style path: unstripped BF16 DiT + connector, CFG batch 2, FP32 VAE
``compiled-bf16``    the stripped model with each stage under ``torch.compile``
``fp8-tensor``       per-tensor static FP8 (``FP8Linear``, max-calibrated on a synthetic scene), compiled
``fp8-row``          per-row weight / per-token dynamic FP8 (``FP8RowwiseLinear``), compiled
``fp8-row-fastacc``  the same with cuBLASLt's fast FP8 accumulation
``attention``        not an engine: SDPA alone at the resolution's shape, once per backend

One JSON line per engine and resolution is appended to the ``--json`` file as soon as it is
measured (flushed and synced), so a run cut off at its time limit still leaves its data;
``time_budget`` skips what would not finish in time and writes a line saying so.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import __version__
from .artifacts.scales import DEFAULT_EXCLUDE
from .benchmark import PAPER_SECONDS, map_errors, stage_bar_chart, time_engine
from .config import finite_number
from .engines import EngineOptions
from .engines.eager import EagerEngine
from .engines.stripped import StrippedEngine
from .errors import InvalidInput
from .flops import bf16_peak_tflops, dit_flops
from .kernels import attention_order
from .loading import load_dit, load_vae
from .memory import PeakMemory
from .models.fp8 import quantize_dit, quantize_dit_rowwise
from .processing import Prediction
from .quantize.calibrate import measure_scales, quantizable_linears
from .reference import FE2EPipeline
from .resolution import resolution_name
from .scenes import synthetic_scene
from .strip import strip_in_memory
from .synthetic import SyntheticModel
from .timing import NO_TIMER, StageTimer

ENGINES = ("stripped-bf16", "reference", "compiled-bf16", "fp8-tensor", "fp8-row", "fp8-row-fastacc", "attention")
BASELINE = "stripped-bf16"
COMPILED = ("compiled-bf16", "fp8-tensor", "fp8-row", "fp8-row-fastacc")


@dataclass
class SyntheticSettings:
    preset: str = "step1x-edit"
    device: str = "cuda"
    resolutions: tuple[tuple[int, int], ...] = ((1024, 768),)
    engines: tuple[str, ...] = ENGINES
    runs: int = 10
    warmup: int = 2
    seed: int = 0
    compile_mode: str | None = None  # torch.compile's mode (None: its default)
    time_budget: float | None = None  # seconds for the whole benchmark
    profile: bool = False  # top kernels of one extra run per engine (torch.profiler)

    def validate(self) -> None:
        unknown = [e for e in self.engines if e not in ENGINES]
        if unknown:
            raise InvalidInput(f"unknown engine(s) {unknown}; choose from {', '.join(ENGINES)}")
        if self.runs < 1 or self.warmup < 0:
            raise InvalidInput(f"runs must be >= 1 and warmup >= 0 (got {self.runs}, {self.warmup})")
        if any(e in COMPILED for e in self.engines) and self.warmup < 1:
            raise InvalidInput("compiled engines need --warmup >= 1 (the first run compiles)")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidInput(f"device {self.device!r}: no CUDA GPU is visible here")
        if self.time_budget is not None:
            finite_number(self.time_budget, "--time-budget", positive=True)


class JsonLines:
    """Append one JSON object per line, flushed and synced at once (a killed run keeps every line written)."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("")

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        try:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # e.g. disk full: a failed write names no file
            if exc.filename is not None or exc.errno is None:
                raise
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run_synthetic_benchmark(
    settings: SyntheticSettings, json_path: str | Path | None = None, log: Callable[[str], object] = print
) -> list[dict]:
    """Build, time and compare every engine at every resolution; returns the records (also written as JSON lines)."""
    settings.validate()
    device = torch.device(settings.device)
    synth = SyntheticModel.create(settings.preset, settings.seed, device)
    out = JsonLines(json_path)
    start = time.perf_counter()
    records: list[dict] = []
    name = device_name(device)
    peak = bf16_peak_tflops(name) if device.type == "cuda" else None
    estimates = _Estimates()
    for width, height in settings.resolutions:
        image = synthetic_scene(width, height, seed=settings.seed)
        baseline: Prediction | None = None
        reference_e2e: float | None = None
        for engine_name in settings.engines:
            common = {
                "engine": engine_name,
                "resolution": resolution_name((width, height)),
                "device": name,
                "preset": settings.preset,
                "seed": settings.seed,
                "torch": torch.__version__,
                "fe2e_deploy": __version__,
            }
            left = None if settings.time_budget is None else settings.time_budget - (time.perf_counter() - start)
            need = estimates.seconds(engine_name, settings)
            if left is not None and need is not None and need > left:
                reason = f"skipped: needs about {need:.0f} s, {max(left, 0):.0f} s left of --time-budget"
                log(f"{engine_name} @ {width}x{height}: {reason}")
                out.write({**common, "skipped": reason})
                records.append({**common, "skipped": reason})
                continue
            log(f"{engine_name} @ {width}x{height} ...")
            if engine_name == "attention":
                for record in attention_records(synth, width, height, device, settings):
                    out.write({**common, **record})
                    records.append({**common, **record})
                continue
            record, prediction = measure_engine(engine_name, synth, image, (width, height), device, settings)
            estimates.update(engine_name, record)
            record["dit_tflop"] = dit_flops(synth.config, synth.prompt().length, width, height)["total"] / 1e12
            dit = record["stages"].get("dit", {}).get("median")
            record["dit_tflops"] = record["dit_tflop"] / dit if dit else None
            record["dit_fraction_of_bf16_peak"] = record["dit_tflops"] / peak if peak and dit else None
            record["bf16_peak_tflops"] = peak
            if engine_name == BASELINE:
                baseline = prediction
            errors = map_errors(prediction, baseline) if baseline is not None else {}
            record.update({k: errors.get(k) for k in ("depth_rel_l2", "normals_rel_l2", "normals_mean_angle_deg")})
            record["errors_vs"] = BASELINE if baseline is not None else None
            if engine_name == "reference":
                reference_e2e = record["e2e_median_s"]
            record["speedup_vs_paper"] = PAPER_SECONDS / record["e2e_median_s"]
            record["speedup_vs_reference"] = reference_e2e / record["e2e_median_s"] if reference_e2e else None
            record = {**common, **record}
            out.write(record)
            records.append(record)
            log(format_line(record))
    return records


class _Estimates:
    """Rough cost of the next engine from what was measured so far (for --time-budget)."""

    def __init__(self):
        self.run: dict[str, float] = {}
        self.build: dict[str, float] = {}

    def update(self, engine: str, record: dict) -> None:
        self.run[engine] = record["e2e_median_s"]
        self.build[engine] = record["build_s"] + record["first_run_s"]

    def seconds(self, engine: str, settings: SyntheticSettings) -> float | None:
        if not self.run:
            return None
        per_run = self.run.get(engine) or max(self.run.values()) * (2.5 if engine == "reference" else 1.0)
        build = self.build.get(engine)
        if build is None:
            compiled = [self.build[e] for e in COMPILED if e in self.build]
            build = max(compiled) if engine in COMPILED and compiled else max(self.build.values())
        return build + (settings.warmup + settings.runs + 2) * per_run


def build_engine(
    engine: str, synth: SyntheticModel, image: Image.Image, res: tuple[int, int], device, settings, timer=NO_TIMER
):
    """One engine, built on ``device`` from the synthetic weights, marking its stages on ``timer``."""
    if engine == "reference":
        dit = load_dit(synth.config, synth.dit, torch.bfloat16, device, progress=False)
        vae = load_vae(synth.config, synth.vae, torch.float32, device, progress=False)
        pipe = FE2EPipeline(dit, vae, synth.prompt(), device, cfg_batch=True)
        return EagerEngine(pipe, EngineOptions(device=str(device), processing_res=res), timer=timer, name="reference")
    model = strip_in_memory(synth.dit, synth.prompt(), synth.vae, synth.config, dtype=torch.bfloat16, device=device)
    if engine == "fp8-tensor":
        linears = quantizable_linears(model.dit, DEFAULT_EXCLUDE)
        layers, _ = measure_scales(model, linears, [image], res)  # max calibration on the benchmark scene
        quantize_dit(model.dit, layers)
    elif engine.startswith("fp8-row"):
        names = list(quantizable_linears(model.dit, DEFAULT_EXCLUDE))
        quantize_dit_rowwise(model.dit, names, fast_accum=engine.endswith("fastacc"))
    compile_mode = (settings.compile_mode or "default") if engine in COMPILED else None
    options = EngineOptions(device=str(device), processing_res=res)
    return StrippedEngine(model, options, timer=timer, compile_mode=compile_mode, name=engine)


def measure_engine(engine_name, synth, image, res, device, settings) -> tuple[dict, Prediction]:
    """Build (memory sampled), first run (compiles), warm-up, timed runs, one sampled run; then free."""
    cuda = device.type == "cuda"
    _free(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    timer = StageTimer(cuda=cuda)
    with PeakMemory(device) as memory:
        started = time.perf_counter()
        engine = build_engine(engine_name, synth, image, res, device, settings, timer)
        _sync(cuda)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        engine.predict(image)  # compiles compiled engines
        _sync(cuda)
        first_run_s = time.perf_counter() - started
    stages, total, prediction = time_engine(engine, timer, image, settings.runs, max(settings.warmup - 1, 0), cuda)
    with memory:  # one more run, sampled (the timed runs are not)
        engine.predict(image)
    record = {
        "e2e_median_s": total["median"],
        "e2e_p90_s": total["p90"],
        "e2e_min_s": total["min"],
        "images_per_s": 1.0 / total["median"],
        "stages": stages,
        "runs": settings.runs,
        "warmup": settings.warmup,
        "build_s": build_s,
        "first_run_s": first_run_s,
        "peak_mem_bytes": memory.peak,
        "mem_before_bytes": memory.baseline,
        "peak_mem_kind": memory.kind,
        "torch_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "attention_order": [b.name for b in attention_order(device)] if attention_order(device) else "default",
        "compile_mode": getattr(engine, "compile_mode", None),
    }
    if settings.profile:
        record["top_kernels"] = top_kernels(engine, image, cuda)
    engine.close()
    del engine
    _free(cuda)
    return record, prediction


def top_kernels(engine, image: Image.Image, cuda: bool, count: int = 15) -> list[dict]:
    """The ``count`` most expensive kernels (device time on CUDA, CPU time elsewhere) of one run."""
    from torch.profiler import ProfilerActivity, profile  # noqa: PLC0415

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        engine.predict(image)
        _sync(cuda)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0.0), reverse=True)[:count]
    return [{"name": e.key[:160], "ms": getattr(e, key, 0.0) / 1e3, "calls": e.count} for e in events]


def attention_records(synth: SyntheticModel, width: int, height: int, device, settings) -> list[dict]:
    """SDPA alone at the DiT's attention shape (BF16), once per backend that runs here: ms and TFLOP/s."""
    from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: PLC0415

    d = synth.config.dit
    seq = int(dit_flops(synth.config, synth.prompt().length, width, height)["tokens"])
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    q, k, v = (
        torch.randn(1, d.num_heads, seq, d.head_dim, generator=generator, device=device, dtype=torch.bfloat16)
        for _ in range(3)
    )
    flops = 4.0 * seq * seq * d.hidden_size
    backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    backends += [SDPBackend.MATH] if device.type == "cpu" or seq <= 4096 else []
    records = []
    for backend in backends:
        try:
            with sdpa_kernel(backend), torch.inference_mode():
                times = _time_op(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), device, 10)
        except RuntimeError as exc:  # the backend does not take this shape/dtype/device
            records.append({"backend": backend.name, "skipped": str(exc).splitlines()[0][:200]})
            continue
        median = float(np.median(times))
        records.append({"backend": backend.name, "median_s": median, "tflops": flops / median / 1e12})
    return [{"engine": f"attention-{r['backend'].lower()}", "kind": "attention", "tokens": seq, **r} for r in records]


def _time_op(fn: Callable, device: torch.device, runs: int) -> list[float]:
    fn()
    _sync(device.type == "cuda")
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _free(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def write_records_plot(records: list[dict], path: str | Path) -> None:
    """Stacked horizontal bars of the median stage times per engine and resolution (PNG)."""
    rows = [r for r in records if "e2e_median_s" in r]
    if not rows:
        raise InvalidInput("no engine was measured: nothing to plot")
    labels = [f"{r['engine']} {r['resolution']}" for r in rows]
    title = f"FE2E ({rows[0]['preset']}, synthetic weights) on {rows[0]['device']}"
    stage_bar_chart(labels, [r["stages"] for r in rows], title, path, paper=True)


def format_line(r: dict) -> str:
    """One engine's result on one line (for the log)."""
    if "skipped" in r:
        return f"{r['engine']:<16} {r['resolution']:>9}  {r['skipped']}"
    if r.get("kind") == "attention":
        return f"{r['engine']:<24} {r['resolution']:>9}  {r['median_s'] * 1e3:8.2f} ms  {r['tflops']:7.1f} TFLOP/s"
    parts = [
        f"{r['engine']:<16} {r['resolution']:>9}",
        f"e2e {r['e2e_median_s'] * 1e3:8.1f} ms (p90 {r['e2e_p90_s'] * 1e3:.1f})",
        f"{r['images_per_s']:6.2f} img/s",
        f"DiT {r['dit_tflops']:.3g} TFLOP/s" if r.get("dit_tflops") else "DiT -",
        f"({r['dit_fraction_of_bf16_peak']:.0%} of peak)" if r.get("dit_fraction_of_bf16_peak") else "",
        f"peak mem {r['peak_mem_bytes'] / 2**30:.2f} GiB",
        f"x{r['speedup_vs_paper']:.2f} vs 1.78 s",
        f"x{r['speedup_vs_reference']:.2f} vs ref" if r.get("speedup_vs_reference") else "",
        f"depth {r['depth_rel_l2']:.2e} normals {r['normals_mean_angle_deg']:.2f} deg"
        if r.get("depth_rel_l2") is not None
        else "",
    ]
    return "  ".join(p for p in parts if p)


def format_records(records: list[dict]) -> str:
    """A table of the engine records (attention and skipped lines listed after it)."""
    head = ["engine", "res", "e2e med ms", "p90 ms", "img/s", "DiT TFLOP/s", "% peak", "peak GiB", "x1.78s", "x ref"]
    head += ["depth rel", "normal deg"]
    rows = []
    for r in records:
        if "skipped" in r or r.get("kind") == "attention":
            continue
        rows.append(
            [
                r["engine"],
                r["resolution"],
                f"{r['e2e_median_s'] * 1e3:.1f}",
                f"{r['e2e_p90_s'] * 1e3:.1f}",
                f"{r['images_per_s']:.2f}",
                f"{r['dit_tflops']:.3g}" if r.get("dit_tflops") else "-",
                f"{r['dit_fraction_of_bf16_peak']:.0%}" if r.get("dit_fraction_of_bf16_peak") else "-",
                f"{r['peak_mem_bytes'] / 2**30:.2f}",
                f"{r['speedup_vs_paper']:.2f}",
                f"{r['speedup_vs_reference']:.2f}" if r.get("speedup_vs_reference") else "-",
                f"{r['depth_rel_l2']:.2e}" if r.get("depth_rel_l2") is not None else "-",
                f"{r['normals_mean_angle_deg']:.3f}" if r.get("normals_mean_angle_deg") is not None else "-",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [format_line(r) for r in records if "skipped" in r or r.get("kind") == "attention"]
    return "\n".join(lines)


def read_records(path: str | Path) -> list[dict]:
    """The records of a ``--json`` file of this benchmark (a last line cut off mid-write is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


if __name__ == "__main__":  # python -m fe2e_deploy.synthetic_benchmark LINES.jsonl [PLOT.png]: table (and plot)
    import sys

    rows = read_records(sys.argv[1])
    print(format_records(rows))
    if len(sys.argv) > 2 and any("e2e_median_s" in r for r in rows):
        write_records_plot(rows, sys.argv[2])
