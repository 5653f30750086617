"""``benchmark --synthetic-weights PRESET``: full-size speed with no weight files.

Each engine is built directly on the device from a :class:`~fe2e_deploy.synthetic.SyntheticModel`
(meta -> on the device -> filled in place from seeded random tensors; the stripped form folded in
memory), timed, compared and freed before the next one. Engines, in the order they run at each
resolution (1024x768 first by default):

``stripped-bf16``    the stripped model, eager BF16 DiT, FP32 VAE: the baseline every map error is against
``reference``        the official-style path: unstripped BF16 DiT + connector, CFG batch 2, FP32 VAE
``compiled-bf16``    the stripped model with each stage under ``torch.compile``
``fp8-row``          per-row weight / per-token dynamic FP8 (``FP8RowwiseLinear``), compiled
``fp8-tensor``       per-tensor static FP8 (``FP8Linear``, max-calibrated on a synthetic scene), compiled
``fp8-row-fastacc``  per-row FP8 with cuBLASLt's fast FP8 accumulation
``attention``        not an engine: SDPA alone at the resolution's shape, once per backend

One JSON line per engine and resolution is appended to the ``--json`` file as soon as it is
measured (flushed and synced), so a run cut off at its time limit still leaves its data;
``time_budget`` skips what would not finish in time (:class:`TimeEstimates` states the rule) and
writes a line saying so; an engine that fails writes a ``failed`` line (the error's first line, the
traceback in the log) and the others still run. Memory is reported twice: over the build and first run (``build_peak``:
for FP8 engines this includes quantisation, done layer by layer) and over one steady run after the
build's temporaries are freed (``steady_peak``: what serving the engine needs). DiT rates are given
per image (the work FE2E needs) and as executed (the reference runs CFG batch 2: twice the work).
Dynamo's caches are reset between resolutions (every engine of the last one is closed by then).
"""

from __future__ import annotations

import gc
import json
import os
import platform
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
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
from .flops import bf16_peak_tflops, dit_flops, fp8_peak_tflops
from .kernels import attention_order
from .loading import load_dit, load_vae
from .memory import PeakMemory
from .models.fp8 import GEMM_MODES, quantize_dit, quantize_dit_rowwise, set_fp8_gemm
from .processing import Prediction
from .quantize.calibrate import measure_scales, quantizable_linears
from .reference import FE2EPipeline
from .resolution import resolution_name
from .scenes import synthetic_scene
from .strip import strip_in_memory
from .synthetic import SyntheticModel
from .timing import NO_TIMER, StageTimer, op_seconds

