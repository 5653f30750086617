"""``python -m fe2e_deploy.device_checks --out DIR``: the GPU-only paths checked in one short run (<= 3 min on an H100).

What the full-size benchmark (``scripts/device_benchmark.sh``) times, these checks verify, on seeded random
weights (no weight files) and seeded inputs:

1. ``scaled_mm``        ``torch._scaled_mm`` per-tensor and per-row, with and without fast accumulation, at the
                        DiT's real GEMM shapes (K, N of the full-size config; M = the tokens at 1024x768) against
                        the dequantised product of the same FP8 operands (BF16 path and exact FP32) and against
                        the unquantised BF16 matmul; on CUDA also time and TFLOP/s of each.
2. ``cuda_graph``       the compiled stripped engine (torch.compile regional, a mode without CUDA graphs of its
                        own) captured whole into one ``torch.cuda.CUDAGraph`` on static input buffers and
                        replayed: same maps as the run without the graph, for two inputs; both timed.
3. ``aoti``             an AOTInductor package of the tiny stripped model built by ``compile.aoti_build`` for this
                        device, loaded by the AOTI engine, against the eager model (same recipe, and BF16).
4. ``cudnn_attention``  SDPA under cuDNN at the DiT's shape (BF16 ``[1, 24, 6784, 128]``) against FlashAttention
                        and an FP32 reference: error, time, TFLOP/s, and whether its call replays in a CUDA graph.
5. ``fp8_memory``       the steady peak memory of one run (device-wide on CUDA) of the stripped BF16 model and of
                        the same model after the per-row FP8 recipe: FP8 must be below BF16.

Each check returns a record ``{check, variant, config, status: passed|failed|skipped, ..., seconds}``, appended to
``DIR/checks.jsonl`` as soon as it is measured (a run killed at its time limit keeps every line written); a check
that raises is recorded as failed with the exception's first line and the others still run. On a CPU the
CUDA-only parts report ``skipped: needs CUDA`` while everything a CPU can run does run (smaller shapes and
models, said in each record). Exit code 0 when no check failed (skipped is fine), 1 otherwise.

They run cheap first (1, 4, 5, 2, 3; on CUDA a second AOTI package, BF16, last) within ``--budget`` seconds (150 on
CUDA): a check whose estimate (:data:`CUDA_ESTIMATES`, or what an earlier record of it took) does not fit in what
is left is recorded as skipped; SIGTERM (``timeout``) records the check it cut off. Run after the benchmark in the
same call, check 2 should find its graphs in Inductor's FX graph cache (the benchmark's ``compiled-bf16`` compiles
the same encoder, decoder and block graphs at 1024x768, same shapes and dtypes; not verified on a GPU).

Configs: ``tiny`` (check 3, and every check on a CPU) and a mid-size config made here (:data:`MID_CONFIG`: the
full-size DiT's widths, 24 heads of 128, 2 double + 2 single blocks, the full connector and VAE), for checks 2 and
5 on CUDA; on a CPU a small mid config (:data:`MID_CPU_CONFIG`). ``--preset-mid`` names another (a preset or a
``model_config.json``), or ``none`` for tiny only.
"""

from __future__ import annotations

import argparse
import gc
import math
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from . import __version__
from .artifacts.aoti import package_name
from .artifacts.scales import DEFAULT_EXCLUDE, load_scales
from .compile.aoti_build import build_aoti
from .config import PRESETS, ConnectorConfig, DiTConfig, ModelConfig, load_model_config
from .engines import EngineOptions
from .engines.aoti import AOTIEngine, prepare_model
from .engines.stripped import StrippedEngine
from .evaluation.metrics import angular_error, relative_l2
from .flops import bf16_peak_tflops, dit_flops
from .kernels import exact_fp32, resolve_device
from .loading.stripped import StrippedModel
from .memory import PeakMemory
from .models.fp8 import (
    E4M3_MAX,
    FP8,
    FP8Linear,
    FP8RowwiseLinear,
    fp8_gemm_device,
    quantize_dit_rowwise,
    quantize_fp8,
    rowwise_scales,
    scaled_mm,
)
from .models.fused import FE2EGraph
from .processing import preprocess
from .quantize.calibrate import calibrate_fp8, quantizable_linears
from .scenes import synthetic_scene
from .strip import strip_in_memory, strip_model
from .synthetic import PROMPT_TOKENS, SyntheticModel
from .synthetic_benchmark import JsonLines, device_name, read_records  # JSON lines, written and read
from .timing import op_seconds

CHECKS = ("scaled_mm", "cudnn_attention", "fp8_memory", "cuda_graph", "aoti")  # the order they run in: cheap first
NEEDS_CUDA = "skipped: needs CUDA"

