"""Peak memory of FP8 quantisation against the BF16 model alone, on the CPU (resident set size).

    python scripts/fp8_quantize_memory.py --recipe row      # per-row dynamic (fp8-row engines)
    python scripts/fp8_quantize_memory.py --recipe tensor   # per-tensor static (FP8 exports, AOTI, fp8-tensor)

Builds a stripped BF16 DiT from seeded random weights in memory (full-size width 3072, fewer blocks:
the real layer shapes), lets the allocator settle, then samples the process's RSS every millisecond
while the DiT's Linears are quantised. Prints one JSON object: the BF16 model's bytes, its largest
Linear's bytes, RSS before (the BF16 model alone and everything else the process holds), the peak
during quantisation, RSS after, and the peak's excess over "before" in units of the largest layer.
Target (issue 32): the excess stays within one layer (``excess_over_largest_layer <= 1``).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import time

import torch

from fe2e_deploy.artifacts.scales import DEFAULT_EXCLUDE, LayerScales
from fe2e_deploy.config import ConnectorConfig, DiTConfig, ModelConfig, VAEConfig
from fe2e_deploy.memory import PeakMemory, memory_in_use
from fe2e_deploy.models.fp8 import E4M3_MAX, quantize_dit, quantize_dit_rowwise
from fe2e_deploy.quantize.calibrate import quantizable_linears
from fe2e_deploy.strip import strip_in_memory
from fe2e_deploy.synthetic import SyntheticModel


def settle() -> int:
    """Collect garbage and hand freed heap pages back to the OS (glibc), then the RSS in bytes."""
    gc.collect()
    with contextlib.suppress(OSError):  # not glibc: RSS may keep freed pages
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return memory_in_use(torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", choices=("row", "tensor"), default="row")
    parser.add_argument("--hidden", type=int, default=3072, help="DiT width (3072: the full-size layer shapes)")
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--double", type=int, default=1, help="double-stream blocks")
    parser.add_argument("--single", type=int, default=2, help="single-stream blocks")
    args = parser.parse_args()
    torch.manual_seed(0)

    # 1. A mid-size config: full-width layers, few blocks, small connector and VAE (they are not quantised).
    config = ModelConfig(
        dit=DiTConfig(
            context_in_dim=256, hidden_size=args.hidden, num_heads=args.heads, depth=args.double,
            depth_single_blocks=args.single,
        ),
        connector=ConnectorConfig(in_channels=64, hidden_size=256, heads_num=2, depth=1),
        vae=VAEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1),
    )  # fmt: skip
    synth = SyntheticModel.create("tiny", seed=0)
    synth = SyntheticModel(config, "mid-3072", 0, synth.device)
    model = strip_in_memory(synth.dit, synth.prompt(), synth.vae, config, dtype=torch.bfloat16)
    linears = quantizable_linears(model.dit, DEFAULT_EXCLUDE)
    names = list(linears)
    bf16_bytes = sum(p.numel() * p.element_size() for p in model.dit.parameters())
    params = sum(p.numel() for p in model.dit.parameters())
    largest = max(m.weight.numel() * m.weight.element_size() for m in linears.values())
    # 2. Per-tensor scales from the weights' own amax and a unit input range (values do not matter for memory).
    scales = {}
    for n, m in linears.items():
        w_amax = float(m.weight.abs().amax())
        scales[n] = LayerScales(1.0 / E4M3_MAX, w_amax / E4M3_MAX, input_amax=1.0, weight_amax=w_amax)
    del linears
    before = settle()

    # 3. Quantise, sampling the RSS.
    started = time.perf_counter()
    with PeakMemory("cpu", interval=0.001) as memory:
        if args.recipe == "row":
            quantize_dit_rowwise(model.dit, names)
        else:
            quantize_dit(model.dit, scales)
    seconds = time.perf_counter() - started
    after = settle()
    excess = memory.peak - before
    print(
        json.dumps(
            {
                "recipe": args.recipe,
                "torch": torch.__version__,
                "dit_params": params,
                "linears": len(names),
                "bf16_dit_bytes": bf16_bytes,
                "largest_layer_bytes": largest,
                "rss_before_bytes": before,
                "rss_peak_bytes": memory.peak,
                "rss_after_bytes": after,
                "peak_excess_bytes": excess,
                "excess_over_largest_layer": excess / largest,
                "seconds": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