#: The engines in the order the first GPU call wants them: the most valuable rows first.
ENGINES = ("stripped-bf16", "reference", "compiled-bf16", "fp8-row", "fp8-tensor", "fp8-row-fastacc", "attention")
BASELINE = "stripped-bf16"
COMPILED = ("compiled-bf16", "fp8-row", "fp8-tensor", "fp8-row-fastacc")
FP8_ENGINES = ("fp8-row", "fp8-tensor", "fp8-row-fastacc")
#: Images the DiT computes per image asked for: the reference runs CFG batch 2 (conditional + unconditional).
EXECUTED_BATCH = {"reference": 2}


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
    fp8_gemm: str = "auto"  # the FP8 engines' GEMM: a mode of models.fp8.GEMM_MODES, or ENGINE=MODE pairs

    def gemm_for(self, engine: str) -> str:
        """The GEMM mode of an FP8 engine from ``fp8_gemm``: one mode for all, or ``ENGINE=MODE,...`` (others auto).

        Per engine because the CPU runs per-tensor ``torch._scaled_mm`` about 1000x slower than row-wise
        (0.035 GFLOP/s, measured): CPU runs force the row-wise engines' FP8 GEMM and leave ``fp8-tensor``'s
        (whose call ``tests/test_fp8_gemm.py`` runs on its own) dequantised.
        """
        if "=" not in self.fp8_gemm:
            return self.fp8_gemm
        pairs = dict(pair.split("=", 1) for pair in self.fp8_gemm.split(",") if pair.strip())
        return {k.strip(): v.strip() for k, v in pairs.items()}.get(engine, "auto")

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
        pairs = [p.strip() for p in self.fp8_gemm.split(",") if p.strip()] if "=" in self.fp8_gemm else []
        if pairs and not all(p.count("=") == 1 and p.split("=")[0].strip() in FP8_ENGINES for p in pairs):
            raise InvalidInput(
                f"--fp8-gemm {self.fp8_gemm!r}: ENGINE=MODE pairs need ENGINE in {', '.join(FP8_ENGINES)}"
            )
        for engine in FP8_ENGINES:
            mode = self.gemm_for(engine)
            if mode not in GEMM_MODES:
                modes = ", ".join(GEMM_MODES)
                raise InvalidInput(f"--fp8-gemm {self.fp8_gemm!r}: {engine} gets {mode!r}; modes: {modes}")


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
    settings: SyntheticSettings,
    json_path: str | Path | None = None,
    log: Callable[[str], object] = print,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict]:
    """Build, time and compare every engine at every resolution; returns the records (also written as JSON lines).

    ``clock``: seconds, for ``time_budget`` (tests pass a simulated one).
    """
    settings.validate()
    device = torch.device(settings.device)
    synth = SyntheticModel.create(settings.preset, settings.seed, device)
    out = JsonLines(json_path)
    start = clock()
    records: list[dict] = []
    name = device_name(device)
    estimates = TimeEstimates(settings)
    for index, (width, height) in enumerate(settings.resolutions):
        if index:  # every engine of the last resolution is closed: their graphs would only fill Dynamo's caches
            torch._dynamo.reset()
        estimates.new_resolution()
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
                "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            left = None if settings.time_budget is None else settings.time_budget - (clock() - start)
            need = estimates.seconds(engine_name)
            if left is not None and need is not None and need > left:
                reason = f"skipped: needs about {need:.0f} s, {max(left, 0):.0f} s left of --time-budget"
                log(f"{engine_name} @ {width}x{height}: {reason}")
                out.write({**common, "skipped": reason})
                records.append({**common, "skipped": reason})
                continue
            log(f"{engine_name} @ {width}x{height} ...")
            started = clock()
            try:
                if engine_name == "attention":
                    for record in attention_records(synth, width, height, device, settings):
                        out.write({**common, **record})
                        records.append({**common, **record})
                    estimates.attention_took(clock() - started)
                    continue
                record, prediction = measure_engine(engine_name, synth, image, (width, height), device, settings)
            except Exception as exc:  # a failure (out of memory, a kernel this torch lacks) costs only its row
                log(traceback.format_exc())
                first_line = (str(exc).strip().splitlines() or [""])[0][:300]
                failed = {**common, "failed": f"{type(exc).__name__}: {first_line}"}
            else:
                failed = None
            if failed is not None:  # outside the except block: its traceback (and the engine it holds) is gone
                _free(device.type == "cuda")
                log(format_line(failed))
                out.write(failed)
                records.append(failed)
                continue
            record["wall_s"] = clock() - started
            estimates.update(engine_name, record)
            record.update(dit_rates(engine_name, synth, width, height, record, name))
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


def dit_rates(engine: str, synth: SyntheticModel, width: int, height: int, record: dict, device: str) -> dict:
    """The DiT's work and rates: per image (FE2E's work) and executed (CFG batch 2 for the reference), vs peaks."""
    per_image = dit_flops(synth.config, synth.prompt().length, width, height)["total"] / 1e12
    executed = per_image * EXECUTED_BATCH.get(engine, 1)
    dit = record["stages"].get("dit", {}).get("median")
    bf16_peak = bf16_peak_tflops(device)  # None for a CPU (no name matches)
    fp8_peak = fp8_peak_tflops(device) if engine in FP8_ENGINES else None
    rate = executed / dit if dit else None
    return {
        "dit_tflop": per_image,
        "dit_tflop_executed": executed,
        "dit_tflops": per_image / dit if dit else None,
        "dit_tflops_executed": rate,
        "bf16_peak_tflops": bf16_peak,
        "dit_fraction_of_bf16_peak": rate / bf16_peak if rate and bf16_peak else None,
        "fp8_peak_tflops": fp8_peak,
        "dit_fraction_of_fp8_peak": rate / fp8_peak if rate and fp8_peak else None,
    }