FULL = PRESETS["step1x-edit"]
#: Full-size DiT widths (hidden 3072, 24 heads of 128), 2 double + 2 single blocks, the full connector and VAE:
#: 1.36 GB of BF16 DiT linears (0.68 GB saved by FP8), compiled in the same graphs as the full model's blocks.
MID_CONFIG = ModelConfig(dit=DiTConfig(depth=2, depth_single_blocks=2))
#: What this 2-core CPU machine runs in seconds: hidden 1536 (12 heads of 128), 1 + 2 blocks, a small connector,
#: the tiny VAE (226 MB of BF16 DiT linears).
MID_CPU_CONFIG = ModelConfig(
    dit=DiTConfig(context_in_dim=1024, hidden_size=1536, num_heads=12, depth=1, depth_single_blocks=2),
    connector=ConnectorConfig(in_channels=512, hidden_size=1024, heads_num=8, depth=1),
    vae=PRESETS["tiny"].vae,
)
FULL_RES = (1024, 768)  # FE2E's main processing size: 6784 DiT tokens with the 640 text tokens
#: The DiT's GEMMs, (K, N) of the full-size config: fused qkv, the double blocks' MLP, the single blocks' linear1/2.
GEMM_SHAPES: dict[str, tuple[int, int]] = {
    "qkv": (FULL.dit.hidden_size, 3 * FULL.dit.hidden_size),
    "mlp_up": (FULL.dit.hidden_size, FULL.dit.mlp_hidden_dim),
    "mlp_down": (FULL.dit.mlp_hidden_dim, FULL.dit.hidden_size),
    "linear1": (FULL.dit.hidden_size, 3 * FULL.dit.hidden_size + FULL.dit.mlp_hidden_dim),
    "linear2": (FULL.dit.hidden_size + FULL.dit.mlp_hidden_dim, FULL.dit.hidden_size),
}
GEMM_TOKENS = int(dit_flops(FULL, PROMPT_TOKENS, *FULL_RES)["tokens"])  # 6784
#: On a CPU: K and N divided by 16 (still multiples of 16), M = 32. The CPU's per-tensor ``_scaled_mm`` kernel
#: runs at ~20 M multiply-adds/s (measured: 99 s for one 64 x 3072 x 9216 GEMM; per-row 0.36 s).
REDUCED_DIVISOR, REDUCED_TOKENS = 16, 32
#: A CUDA graph needs a compiled engine whose kernels it can capture, not one that captures graphs itself
#: ("reduce-overhead": one CUDA graph tree per compiled region). "max-autotune-no-cudagraphs" is the same as
#: "default" for capture; its GEMM autotuning alone would take minutes of the 3 (``--compile-mode`` picks it).
GRAPH_COMPILE_MODE = "default"

#: Bounds (relative L2 unless said). An FP8 GEMM with FP32 accumulation is the exact product of its FP8 operands
#: rounded once to BF16 (RMS ~2^-9 relative); fast accumulation keeps Hopper's FP8 partial sums (~14 bits), looser.
GEMM_EXACT_BOUND, GEMM_FAST_BOUND = 1e-2, 5e-2
GEMM_QUANT_BOUND = 0.1  # FP8 E4M3 rounding of both operands (3 mantissa bits): measured ~3.7e-2
MODULE_CALL_BOUND = 1e-3  # the FP8 module's forward against the same call made here (expected identical)
ATTENTION_BOUND = 2e-2  # BF16 attention against FP32 and against FlashAttention (BF16 output rounding ~3e-3)
GRAPH_BOUND = 1e-3  # a CUDA graph replay against the same compiled kernels run without the graph (expected equal)
#: Package vs eager in the same precision: depth rel L2, normals mean angle (deg). FP8 is loose: a fused kernel's
#: one-ulp BF16 difference moves values across E4M3 steps at the next quantiser (tests/test_fp8_gemm.py's docstring);
#: measured on the CPU (dequantised FP8, 32x32): 7.8e-3 / 0.94 deg.
AOTI_SAME_RECIPE = {"fp8": (5e-2, 5.0), "bf16": (1e-2, 1.0)}
AOTI_VS_BF16 = {"fp8": (0.15, 15.0), "bf16": (2e-2, 2.0)}  # package vs the eager BF16 stripped model
MIN_MEMORY_SAVING = 64 * 2**20  # below it the device-wide figure (2 MiB pages, context) cannot tell them apart
#: Seconds one record of each check takes at least on an H100 (guesses, on the low side: a check that overruns is
#: cut off by the hard limit and says so, one never started says nothing). The time measured for an earlier record
#: of the same check replaces the guess (so the second AOTI package is skipped unless the first left room for it).
CUDA_ESTIMATES = {"scaled_mm": 2.0, "cudnn_attention": 4.0, "fp8_memory": 10.0, "cuda_graph": 30.0, "aoti": 30.0}
CUDA_BUDGET = 150.0  # default --budget on CUDA (scripts/device_checks.sh kills the run at 165 s)


@dataclass
class CheckSettings:
    device: str = "auto"
    mid: str | None = "builtin"  # "builtin" (MID_CONFIG, MID_CPU_CONFIG on a CPU), a preset or JSON path, or None
    checks: tuple[str, ...] = CHECKS
    seed: int = 0
    budget: float | None = None  # seconds for all checks; None: CUDA_BUDGET on CUDA, no limit on a CPU
    gemm_shapes: str = "auto"  # full | reduced | auto (full on CUDA, reduced on a CPU)
    compile_mode: str = GRAPH_COMPILE_MODE
    aoti_precisions: tuple[str, ...] | None = None  # None: fp8 and bf16 on CUDA, fp8 on a CPU
    work: Path | None = None  # folder for stripped models and packages (None: a temporary one, removed after)

    def validate(self) -> None:
        unknown = [c for c in self.checks if c not in CHECKS]
        if unknown:
            raise ValueError(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
        if self.gemm_shapes not in ("auto", "full", "reduced"):
            raise ValueError(f"--gemm-shapes {self.gemm_shapes!r}: choose auto, full or reduced")
        if self.budget is not None and not (math.isfinite(self.budget) and self.budget > 0):
            raise ValueError(f"--budget must be a positive number of seconds, got {self.budget}")


class Killed(BaseException):
    """SIGTERM (``timeout``'s signal) arrived: not an Exception, so no check's guard catches it."""


def _on_sigterm(signum: int, _frame: object) -> None:
    raise Killed(f"signal {signum}")


@dataclass
class Task:
    """One record to measure: ``fn()`` returns its fields (``status`` included)."""

    check: str
    variant: str
    config: str
    fn: Callable[[], dict]
    estimate_s: float = 0.0


# --- helpers --------------------------------------------------------------------------------------------


def rel_l2(got: torch.Tensor, want: torch.Tensor) -> float:
    """``||got - want|| / ||want||`` in float64."""
    want = want.double()
    return float((got.double() - want).norm() / want.norm())


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}".rstrip(": ")


def on_cuda(device: torch.device) -> bool:
    """Whether the checks take their CUDA paths on ``device`` (one place to ask)."""
    return device.type == "cuda"


def sync(device: torch.device) -> None:
    if on_cuda(device):
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if on_cuda(device):
        torch.cuda.empty_cache()


