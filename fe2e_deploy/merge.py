"""``merge-lora``: a LoRA merged into the official DiT checkpoint, streamed tensor by tensor.

Two LoRA sources, both turned into one FP32 delta per official weight:

- FE2E's kohya file (``lora_unet_<official module>.lora_down/.lora_up/.alpha``): the delta is
  ``(alpha / rank) * up @ down`` on the official (fused) weight.
- a peft adapter directory (``adapter_config.json`` + ``adapter_model.safetensors``) trained on our
  diffusers model (``train-lora`` writes these): each diffusers Linear's delta
  ``(lora_alpha / r) * B @ A`` is placed where the checkpoint layout puts that Linear in the official
  tensor (rows of the fused qkv / ``linear1``, the halves of the final adaLN swapped back).

The merged weight is ``W + multiplier * delta`` computed in FP32 and cast back to W's dtype. One
source tensor (plus its delta) is in memory at a time; the output is written with the streaming
writer, atomically, optionally in shards with a Hugging Face style ``.index.json``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import load_peft_weights
from tqdm import tqdm

from . import __version__
from .atomic import atomic_write
from .config import ModelConfig
from .loading.checkpoint import CheckpointError, check_names_and_shapes, open_safetensors
from .loading.dit_layout import dit_layout
from .loading.writer import SafetensorsWriter
from .lora import read_kohya_lora

PEFT_PREFIXES = ("base_model.model.", "transformer.")


@dataclass
class MergeItem:
    """The delta for one official weight tensor."""

    weight: str  # official tensor name, e.g. double_blocks.0.img_attn.qkv.weight
    sources: list[str]  # LoRA module names that contribute
    ranks: list[int]
    scales: list[float]
    compute: Callable[[], torch.Tensor]  # FP32 delta of the official shape (without the multiplier)


def kohya_items(path: str | Path, config: ModelConfig) -> dict[str, MergeItem]:
    """FE2E's kohya file: one pair per official module (names and shapes checked by read_kohya_lora)."""
    items = {}
    for module, pair in read_kohya_lora(path, config).items():
        items[module + ".weight"] = MergeItem(
            module + ".weight", [module], [pair.rank], [pair.scale], lambda p=pair: p.delta()
        )
    return items


def _peft_scale(module: str, rank: int, cfg: LoraConfig) -> float:
    alpha = cfg.lora_alpha
    for pattern, value in (cfg.alpha_pattern or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = value
    return alpha / (rank**0.5 if cfg.use_rslora else rank)


def peft_items(folder: str | Path, config: ModelConfig) -> dict[str, MergeItem]:
    """A peft adapter folder on our diffusers DiT, mapped onto the official weights by the layout."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise CheckpointError(f"{folder}: not a peft adapter folder (no adapter_config.json)")
    try:
        cfg = LoraConfig.from_pretrained(str(folder))
        state = load_peft_weights(str(folder), device="cpu")
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder}: unreadable peft adapter ({exc})") from exc
    layout = dit_layout(config)
    owner = {t: rule for rule in layout.rules.values() for t in rule.targets}  # model param -> official rule
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        match = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if match is None:
            raise CheckpointError(f"{folder}: tensor {key!r} is not a LoRA A/B weight")
        module = match.group(1)
        for prefix in PEFT_PREFIXES:
            module = module.removeprefix(prefix)
        pairs.setdefault(module, {})[match.group(2)] = tensor.float()
    by_weight: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor, float, str]]] = {}
    for module, ab in sorted(pairs.items()):
        target = f"transformer.{module}.weight"
        rule = owner.get(target)
        if rule is None or not target.startswith("transformer."):
            raise CheckpointError(f"{folder}: LoRA module {module!r} matches no Linear of the DiT")
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{folder}: LoRA module {module!r} lacks lora_{'A' if 'A' not in ab else 'B'}")
        a, b = ab["A"], ab["B"]
        out_f, in_f = layout.params[target]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1] or a.shape[1] != in_f or b.shape[0] != out_f:
            raise CheckpointError(
                f"{folder}: {module}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit "
                f"its weight [{out_f}, {in_f}] (an adapter for another model or config?)"
            )
        by_weight.setdefault(rule.official, {})[target] = (a, b, _peft_scale(module, a.shape[0], cfg), module)
    items = {}
    for official, parts in by_weight.items():
        rule = layout.rules[official]

        def compute(rule=rule, parts=parts) -> torch.Tensor:
            pieces = []
            for target in rule.targets:
                if target in parts:
                    a, b, scale, _ = parts[target]
                    pieces.append((b @ a).mul_(scale))
                else:
                    pieces.append(torch.zeros(tuple(layout.params[target])))
            return rule.join(pieces)

        mods = [p[3] for p in parts.values()]
        items[official] = MergeItem(
            official, mods, [p[0].shape[0] for p in parts.values()], [p[2] for p in parts.values()], compute
        )
    if not items:
        raise CheckpointError(f"{folder}: the adapter holds no LoRA weights")
    return items


def read_lora_items(path: str | Path, config: ModelConfig) -> dict[str, MergeItem]:
    """A kohya ``.safetensors`` file or a peft adapter folder."""
    path = Path(path)
    if path.is_dir():
        return peft_items(path, config)
    if not path.exists():
        raise CheckpointError(f"{path}: LoRA not found")
    return kohya_items(path, config)


def parse_size(text: str) -> int:
    """``"5GB"``, ``"500MB"``, ``"2GiB"`` or bytes -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"size {text!r} is not like 5GB, 500MB or 2GiB")
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    units |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    return int(float(match.group(1)) * units[(match.group(2) or "").upper()])