@dataclass(frozen=True)
class MeasuredCost:
    """One engine's measured wall-time parts (seconds): what :class:`TimeEstimates` reasons with."""

    build: float  # strip (+ quantise) until the engine exists
    dit_compile: float  # the first run's DiT stage beyond a steady one: the blocks' compile
    vae_compile: float  # the first run's VAE stages beyond steady ones: the encoder's and decoder's compile
    run: float  # one steady run, end to end

    @classmethod
    def of(cls, record: dict) -> MeasuredCost:
        first, stages = record.get("first_run_stages") or {}, record["stages"]

        def extra(*names: str) -> float:
            return max(0.0, sum(first.get(n, 0.0) - stages.get(n, {}).get("median", 0.0) for n in names))

        return cls(record["build_s"], extra("dit"), extra("vae_encode", "vae_decode"), record["e2e_median_s"])


#: What ``attention`` (a few SDPA calls per backend) is costed at before it ran once.
ATTENTION_FIRST_S = 10.0


class TimeEstimates:
    """What the next engine will cost (seconds), from this run's measurements, for ``--time-budget``.

    An engine costs build + DiT compile + VAE compile + ``runs`` steady runs (warm-up, timed, one sampled,
    one profiled), each part taken from, in this order: the same engine at an earlier resolution; for an
    FP8 engine, the last FP8 engine measured, then ``compiled-bf16`` (the FP8 linears change the blocks'
    graphs, so each FP8 engine compiles its own DiT); for the reference, the baseline's build and 2.5x its
    run (CFG batch 2 plus the connector). Compiled engines reuse the VAE graphs the first compiled engine of
    a resolution made (same module class, dtype and shapes), so only that first one is costed with a VAE
    compile: the largest measured. ``attention`` costs what it took at the last resolution (it is a few
    SDPA calls), :data:`ATTENTION_FIRST_S` before. Anything else without history: the largest build and
    slowest run so far. The first engine always runs (nothing is known yet).
    """

    def __init__(self, settings: SyntheticSettings):
        self.runs = settings.warmup + settings.runs + 1 + int(settings.profile)
        self.costs: dict[str, MeasuredCost] = {}
        self.last_fp8: MeasuredCost | None = None
        self.attention: float | None = None
        self.compiled_here = False  # a compiled engine ran at this resolution (its VAE graphs exist)

    def new_resolution(self) -> None:
        self.compiled_here = False

    def update(self, engine: str, record: dict) -> None:
        cost = MeasuredCost.of(record)
        self.costs[engine] = cost
        if engine in FP8_ENGINES:
            self.last_fp8 = cost
        if engine in COMPILED:
            self.compiled_here = True

    def attention_took(self, seconds: float) -> None:
        self.attention = seconds

    def seconds(self, engine: str) -> float | None:
        if engine == "attention":
            return self.attention if self.attention is not None else ATTENTION_FIRST_S
        if not self.costs:
            return None
        cost = self.costs.get(engine) or self._donor(engine)
        vae = 0.0
        if engine in COMPILED and not self.compiled_here:
            vae = max(c.vae_compile for c in self.costs.values())
        return cost.build + (cost.dit_compile if engine in COMPILED else 0.0) + vae + self.runs * cost.run

    def _donor(self, engine: str) -> MeasuredCost:
        compiled = self.costs.get("compiled-bf16")
        if engine in FP8_ENGINES and (self.last_fp8 or compiled):
            return self.last_fp8 or compiled
        if engine == "reference" and BASELINE in self.costs:
            base = self.costs[BASELINE]
            return MeasuredCost(base.build, 0.0, 0.0, 2.5 * base.run)
        build = max(c.build for c in self.costs.values())
        return MeasuredCost(build, 0.0, 0.0, max(c.run for c in self.costs.values()))


