"""A peft adapter on our diffusers DiT -> FE2E's kohya LoRA file (official module names).

A fused official Linear (qkv, single ``linear1``) gets one kohya pair built from its parts:
``down = [A_q; A_k; A_v]`` and ``up = blockdiag(s_q B_q, s_k B_k, s_v B_v)`` with ``alpha`` equal
to the total rank, so ``(alpha / rank) * up @ down`` is exactly the per-part deltas stacked by rows.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import ModelConfig
from ..files.atomic import atomic_write
from ..loading.checkpoint import CheckpointError
from ..loading.dit_layout import dit_layout, lora_target_modules
from ..lora import PREFIX


def kohya_modules(modules: list[str], config: ModelConfig) -> dict[str, str]:
    """Diffusers module names (under ``transformer.``) -> the official block Linear holding each (its kohya name)."""
    layout = dit_layout(config)
    block_linears = set(lora_target_modules(config))
    owner = {t.removesuffix(".weight"): rule for rule in layout.rules.values() for t in rule.targets}
    found = {}
    for module in modules:
        rule = owner.get(f"transformer.{module}")
        official = rule.official.removesuffix(".weight") if rule else None
        if official not in block_linears:
            raise CheckpointError(f"LoRA module {module!r} has no kohya name in FE2E's format (only block Linears)")
        found[module] = official
    return found


def peft_to_kohya(adapter: dict[str, tuple[torch.Tensor, torch.Tensor, float]], config: ModelConfig, out: Path) -> Path:
    """``adapter``: diffusers module name (under ``transformer.``) -> (A, B, scale). Writes ``out``."""
    layout = dit_layout(config)
    by_official: dict[str, dict[str, tuple]] = {}
    for module, official in kohya_modules(list(adapter), config).items():
        by_official.setdefault(official, {})[f"transformer.{module}.weight"] = adapter[module]
    tensors = {}
    for official, parts in sorted(by_official.items()):
        rule = layout.rules[official + ".weight"]
        downs, ups = [], []
        for target in rule.targets:
            out_f, in_f = layout.params[target]
            if target in parts:
                a, b, scale = parts[target]
                downs.append(a.float())
                ups.append((scale * b.float(), a.shape[0]))
            else:
                ups.append((torch.zeros(out_f, 0), 0))
        down = torch.cat(downs)
        up = torch.zeros(sum(u.shape[0] for u, _ in ups), down.shape[0])
        row = col = 0
        for block, rank in ups:
            up[row : row + block.shape[0], col : col + rank] = block
            row, col = row + block.shape[0], col + rank
        stem = PREFIX + official.replace(".", "_")
        tensors[f"{stem}.lora_down.weight"] = down.contiguous()
        tensors[f"{stem}.lora_up.weight"] = up.contiguous()
        tensors[f"{stem}.alpha"] = torch.tensor(float(down.shape[0]))
    return atomic_write(out, lambda p: save_file(tensors, str(p), metadata={"format": "pt", "source": "train-lora"}))