@dataclass
class MergeReport:
    out: Path
    merged: list[MergeItem]
    files: list[Path] = field(default_factory=list)
    dry_run: bool = False


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def merge_lora(
    dit_path: str | Path,
    lora_path: str | Path,
    out: str | Path,
    config: ModelConfig,
    multiplier: float = 1.0,
    max_shard_size: int | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> MergeReport:
    """Write ``base + multiplier * LoRA`` in the official format (see the module docstring)."""
    out = Path(out)
    items = read_lora_items(lora_path, config)
    official = dit_layout(config).official_shapes()
    with open_safetensors(dit_path) as handle:
        check_names_and_shapes(dit_path, handle, official, "DiT checkpoint")
        dtypes = {name: handle.get_slice(name).get_dtype() for name in official}
    odd = sorted(n for n, code in dtypes.items() if code not in FLOAT_CODES)
    if odd:
        raise CheckpointError(f"{dit_path}: tensor {odd[0]} has dtype {dtypes[odd[0]]}, expected a float type")
    report = MergeReport(out, [items[n] for n in sorted(items)], dry_run=dry_run)
    if dry_run:
        return report
    shards = _plan_shards(dit_path, official, max_shard_size)
    names = (
        [out]
        if len(shards) == 1
        else [out.with_name(f"{out.stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors") for i in range(len(shards))]
    )
    index = out.with_name(out.name + ".index.json") if len(shards) > 1 else None
    for path in [*names, *([index] if index else [])]:
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path}: exists (pass --overwrite to replace it)")
    metadata = {
        "format": "pt",
        "fe2e_deploy": __version__,
        "merged_from": str(dit_path),
        "lora": str(lora_path),
        "lora_sha256": _sha256(Path(lora_path)) if Path(lora_path).is_file() else "peft-adapter-dir",
        "multiplier": repr(multiplier),
    }
    bar = tqdm(total=len(official), desc="merge-lora", unit="tensor", disable=not progress)
    with open_safetensors(dit_path) as handle:
        for path, shard in zip(names, shards, strict=True):
            with handle_writer(path, shard, handle, metadata) as writer:
                for name in shard:
                    tensor = handle.get_tensor(name)
                    if name in items:
                        # ``tensor`` may be backed by the (copy-on-write) memory map: never write into it,
                        # else the touched pages stay as private memory until the file is closed.
                        merged = tensor.to(torch.float32, copy=True).add_(items[name].compute(), alpha=multiplier)
                        tensor = merged.to(tensor.dtype)
                    writer.write(name, tensor)
                    bar.update()
            report.files.append(path)
    bar.close()
    if index is not None:
        weight_map = {name: path.name for path, shard in zip(names, shards, strict=True) for name in shard}
        total = sum(torch.Size(official[n]).numel() * _itemsize(dtypes[n]) for n in official)
        body = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
        atomic_write(index, lambda p: p.write_text(json.dumps(body, indent=2) + "\n"))
        report.files.append(index)
    return report


FLOAT_CODES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _itemsize(code: str) -> int:
    return FLOAT_CODES[code].itemsize


def _plan_shards(dit_path, official: dict[str, tuple[int, ...]], max_shard_size: int | None) -> list[list[str]]:
    """Tensor names per shard, in sorted order, each shard at most ``max_shard_size`` bytes (one tensor minimum)."""
    with open_safetensors(dit_path) as handle:
        sizes = {n: torch.Size(official[n]).numel() * _itemsize(handle.get_slice(n).get_dtype()) for n in official}
    shards, current, used = [], [], 0
    for name in sorted(official):
        if current and max_shard_size is not None and used + sizes[name] > max_shard_size:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += sizes[name]
    return [*shards, current]


def handle_writer(path: Path, names: list[str], handle, metadata: dict[str, str]) -> SafetensorsWriter:
    """A streaming writer declaring ``names`` with the base checkpoint's dtypes and shapes."""
    specs = {}
    for name in names:
        info = handle.get_slice(name)
        specs[name] = (FLOAT_CODES[info.get_dtype()], tuple(info.get_shape()))
    return SafetensorsWriter(path, specs, metadata)