def build_engine(
    engine: str, synth: SyntheticModel, image: Image.Image, res: tuple[int, int], device, settings, timer=NO_TIMER
):
    """One engine, built on ``device`` from the synthetic weights, marking its stages on ``timer``.

    FP8 engines are quantised layer by layer (``models.fp8``): each BF16 weight is freed as its FP8 copy is
    made, so the build never holds two copies of the DiT.
    """
    if engine == "reference":
        dit = load_dit(synth.config, synth.dit, torch.bfloat16, device, progress=False)
        vae = load_vae(synth.config, synth.vae, torch.float32, device, progress=False)
        pipe = FE2EPipeline(dit, vae, synth.prompt(), device, cfg_batch=True)
        return EagerEngine(pipe, EngineOptions(device=str(device), processing_res=res), timer=timer, name="reference")
    model = strip_in_memory(synth.dit, synth.prompt(), synth.vae, synth.config, dtype=torch.bfloat16, device=device)
    if engine == "fp8-tensor":
        # max calibration on the benchmark scene; the layer dict is dropped before quantising
        layers, _ = measure_scales(model, quantizable_linears(model.dit, DEFAULT_EXCLUDE), [image], res)
        quantize_dit(model.dit, layers)
    elif engine.startswith("fp8-row"):
        names = list(quantizable_linears(model.dit, DEFAULT_EXCLUDE))
        quantize_dit_rowwise(model.dit, names, fast_accum=engine.endswith("fastacc"))
    if engine in FP8_ENGINES:
        set_fp8_gemm(model.dit, settings.gemm_for(engine))
    compile_mode = (settings.compile_mode or "default") if engine in COMPILED else None
    options = EngineOptions(device=str(device), processing_res=res)
    return StrippedEngine(model, options, timer=timer, compile_mode=compile_mode, name=engine)


def measure_engine(engine_name, synth, image, res, device, settings) -> tuple[dict, Prediction]:
    """Build and first run (compiles; memory sampled: the build peak), warm-up, timed runs, then one run with
    the build's temporaries freed (memory sampled again: the steady peak); then free everything."""
    cuda = device.type == "cuda"
    _free(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    timer = StageTimer(cuda=cuda)
    with PeakMemory(device) as build_memory:
        started = time.perf_counter()
        engine = build_engine(engine_name, synth, image, res, device, settings, timer)
        _sync(cuda)
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        timer.recording = True  # the first run's stages: how long each one's compile took
        engine.predict(image)
        timer.recording = False
        _sync(cuda)
        first_run_s = time.perf_counter() - started
    first_run_stages = {stage: sum(times) for stage, times in timer.seconds().items()}
    timer.clear()
    build_allocated = torch.cuda.max_memory_allocated(device) if cuda else None
    stages, total, prediction = time_engine(engine, timer, image, settings.runs, max(settings.warmup - 1, 0), cuda)
    _free(cuda)  # what the build left in the caching allocator is not the engine's steady need
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    with PeakMemory(device) as steady_memory:  # one more run, sampled (the timed runs are not)
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
        "first_run_stages": first_run_stages,
        "build_peak_mem_bytes": build_memory.peak,
        "steady_peak_mem_bytes": steady_memory.peak,
        "peak_mem_bytes": max(build_memory.peak, steady_memory.peak),
        "mem_before_bytes": build_memory.baseline,
        "peak_mem_kind": build_memory.kind,
        "torch_build_max_allocated_bytes": build_allocated,
        "torch_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "attention_order": [b.name for b in attention_order(device)] if attention_order(device) else "default",
        "compile_mode": getattr(engine, "compile_mode", None),
        "fp8_gemm": settings.gemm_for(engine_name) if engine_name in FP8_ENGINES else None,
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
                times = op_seconds(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), device, 10)
        except RuntimeError as exc:  # the backend does not take this shape/dtype/device
            records.append({"backend": backend.name, "skipped": str(exc).splitlines()[0][:200]})
            continue
        median = float(np.median(times))
        records.append({"backend": backend.name, "median_s": median, "tflops": flops / median / 1e12})
    return [{"engine": f"attention-{r['backend'].lower()}", "kind": "attention", "tokens": seq, **r} for r in records]


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


def _gib(record: dict, key: str) -> str:
    value = record.get(key, record.get("peak_mem_bytes"))  # lines written before build/steady were apart
    return f"{value / 2**30:.2f}" if value is not None else "-"