def cuda_seconds(fn: Callable[[], object], runs: int = 10, warmup: int = 2) -> float:
    """Median seconds of ``fn`` on the current CUDA stream (CUDA events around each call)."""
    return float(np.median(op_seconds(fn, torch.device("cuda"), runs, warmup)))


def seconds_of(fn: Callable[[], object], device: torch.device, runs: int = 10, warmup: int = 2) -> float:
    """Median seconds of ``fn``: CUDA events on a GPU, wall clock (``perf_counter``) on a CPU."""
    return float(np.median(op_seconds(fn, device, runs, warmup)))


def compare_maps(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """Depth relative L2 and the normals' relative L2 and mean angle (degrees) of ``[1, C, h, w]`` map pairs."""
    depth, normals = (t.detach().float().cpu().numpy() for t in got)
    ref_depth, ref_normals = (t.detach().float().cpu().numpy() for t in want)
    angles = angular_error(normals[0].transpose(1, 2, 0), ref_normals[0].transpose(1, 2, 0))
    return {
        "depth_rel_l2": relative_l2(depth, ref_depth),
        "normals_rel_l2": relative_l2(normals, ref_normals),
        "normals_mean_angle_deg": float(np.mean(angles)),
    }


def clone_maps(maps: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(t.detach().clone() for t in maps)


def scene_input(size: tuple[int, int], seed: int, device: torch.device) -> torch.Tensor:
    """A seeded synthetic scene pre-processed at ``size`` (``[1, 3, h, w]`` in [-1, 1]) on ``device``."""
    return preprocess(synthetic_scene(*size, seed=seed), size).to(device)


def build_stripped(config: ModelConfig, label: str, seed: int, device: torch.device) -> StrippedModel:
    """The stripped BF16 model of ``config`` from seeded random weights, built directly on ``device``."""
    synth = SyntheticModel(config, label, seed, device)
    return strip_in_memory(synth.dit, synth.prompt(), synth.vae, config, dtype=torch.bfloat16, device=device)


def describe(config: ModelConfig) -> str:
    """The sizes that matter here, in one line (records say which model they ran)."""
    d, c, v = config.dit, config.connector, config.vae
    return (
        f"DiT hidden {d.hidden_size}, {d.num_heads} heads of {d.head_dim}, {d.depth} double + "
        f"{d.depth_single_blocks} single blocks; connector {c.hidden_size} x {c.depth}; VAE ch {v.ch} "
        f"x {list(v.ch_mult)}, {v.num_res_blocks} res blocks"
    )


def linear_weight_bytes(dit: nn.Module, names: Sequence[str]) -> int:
    modules = dict(dit.named_modules())
    return sum(modules[n].weight.numel() * modules[n].weight.element_size() for n in names)


def fmt(value: float | None, spec: str = ".2e") -> str:
    return "-" if value is None else format(value, spec)


# --- 1. torch._scaled_mm --------------------------------------------------------------------------------


def gemm_operands(kind: str, layer: FP8Linear | FP8RowwiseLinear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The FP8 input and its FP32 scale exactly as the layer's GEMM path makes them (``x`` ``[M, K]``, M % 16 == 0)."""
    if kind == "tensor":
        return quantize_fp8(x, layer.input_scale), layer.input_scale.float()
    scale = rowwise_scales(x)  # [M, 1]
    return (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(FP8), scale


def check_scaled_mm(name: str, k: int, n: int, m: int, device: torch.device, seed: int) -> dict:
    """Every FP8 GEMM variant at one shape against the dequantised product of its operands and the BF16 matmul."""
    cuda = on_cuda(device)
    flop = 2.0 * m * k * n
    # 1. seeded operands: activations with a spread of token magnitudes, a fan-in scaled weight, a small bias
    generator = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(m, k, generator=generator, device=device)
    x = (x * torch.exp(0.5 * torch.randn(m, 1, generator=generator, device=device))).to(torch.bfloat16)
    linear = nn.Linear(k, n, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(n, k, generator=generator, device=device) / math.sqrt(k))
        linear.bias.copy_(0.05 * torch.randn(n, generator=generator, device=device))
    record: dict = {"m": m, "k": k, "n": n, "tflop": flop / 1e12, "gemms": {}, "fast_accum_bit_identical": {}}
    with torch.inference_mode():
        # 2. the unquantised BF16 matmul
        reference = F.linear(x, linear.weight, linear.bias)
        if cuda:
            seconds = cuda_seconds(lambda: F.linear(x, linear.weight, linear.bias), runs=20, warmup=3)
            record |= {"bf16_ms": seconds * 1e3, "bf16_tflops": flop / seconds / 1e12}
        # 3. both FP8 recipes, built from the BF16 layer by the project's modules
        w_amax = float(linear.weight.abs().amax().float())
        layers = {
            "tensor": FP8Linear(linear, float(x.abs().amax().float()) / E4M3_MAX, w_amax / E4M3_MAX),
            "row": FP8RowwiseLinear(linear),
        }
        problems = []
        for kind, layer in layers.items():
            layer.set_gemm("dequantized")
            dequantized = layer(x)  # the fallback path: dequantised operands rounded to BF16, BF16 matmul
            a, scale_a = gemm_operands(kind, layer, x)
            scale_b = layer.weight_scale.float()
            with exact_fp32():  # the same FP8 operands multiplied exactly (FP32, no TF32)
                exact = (a.float() * scale_a) @ (layer.weight_fp8.float() * scale_b.reshape(-1, 1)).T
                exact = exact + layer.bias.float()
            outputs = {}
            for fast in (False, True):
                label = f"{kind}-fast" if fast else kind

                def call(a=a, scale_a=scale_a, layer=layer, scale_b=scale_b, fast=fast):
                    return scaled_mm(a, layer.weight_fp8, scale_a, scale_b, layer.bias, torch.bfloat16, fast)

                out = outputs[fast] = call()
                entry = {
                    "rel_l2_vs_dequantized_fp32": rel_l2(out, exact),
                    "rel_l2_vs_dequantized_bf16": rel_l2(out, dequantized),
                    "rel_l2_vs_bf16": rel_l2(out, reference),
                }
                if cuda:
                    seconds = cuda_seconds(call, runs=20, warmup=3)
                    entry |= {"ms": seconds * 1e3, "tflops": flop / seconds / 1e12}
                record["gemms"][label] = entry
                bound = GEMM_FAST_BOUND if fast else GEMM_EXACT_BOUND
                if not entry["rel_l2_vs_dequantized_fp32"] < bound:
                    problems.append(f"{label} vs exact {entry['rel_l2_vs_dequantized_fp32']:.2e} >= {bound}")
                if not entry["rel_l2_vs_bf16"] < GEMM_QUANT_BOUND:
                    problems.append(f"{label} vs BF16 {entry['rel_l2_vs_bf16']:.2e} >= {GEMM_QUANT_BOUND}")
            identical = bool(torch.equal(outputs[False], outputs[True]))
            record["fast_accum_bit_identical"][kind] = identical
            record["gemms"][f"{kind}-fast"]["rel_l2_vs_precise"] = rel_l2(outputs[True], outputs[False])
            if not cuda and not identical:  # the CPU kernel ignores use_fast_accum
                problems.append(f"{kind}: fast accumulation changed the CPU result")
            # 4. the module's own GEMM path (padding, scales, bias) gives what the call above gives
            layer.set_gemm("scaled_mm")
            module_out = layer(x)
            record["gemms"][kind]["module_rel_l2_vs_call"] = rel_l2(module_out, outputs[False])
            if not record["gemms"][kind]["module_rel_l2_vs_call"] < MODULE_CALL_BOUND:
                problems.append(f"{kind}: the module's GEMM differs from the call")
            if cuda:
                seconds = cuda_seconds(lambda layer=layer: layer(x), runs=20, warmup=3)
                record["gemms"][kind] |= {"layer_ms": seconds * 1e3, "layer_tflops": flop / seconds / 1e12}
    if not cuda:
        record["note"] = "CPU kernel (ATen's FP32 emulation): use_fast_accum ignored, times not measured"
    g = record["gemms"]
    key = "rel_l2_vs_dequantized_fp32"
    exact = "; ".join(f"{kind} {g[kind][key]:.1e} (fast {g[kind + '-fast'][key]:.1e})" for kind in layers)
    quant = "/".join(f"{g[kind]['rel_l2_vs_bf16']:.1e}" for kind in layers)
    summary = f"{m}x{k}x{n} vs exact FP8 product: {exact}; vs BF16 {quant}"
    if cuda:
        speed = ", ".join(f"{label} {g[label]['tflops']:.0f}" for label in g)
        summary += f"; TFLOP/s BF16 {record['bf16_tflops']:.0f}, {speed}"
    else:
        summary += "; fast accumulation bit-identical (CPU)" if all(record["fast_accum_bit_identical"].values()) else ""
    record["summary"] = summary
    return {"status": "failed" if problems else "passed", **({"problems": problems} if problems else {}), **record}


# --- 2. CUDA graph of the compiled engine ---------------------------------------------------------------


def check_cuda_graph(
    config: ModelConfig, label: str, size: tuple[int, int], device: torch.device, seed: int, compile_mode: str
) -> dict:
    """The compiled stripped engine captured into one CUDA graph on static buffers, replayed for two inputs."""
    cuda = on_cuda(device)
    # 1. the engine (compiled on CUDA; on a CPU eager: what runs before the capture, on the same static buffer)
    model = build_stripped(config, label, seed, device)
    mode = compile_mode if cuda else None
    engine = StrippedEngine(model, EngineOptions(device=str(device), processing_res=size), compile_mode=mode)
    inputs = [scene_input(size, seed + i, device) for i in range(2)]
    static_x = inputs[0].clone()
    record: dict = {"resolution": f"{size[0]}x{size[1]}", "model": describe(config), "compile_mode": mode}
    with torch.inference_mode():
        # 2. first runs (compilation) and warm-up on a side stream, as capture wants
        start = time.perf_counter()
        stream = torch.cuda.Stream(device) if cuda else None
        if cuda:
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                for _ in range(3):
                    engine.run(static_x, size)
            torch.cuda.current_stream(device).wait_stream(stream)
        else:
            engine.run(static_x, size)
        sync(device)
        record["first_runs_s"] = time.perf_counter() - start
        # 3. the outputs without a graph, one per input
        references = []
        for x in inputs:
            static_x.copy_(x)
            references.append(clone_maps(engine.run(static_x, size)))
        sync(device)
        record["static_buffer_rerun_identical"] = all(
            torch.equal(a, b) for a, b in zip(references[0], clone_maps(engine.run(inputs[0], size)), strict=True)
        )
        nongraph = seconds_of(lambda: engine.run(static_x, size), device, runs=5 if cuda else 2, warmup=1)
        record["nongraph_ms"] = nongraph * 1e3
        if not cuda:
            engine.close()
            return {
                "status": "skipped",
                "reason": f"{NEEDS_CUDA} (CUDA graph capture); on the CPU the eager engine ran on the static buffer",
                "summary": f"eager {nongraph * 1e3:.0f} ms/run (CPU), capture needs CUDA",
                **record,
            }
        # 4. capture one whole run (encoder, DiT blocks, decoder) into a CUDA graph
        static_x.copy_(inputs[0])
        graph = torch.cuda.CUDAGraph()
        start = time.perf_counter()
        with torch.cuda.graph(graph):
            static_out = engine.run(static_x, size)
        sync(device)
        record["capture_s"] = time.perf_counter() - start
        # 5. replay for each input (copied into the static buffer) against the run without the graph
        problems, replays = [], []
        for i, (x, reference) in enumerate(zip(inputs, references, strict=True)):
            static_x.copy_(x)
            graph.replay()
            sync(device)
            replays.append(clone_maps(static_out))
            errors = compare_maps(replays[-1], reference)
            errors["bit_identical"] = all(torch.equal(a, b) for a, b in zip(replays[-1], reference, strict=True))
            record[f"input{i}"] = errors
            if not (errors["depth_rel_l2"] < GRAPH_BOUND and errors["normals_rel_l2"] < GRAPH_BOUND):
                problems.append(f"input {i}: replay differs from the run without the graph")
        record["replays_differ_between_inputs"] = not torch.equal(replays[0][0], replays[1][0])
        if not record["replays_differ_between_inputs"]:
            problems.append("the replay does not read the static input buffer")
        # 6. time the replay
        replay = cuda_seconds(graph.replay, runs=5, warmup=1)
        record |= {"replay_ms": replay * 1e3, "speedup": nongraph / replay}
    del graph, static_out
    engine.close()
    record["summary"] = (
        f"replay {record['replay_ms']:.1f} ms vs {record['nongraph_ms']:.1f} ms (x{record['speedup']:.2f}), "
        f"depth {record['input0']['depth_rel_l2']:.1e}/{record['input1']['depth_rel_l2']:.1e}, "
        f"first runs {record['first_runs_s']:.0f} s"
    )
    return {"status": "failed" if problems else "passed", **({"problems": problems} if problems else {}), **record}


# --- 3. AOTInductor package -----------------------------------------------------------------------------


def package_gemm_calls(package: Path) -> dict[str, int]:
    """How often the package's C++ wrapper calls AOTInductor's ``_scaled_mm`` shim, per device kind."""
    with zipfile.ZipFile(package) as archive:
        wrapper = "".join(archive.read(n).decode(errors="replace") for n in archive.namelist() if n.endswith(".cpp"))
    calls: dict[str, int] = {}
    for kind in re.findall(r"aoti_torch_(\w+?)__scaled_mm\(", wrapper):
        calls[kind] = calls.get(kind, 0) + 1
    return calls


def check_aoti(precision: str, size: tuple[int, int], device: torch.device, seed: int, work: Path) -> dict:
    """The tiny stripped model compiled by ``build_aoti`` for this device, run by the AOTI engine, against eager."""
    folder = work / f"aoti_{precision}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    # 1. the tiny stripped folder (BF16; the weights generated on the CPU: the folder is the same on any device)
    synth = SyntheticModel.create("tiny", seed, "cpu")
    stripped = folder / "stripped"
    strip_model(synth.dit, synth.prompt(), synth.vae, stripped, synth.config, dtype=torch.bfloat16, progress=False)
    # 2. FP8: per-tensor scales, max-calibrated on two built-in scenes at the package's size
    scales_path = None
    if precision == "fp8":
        scales = calibrate_fp8(stripped, processing_res=size, max_images=2, progress=False, device=str(device))
        scales_path = scales.write(folder / "scales.json")
    # 3. the package ("auto": FP8 GEMMs through torch._scaled_mm where the device has them)
    start = time.perf_counter()
    description = build_aoti(
        stripped, folder / "engine", resolutions=[size], precision=precision, scales=scales_path, device=str(device)
    )
    record: dict = {"resolution": f"{size[0]}x{size[1]}", "model": describe(synth.config)}
    record["build_s"] = time.perf_counter() - start
    package = folder / "engine" / package_name(size)
    record |= {"package_bytes": package.stat().st_size, "scaled_mm_calls": package_gemm_calls(package)}
    x = scene_input(size, seed, torch.device("cpu"))
    # 4. the AOTI engine: load, run, time
    start = time.perf_counter()
    with AOTIEngine(folder / "engine", EngineOptions(device=str(device), processing_res=size)) as engine:
        record["load_s"] = time.perf_counter() - start
        compiled = engine.run_maps(x, size)
        x_device = x.to(device)
        with torch.inference_mode():
            record["run_ms"] = seconds_of(lambda: engine.run(x_device, size), device, runs=5, warmup=1) * 1e3
    # 5. eager: the same recipe (prepare_model: what the package computes with), and the BF16 stripped model
    model = prepare_model(stripped, precision, load_scales(scales_path) if scales_path else None, device)
    graph = FE2EGraph(model.vae, model.dit, *size).eval()
    with torch.inference_mode():
        eager = clone_maps(graph(x.to(device)))
    del graph, model
    with StrippedEngine(stripped, EngineOptions(device=str(device), processing_res=size)) as engine:
        bf16 = engine.run_maps(x, size)
    # 6. compare
    record["vs_eager_same_recipe"] = compare_maps(compiled, eager)
    record["vs_eager_bf16"] = compare_maps(compiled, bf16)
    problems = []
    for key, (depth_bound, angle_bound) in (
        ("vs_eager_same_recipe", AOTI_SAME_RECIPE[precision]),
        ("vs_eager_bf16", AOTI_VS_BF16[precision]),
    ):
        errors = record[key]
        if not (errors["depth_rel_l2"] < depth_bound and errors["normals_mean_angle_deg"] < angle_bound):
            problems.append(f"{key}: depth {errors['depth_rel_l2']:.2e}, {errors['normals_mean_angle_deg']:.2f} deg")
    if precision == "fp8":  # fp8_gemm "auto": torch._scaled_mm where the device has FP8 GEMMs, else dequantised
        record["fp8_gemm"] = "scaled_mm" if fp8_gemm_device(device) else "dequantized"
    record["build_seconds_per_package"] = description.build_seconds
    same, ref = record["vs_eager_same_recipe"], record["vs_eager_bf16"]
    record["summary"] = (
        f"build {record['build_s']:.0f} s, run {record['run_ms']:.1f} ms; vs eager {precision} depth "
        f"{same['depth_rel_l2']:.1e} / {same['normals_mean_angle_deg']:.2f} deg; vs BF16 {ref['depth_rel_l2']:.1e} / "
        f"{ref['normals_mean_angle_deg']:.2f} deg; _scaled_mm calls {record['scaled_mm_calls'] or 0}"
    )
    return {"status": "failed" if problems else "passed", **({"problems": problems} if problems else {}), **record}


# --- 4. cuDNN attention ---------------------------------------------------------------------------------


def check_attention(heads: int, tokens: int, head_dim: int, device: torch.device, seed: int) -> dict:
    """SDPA per backend at ``[1, heads, tokens, head_dim]`` (BF16) against FP32 attention; cuDNN's in a CUDA graph."""
    cuda = on_cuda(device)
    flop = 4.0 * tokens * tokens * heads * head_dim
    # 1. seeded inputs and the FP32 reference (the math backend, no TF32)
    generator = torch.Generator(device=device).manual_seed(seed)
    q, k, v = (
        torch.randn(1, heads, tokens, head_dim, generator=generator, device=device, dtype=torch.bfloat16)
        for _ in range(3)
    )
    record: dict = {"shape": [1, heads, tokens, head_dim], "tflop": flop / 1e12, "backends": {}}
    with torch.inference_mode():
        with exact_fp32(), sdpa_kernel(SDPBackend.MATH):
            reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        # 2. each backend that runs here: error and time
        backends = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
        backends = backends if cuda else [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
        outputs = {}
        for backend in backends:
            name = backend.name.lower()

            def attend(backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v)

            try:
                outputs[name] = attend()
            except RuntimeError as exc:  # the backend does not take this shape, dtype or device
                record["backends"][name] = {"error": first_line(exc)}
                continue
            entry = {"rel_l2_vs_fp32": rel_l2(outputs[name], reference)}
            if cuda:
                seconds = cuda_seconds(attend, runs=10, warmup=2)
                entry |= {"ms": seconds * 1e3, "tflops": flop / seconds / 1e12}
            record["backends"][name] = entry
        if not cuda:
            errors = {n: e.get("rel_l2_vs_fp32") for n, e in record["backends"].items()}
            summary = ", ".join(f"{n} {fmt(e, '.1e')}" for n, e in errors.items())
            return {
                "status": "skipped",
                "reason": f"{NEEDS_CUDA} (cuDNN attention); FLASH and MATH ran on the CPU at a small shape",
                "summary": f"vs FP32: {summary}",
                **record,
            }
        # 3. cuDNN against FlashAttention, and its call captured into a CUDA graph and replayed
        cudnn = outputs.get("cudnn_attention")
        problems = []
        if cudnn is None:
            problems.append(f"cuDNN attention did not run: {record['backends']['cudnn_attention']['error']}")
        else:
            if "flash_attention" in outputs:
                record["cudnn_rel_l2_vs_flash"] = rel_l2(cudnn, outputs["flash_attention"])
                if not record["cudnn_rel_l2_vs_flash"] < ATTENTION_BOUND:
                    problems.append(f"cuDNN vs flash {record['cudnn_rel_l2_vs_flash']:.2e}")
            if not record["backends"]["cudnn_attention"]["rel_l2_vs_fp32"] < ATTENTION_BOUND:
                problems.append("cuDNN vs FP32 above the bound")
            record["cudnn_graph_replay"] = attention_graph_replay(q, k, v, cudnn, device)
    entry = record["backends"].get("cudnn_attention", {})
    flash = record["backends"].get("flash_attention", {})
    record["summary"] = (
        f"cuDNN {fmt(entry.get('ms'), '.2f')} ms {fmt(entry.get('tflops'), '.0f')} TFLOP/s, flash "
        f"{fmt(flash.get('ms'), '.2f')} ms {fmt(flash.get('tflops'), '.0f')} TFLOP/s; cuDNN vs FP32 "
        f"{fmt(entry.get('rel_l2_vs_fp32'))}, vs flash {fmt(record.get('cudnn_rel_l2_vs_flash'))}"
    )
    return {"status": "failed" if problems else "passed", **({"problems": problems} if problems else {}), **record}


def attention_graph_replay(q, k, v, eager: torch.Tensor, device: torch.device) -> dict:
    """cuDNN SDPA captured into a CUDA graph: does it capture, and does the replay equal the eager call?"""
    try:
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            stream = torch.cuda.Stream(device)
            stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(stream):
                F.scaled_dot_product_attention(q, k, v)
            torch.cuda.current_stream(device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = F.scaled_dot_product_attention(q, k, v)
        graph.replay()
        sync(device)
    except RuntimeError as exc:
        return {"captured": False, "error": first_line(exc)}
    return {"captured": True, "bit_identical": bool(torch.equal(out, eager)), "rel_l2_vs_eager": rel_l2(out, eager)}


# --- 5. FP8 steady peak memory --------------------------------------------------------------------------


def steady_peak(engine: StrippedEngine, x: torch.Tensor, size: tuple[int, int], device: torch.device) -> tuple:
    """Peak memory of one run after a warm-up run, gc and ``empty_cache``; returns (record, maps)."""
    with torch.inference_mode():
        engine.run(x, size)  # warm-up: cuBLAS/cuDNN workspaces and plans are made here, not in the measured run
        sync(device)
        free(device)
        if on_cuda(device):
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        with PeakMemory(device) as memory:
            maps = clone_maps(engine.run(x, size))
        seconds = time.perf_counter() - start
    record = {
        "peak_bytes": memory.peak,
        "before_bytes": memory.baseline,
        "run_s": seconds,
        "torch_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if on_cuda(device) else None,
    }
    return record, maps


def check_fp8_memory(config: ModelConfig, label: str, size: tuple[int, int], device: torch.device, seed: int) -> dict:
    """Steady peak memory of the stripped BF16 model, then of the same model after per-row FP8: FP8 must be lower."""
    cuda = on_cuda(device)
    # 1. the stripped BF16 model and its eager engine
    free(device)
    model = build_stripped(config, label, seed, device)
    engine = StrippedEngine(model, EngineOptions(device=str(device), processing_res=size))
    x = scene_input(size, seed, device)
    # 2. BF16: steady peak of one run
    bf16, bf16_maps = steady_peak(engine, x, size, device)
    # 3. per-row FP8 (torchao's PerRow recipe) on the quantisable linears, in place; the BF16 weights are freed
    names = list(quantizable_linears(model.dit, DEFAULT_EXCLUDE))
    linear_bytes = linear_weight_bytes(model.dit, names)
    quantize_dit_rowwise(model.dit, names)
    free(device)
    # 4. FP8: steady peak of one run
    fp8, fp8_maps = steady_peak(engine, x, size, device)
    engine.close()
    del engine, model
    saving = bf16["peak_bytes"] - fp8["peak_bytes"]
    record = {
        "resolution": f"{size[0]}x{size[1]}",
        "model": describe(config),
        "memory_kind": PeakMemory(device).kind,
        "bf16": bf16,
        "fp8": fp8,
        "fp8_below_bf16": fp8["peak_bytes"] < bf16["peak_bytes"],
        "saving_bytes": saving,
        "quantised_linears": len(names),
        "expected_saving_bytes": linear_bytes // 2,  # BF16 -> E4M3 weights (scales are ~1/K of them)
        "fp8_vs_bf16_maps": compare_maps(fp8_maps, bf16_maps),
        # CPU: FP8 layers dequantise their weight to BF16 at every call (transient copies, counted in the RSS)
        "fp8_gemm": "scaled_mm" if fp8_gemm_device(device) else "dequantized",
        "summary": (
            f"peak BF16 {bf16['peak_bytes'] / 2**30:.2f} GiB, FP8 {fp8['peak_bytes'] / 2**30:.2f} GiB "
            f"(saved {saving / 2**20:.0f} MiB, expected ~{linear_bytes / 2**21:.0f})"
        ),
    }
    if not cuda:
        reason = f"{NEEDS_CUDA}: pass/fail on device-wide GPU memory only (RSS reported here)"
        return {"status": "skipped", "reason": reason, **record}
    if linear_bytes // 2 < MIN_MEMORY_SAVING:
        reason = f"the FP8 saving (~{linear_bytes / 2**21:.1f} MiB) is below what device-wide memory resolves"
        return {"status": "skipped", "reason": reason, **record}
    return {"status": "passed" if record["fp8_below_bf16"] else "failed", **record}


# --- the run --------------------------------------------------------------------------------------------


def mid_config(settings: CheckSettings, device: torch.device) -> tuple[ModelConfig, str] | None:
    """The mid-size config and its label, or None (``--preset-mid none``)."""
    if settings.mid is None or str(settings.mid).lower() == "none":
        return None
    if settings.mid == "builtin":
        return (MID_CONFIG, "mid") if on_cuda(device) else (MID_CPU_CONFIG, "mid-cpu")
    return load_model_config(settings.mid), str(settings.mid)


def plan(settings: CheckSettings, device: torch.device, work: Path) -> list[Task]:
    """The records to measure, in order (cheap checks first)."""
    cuda, seed = on_cuda(device), settings.seed
    tiny = PRESETS["tiny"]
    mid = mid_config(settings, device)
    big, big_label = mid or (tiny, "tiny")
    big_size = FULL_RES if cuda and mid else ((128, 96) if mid else (64, 48))
    full = settings.gemm_shapes == "full" or (settings.gemm_shapes == "auto" and cuda)
    tasks: list[Task] = []
    for check in settings.checks:
        estimate = CUDA_ESTIMATES[check] if cuda else 0.0
        if check == "scaled_mm":
            m = GEMM_TOKENS if full else REDUCED_TOKENS
            config = "step1x-edit" if full else f"step1x-edit K,N/{REDUCED_DIVISOR}, M={m}"
            for name, (k, n) in GEMM_SHAPES.items():
                k, n = (k, n) if full else (k // REDUCED_DIVISOR, n // REDUCED_DIVISOR)
                fn = partial(check_scaled_mm, name, k, n, m, device, seed)
                tasks.append(Task(check, name, config, fn, estimate))
        elif check == "cudnn_attention":
            d = FULL.dit
            heads, tokens, dim = (d.num_heads, GEMM_TOKENS, d.head_dim) if cuda else (2, 256, 64)
            fn = partial(check_attention, heads, tokens, dim, device, seed)
            tasks.append(Task(check, f"{heads}x{tokens}x{dim}", "step1x-edit" if cuda else "small", fn, estimate))
        elif check == "fp8_memory":
            configs = [(big, big_label, big_size)]
            if not cuda and mid:
                configs.insert(0, (tiny, "tiny", (64, 48)))
            for config, label, size in configs:
                fn = partial(check_fp8_memory, config, label, size, device, seed)
                tasks.append(Task(check, f"{size[0]}x{size[1]}", label, fn, estimate))
        elif check == "cuda_graph":
            config, label, size = (big, big_label, big_size) if cuda else (tiny, "tiny", (64, 48))
            fn = partial(check_cuda_graph, config, label, size, device, seed, settings.compile_mode)
            tasks.append(Task(check, f"{size[0]}x{size[1]}", label, fn, estimate))
        elif check == "aoti":
            precisions = settings.aoti_precisions or (("fp8", "bf16") if cuda else ("fp8",))
            size = (64, 48) if cuda else (32, 32)
            for precision in precisions:
                fn = partial(check_aoti, precision, size, device, seed, work)
                tasks.append(Task(check, precision, "tiny", fn, estimate))
    return tasks


def run_task(task: Task, device: torch.device, seed: int, log: Callable[[str], object]) -> dict:
    """One check, guarded: an exception becomes a failed record (its first line), the traceback goes to the log."""
    torch.manual_seed(seed)  # every input is drawn from its own seeded generator; this covers the rest
    start = time.perf_counter()
    try:
        result = task.fn()
    except Exception as exc:  # a failing check never stops the others
        log(traceback.format_exc().rstrip())
        result = {"status": "failed", "error": first_line(exc)}
    finally:
        free(device)
        if task.check == "cuda_graph":
            torch._dynamo.reset()  # the compiled blocks hold the model's weights
    seconds = round(time.perf_counter() - start, 2)
    return {"check": task.check, "variant": task.variant, "config": task.config, **result, "seconds": seconds}


def run_checks(
    settings: CheckSettings, json_path: str | Path | None = None, log: Callable[[str], object] = print
) -> list[dict]:
    """Run the checks of ``settings``; returns the records (also appended to ``json_path`` as measured)."""
    # 1. settings, device, output
    settings.validate()
    device = torch.device(resolve_device(settings.device))
    budget = settings.budget if settings.budget is not None else (CUDA_BUDGET if on_cuda(device) else None)
    out = JsonLines(json_path)
    name = device_name(device)
    common = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "fe2e_deploy": __version__}
    common["measured_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    limit = f"{budget:.0f} s" if budget is not None else "none"
    log(f"device checks on {name}: torch {torch.__version__}, CUDA {torch.version.cuda}, seed {settings.seed}")
    log(f"budget {limit}, mid config {settings.mid}, checks {', '.join(settings.checks)}")
    if on_cuda(device):
        capability = torch.cuda.get_device_capability(device)
        log(f"compute capability {capability}, dense BF16 peak {bf16_peak_tflops(name)} TFLOP/s")
    work = Path(settings.work) if settings.work is not None else Path(tempfile.mkdtemp(prefix="fe2e_checks_"))
    work.mkdir(parents=True, exist_ok=True)
    # 2. each task in turn, within the budget
    start = time.perf_counter()
    records: list[dict] = []
    measured: dict[str, float] = {}
    try:
        for task in plan(settings, device, work):
            left = None if budget is None else budget - (time.perf_counter() - start)
            need = measured.get(task.check, task.estimate_s)
            record = {"check": task.check, "variant": task.variant, "config": task.config}
            if left is not None and need > left:
                reason = f"skipped: time budget (needs about {need:.0f} s, {max(left, 0):.0f} s left of {budget:.0f})"
                record |= {"status": "skipped", "reason": reason, "seconds": 0.0}
            else:
                log(f"-- {task.check} {task.variant} ({task.config}) ...")
                task_start = time.perf_counter()
                try:
                    record = run_task(task, device, settings.seed, log)
                except Killed:  # the time limit: say which check it cut off, then stop
                    seconds = round(time.perf_counter() - task_start, 2)
                    reason = f"skipped: killed at the time limit after {seconds:.0f} s in this check"
                    record |= {"status": "skipped", "reason": reason, "seconds": seconds, **common}
                    out.write(record)
                    records.append(record)
                    log(format_record(record))
                    raise
                measured[task.check] = record["seconds"]
            record |= common
            out.write(record)
            records.append(record)
            log(format_record(record))
    finally:
        if settings.work is None:
            shutil.rmtree(work, ignore_errors=True)
        # 3. the summary (also of a run cut off by the time limit)
        log(format_table(records))
    return records


def format_record(record: dict) -> str:
    """One record on one line (for the log)."""
    why = record.get("error") or "; ".join(record.get("problems", [])) or record.get("reason", "")
    text = f"{record['check']:<16} {record['variant']:<10} {record['status']:<8} {record['seconds']:7.1f} s  "
    return text + "  ".join(p for p in (record.get("summary", ""), why) if p)


def format_table(records: list[dict]) -> str:
    """The summary table of the records, and the count per status."""
    head = ["check", "variant", "config", "status", "s", "result"]
    rows = [
        [
            r["check"],
            r["variant"],
            r["config"],
            r["status"],
            f"{r.get('seconds', 0):.1f}",
            r.get("error") or r.get("summary") or r.get("reason", ""),
        ]
        for r in records
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)][:-1]
    lines = []
    for line in [head, *rows]:
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1])
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    counts = {s: sum(r["status"] == s for r in records) for s in ("passed", "failed", "skipped")}
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items()) + f" of {len(records)} records")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fe2e_deploy.device_checks", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for checks.jsonl and checks_table.txt")
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--preset-mid", default="builtin", help="builtin, a preset, a model_config.json, or none")
    parser.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {', '.join(CHECKS)}")
    parser.add_argument("--budget", type=float, help=f"seconds for all checks (default {CUDA_BUDGET:.0f} on CUDA)")
    parser.add_argument("--gemm-shapes", default="auto", help="full, reduced (K,N/16, M=32) or auto")
    parser.add_argument("--compile-mode", default=GRAPH_COMPILE_MODE, help="torch.compile mode of the CUDA graph check")
    parser.add_argument("--aoti-precisions", help="comma-separated (default fp8,bf16 on CUDA, fp8 on a CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep stripped models and packages here (default: temporary)")
    parser.add_argument("--summary", type=Path, metavar="JSONL", help="only print the table of a checks.jsonl")
    args = parser.parse_args(argv)
    if args.summary is not None:
        records = read_records(args.summary)
        print(format_table(records))
        return 1 if any(r.get("status") == "failed" for r in records) else 0
    if args.out is None:
        parser.error("--out is required (or --summary JSONL)")
    settings = CheckSettings(
        device=args.device,
        mid=None if args.preset_mid.lower() == "none" else args.preset_mid,
        checks=tuple(c.strip() for c in args.checks.split(",") if c.strip()),
        seed=args.seed,
        budget=args.budget,
        gemm_shapes=args.gemm_shapes,
        compile_mode=args.compile_mode,
        aoti_precisions=tuple(args.aoti_precisions.split(",")) if args.aoti_precisions else None,
        work=args.work,
    )
    try:
        settings.validate()
    except ValueError as exc:
        parser.error(str(exc))
    args.out.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        records = run_checks(settings, args.out / "checks.jsonl")
    except Killed:
        records = read_records(args.out / "checks.jsonl")
        (args.out / "checks_table.txt").write_text(format_table(records) + "\n")
        return 124
    finally:
        signal.signal(signal.SIGTERM, previous)
    (args.out / "checks_table.txt").write_text(format_table(records) + "\n")
    return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