def _percent(value: float | None) -> str:
    return f"{value:.0%}" if value else "-"


def format_line(r: dict) -> str:
    """One engine's result on one line (for the log)."""
    if "skipped" in r:
        return f"{r['engine']:<16} {r['resolution']:>9}  {r['skipped']}"
    if "failed" in r:
        return f"{r['engine']:<16} {r['resolution']:>9}  FAILED: {r['failed']}"
    if r.get("kind") == "attention":
        return f"{r['engine']:<24} {r['resolution']:>9}  {r['median_s'] * 1e3:8.2f} ms  {r['tflops']:7.1f} TFLOP/s"
    executed = r.get("dit_tflops_executed")
    parts = [
        f"{r['engine']:<16} {r['resolution']:>9}",
        f"e2e {r['e2e_median_s'] * 1e3:8.1f} ms (p90 {r['e2e_p90_s'] * 1e3:.1f})",
        f"{r['images_per_s']:6.2f} img/s",
        f"DiT {r['dit_tflops']:.3g} TFLOP/s per image" if r.get("dit_tflops") else "DiT -",
        f"({executed:.3g} executed)" if executed and executed != r.get("dit_tflops") else "",
        f"({_percent(r.get('dit_fraction_of_bf16_peak'))} of BF16 peak)" if r.get("dit_fraction_of_bf16_peak") else "",
        f"({_percent(r.get('dit_fraction_of_fp8_peak'))} of FP8 peak)" if r.get("dit_fraction_of_fp8_peak") else "",
        f"memory build {_gib(r, 'build_peak_mem_bytes')} / steady {_gib(r, 'steady_peak_mem_bytes')} GiB",
        f"x{r['speedup_vs_paper']:.2f} vs 1.78 s",
        f"x{r['speedup_vs_reference']:.2f} vs ref" if r.get("speedup_vs_reference") else "",
        f"depth {r['depth_rel_l2']:.2e} normals {r['normals_mean_angle_deg']:.2f} deg"
        if r.get("depth_rel_l2") is not None
        else "",
    ]
    return "  ".join(p for p in parts if p)


def format_records(records: list[dict]) -> str:
    """A table of the engine records (attention and skipped lines listed after it).

    DiT TFLOP/s: per image; "exec": as executed (CFG batch 2 for the reference); the peaks' fractions are of
    the executed rate (FP8: against the FP8 dense peak, though attention stays BF16).
    """
    head = ["engine", "res", "e2e med ms", "p90 ms", "img/s", "DiT TFLOP/s", "exec", "% BF16", "% FP8"]
    head += ["build GiB", "steady GiB", "x1.78s", "x ref", "depth rel", "normal deg"]
    rows = []
    for r in records:
        if "e2e_median_s" not in r:  # attention, skipped and failed lines follow the table
            continue
        rows.append(
            [
                r["engine"],
                r["resolution"],
                f"{r['e2e_median_s'] * 1e3:.1f}",
                f"{r['e2e_p90_s'] * 1e3:.1f}",
                f"{r['images_per_s']:.2f}",
                f"{r['dit_tflops']:.3g}" if r.get("dit_tflops") else "-",
                f"{r['dit_tflops_executed']:.3g}" if r.get("dit_tflops_executed") else "-",
                _percent(r.get("dit_fraction_of_bf16_peak")),
                _percent(r.get("dit_fraction_of_fp8_peak")),
                _gib(r, "build_peak_mem_bytes"),
                _gib(r, "steady_peak_mem_bytes"),
                f"{r['speedup_vs_paper']:.2f}",
                f"{r['speedup_vs_reference']:.2f}" if r.get("speedup_vs_reference") else "-",
                f"{r['depth_rel_l2']:.2e}" if r.get("depth_rel_l2") is not None else "-",
                f"{r['normals_mean_angle_deg']:.3f}" if r.get("normals_mean_angle_deg") is not None else "-",
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(str(x).rjust(w) for x, w in zip(line, widths, strict=True)) for line in [head, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [format_line(r) for r in records if "e2e_median_s" not in r]
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
