"""``merge-lora``: a LoRA merged into the official DiT checkpoint, streamed tensor by tensor.

Two LoRA sources, both turned into one FP32 delta per official weight:

- FE2E's kohya file (``lora_unet_<official module>.lora_down/.lora_up/.alpha``): the delta is
  ``(alpha / rank) * up @ down`` on the official (fused) weight.
- a peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``), as ``train-lora``
  writes it. Module names may be those of our diffusers DiT (``transformer_blocks.0.attn.to_q``, what
  ``train-lora`` trains; an optional ``base_model.model.`` / ``transformer.`` prefix is ignored) or the
  official ones (``double_blocks.0.img_attn.qkv``, e.g. peft on the official Step1X-Edit code). A
  diffusers Linear's delta ``(lora_alpha / r) * B @ A`` is placed where the checkpoint layout puts that
  Linear in the official tensor (rows of the fused qkv / ``linear1``, halves of the final adaLN swapped).

The merged weight is ``W + multiplier * delta`` computed in FP32 and cast back to W's dtype, except for
an FP8-stored base (the official ``step1x-edit-i1258-FP8.safetensors``): its tensors are all written in
BF16, the untouched ones exactly (E4M3 is a subset of BF16), the merged ones rounded once to BF16, as
when merging into the BF16 release. Rounding ``W + delta`` back to E4M3 (3 mantissa bits, what the
official ``--quantized`` code does) would lose most of a LoRA's small delta; the output's metadata says
``upcast: F8_E4M3 -> BF16``. The LoRA files are checked from their headers; one base tensor and the LoRA
pair(s) of that tensor are in memory at a time. The output is written with the streaming writer,
atomically, optionally in shards with a Hugging Face style index (``OUT.index.json`` +
``OUT-<run>-00001-of-0000N.safetensors``) that ``fe2e_deploy.loading.open_safetensors`` / ``load_dit``
read like a single file. Shard names are unique to the run and the index is written last, so a sharded
output is replaced whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from tqdm import tqdm

from . import __version__
from .config import ModelConfig
from .errors import InvalidInput
from .files.atomic import install_file, refuse_existing, remove_stale_temps, temp_sibling, write_json
from .loading.checkpoint import CheckpointError, check_names_and_shapes, open_safetensors, storage_dtypes
from .loading.dit_layout import dit_layout
from .loading.dtypes import FP8_DTYPES, FP8_UPCAST, code_of, usable_dtype
from .loading.writer import SafetensorsWriter
from .lora import KohyaEntry, check_multiplier, index_kohya_lora, read_kohya_pair

PEFT_PREFIXES = ("base_model.model.", "transformer.")
PEFT_WEIGHTS = "adapter_model.safetensors"


@dataclass
class MergeItem:
    """The delta for one official weight tensor."""

    weight: str  # official tensor name, e.g. double_blocks.0.img_attn.qkv.weight
    shape: tuple[int, ...]  # of the official weight
    sources: list[str]  # LoRA module names that contribute
    ranks: list[int]
    alphas: list[float]
    compute: Callable[[], torch.Tensor]  # FP32 delta of the official shape (without the multiplier)


def kohya_items(path: str | Path, config: ModelConfig) -> dict[str, MergeItem]:
    """FE2E's kohya file, checked from its header (``lora.index_kohya_lora``); pairs are read when merged."""
    with open_safetensors(path) as handle:
        entries = index_kohya_lora(path, handle, config)

    def compute(entry: KohyaEntry) -> torch.Tensor:
        with open_safetensors(path) as fh:
            return read_kohya_pair(fh, entry).delta()

    return {
        e.module + ".weight": MergeItem(
            e.module + ".weight", e.shape, [e.module], [e.rank], [e.alpha], lambda e=e: compute(e)
        )
        for e in entries.values()
    }


def _peft_alpha(module: str, cfg: LoraConfig) -> float:
    """``lora_alpha``, or the ``alpha_pattern`` entry matching ``module`` (peft's suffix rule)."""
    alpha = cfg.lora_alpha
    for pattern, value in (cfg.alpha_pattern or {}).items():
        if re.fullmatch(rf"(.*\.)?({pattern})", module):
            alpha = value
    return float(alpha)


def _read_peft_config(folder: Path) -> LoraConfig:
    if not (folder / "adapter_config.json").is_file():
        raise CheckpointError(f"{folder}: not a peft adapter folder (no adapter_config.json)")
    if not (folder / PEFT_WEIGHTS).is_file():
        raise CheckpointError(f"{folder}: no {PEFT_WEIGHTS} (merge-lora reads safetensors adapters only)")
    try:
        cfg = LoraConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder}: unreadable adapter_config.json ({exc})") from exc
    if getattr(cfg, "use_dora", False):
        raise CheckpointError(f"{folder}: DoRA adapters are not supported (plain LoRA only)")
    return cfg


def peft_items(folder: str | Path, config: ModelConfig) -> dict[str, MergeItem]:
    """A peft adapter folder (diffusers or official module names), mapped onto the official weights."""
    folder = Path(folder)
    cfg = _read_peft_config(folder)
    weights = folder / PEFT_WEIGHTS
    layout = dit_layout(config)
    official = layout.official_shapes()
    owner = {t: rule for rule in layout.rules.values() for t in rule.targets}  # model param -> official rule
    with open_safetensors(weights) as handle:
        keys = {key: tuple(handle.get_slice(key).get_shape()) for key in sorted(handle.keys())}  # noqa: SIM118
    pairs: dict[str, dict[str, str]] = {}
    for key in keys:
        match = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if match is None:
            raise CheckpointError(f"{weights}: tensor {key!r} is not a LoRA A/B weight")
        module = match.group(1)
        for prefix in PEFT_PREFIXES:
            module = module.removeprefix(prefix)
        pairs.setdefault(module, {})[match.group(2)] = key
    # official weight -> {model parameter (or the official weight itself): (A key, B key, alpha, module)}
    by_weight: dict[str, dict[str, tuple[str, str, float, str]]] = {}
    for module, ab in sorted(pairs.items()):
        target = f"transformer.{module}.weight"
        if target in owner:
            rule, shape = owner[target], tuple(layout.params[target])
        elif f"{module}.weight" in official and len(official[f"{module}.weight"]) == 2:
            rule, target, shape = layout.rules[f"{module}.weight"], f"{module}.weight", official[f"{module}.weight"]
        else:
            raise CheckpointError(
                f"{weights}: LoRA module {module!r} matches no Linear of the DiT (neither a module of our "
                "diffusers model nor an official name; an adapter for another model?)"
            )
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{weights}: LoRA module {module!r} lacks lora_{'A' if 'A' not in ab else 'B'}")
        a, b = keys[ab["A"]], keys[ab["B"]]
        out_f, in_f = shape
        if len(a) != 2 or len(b) != 2 or a[0] != b[1] or a[1] != in_f or b[0] != out_f:
            raise CheckpointError(
                f"{weights}: {module}: lora_A {list(a)} / lora_B {list(b)} do not fit its weight "
                f"[{out_f}, {in_f}] (an adapter for another model or config?)"
            )
        parts = by_weight.setdefault(rule.official, {})
        if rule.official in parts or (parts and target == rule.official):
            raise CheckpointError(f"{weights}: {rule.official} is adapted under both official and diffusers names")
        parts[target] = (ab["A"], ab["B"], _peft_alpha(module, cfg), module)
    if not by_weight:
        raise CheckpointError(f"{weights}: the adapter holds no LoRA weights")
    rslora = bool(getattr(cfg, "use_rslora", False))

    def delta(fh, a_key: str, b_key: str, alpha: float) -> torch.Tensor:
        a, b = fh.get_tensor(a_key).float(), fh.get_tensor(b_key).float()
        return (b @ a).mul_(alpha / (a.shape[0] ** 0.5 if rslora else a.shape[0]))

    items = {}
    for name, parts in by_weight.items():
        rule = layout.rules[name]

        def compute(rule=rule, parts=parts) -> torch.Tensor:
            with open_safetensors(weights) as fh:
                if rule.official in parts:
                    return delta(fh, *parts[rule.official][:3])
                pieces = [
                    delta(fh, *parts[t][:3]) if t in parts else torch.zeros(tuple(layout.params[t]))
                    for t in rule.targets
                ]
            return rule.join(pieces)

        ranks = [keys[p[0]][0] for p in parts.values()]
        alphas = [p[2] for p in parts.values()]
        items[name] = MergeItem(name, official[name], [p[3] for p in parts.values()], ranks, alphas, compute)
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
        raise InvalidInput(f"size {text!r} is not like 5GB, 500MB or 2GiB")
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
    *,
    multiplier: float = 1.0,
    max_shard_size: int | None = None,
    dry_run: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> MergeReport:
    """Write ``base + multiplier * LoRA`` in the official format (see the module docstring)."""
    check_multiplier(multiplier)
    out = Path(out)
    items = read_lora_items(lora_path, config)
    official = dit_layout(config).official_shapes()
    with open_safetensors(dit_path) as handle:
        check_names_and_shapes(dit_path, handle, official, "DiT checkpoint")
        stored = storage_dtypes(dit_path, handle, official)
    report = MergeReport(out, [items[n] for n in sorted(items)], dry_run=dry_run)
    if dry_run:
        return report
    dtypes = {name: usable_dtype(dtype) for name, dtype in stored.items()}  # of the output: FP8 -> BF16
    shards = _plan_shards(official, dtypes, max_shard_size)
    index = out.with_name(out.name + ".index.json")
    if not overwrite:
        refuse_existing(out, index)  # either form of this output; checked again when the new one is renamed in
    lora_file = Path(lora_path) / PEFT_WEIGHTS if Path(lora_path).is_dir() else Path(lora_path)
    metadata = {
        "format": "pt",
        "fe2e_deploy": __version__,
        "merged_from": str(dit_path),
        "lora": str(lora_file),
        "lora_sha256": _sha256(lora_file),
        "multiplier": repr(multiplier),
        **_upcast_note(stored.values()),
    }
    bar = tqdm(total=len(official), desc="merge-lora", unit="tensor", disable=not progress)

    def write_shard(path: Path, shard: list[str], handle, overwrite: bool) -> None:
        specs = {name: (dtypes[name], official[name]) for name in shard}
        with handle_writer(path, specs, metadata, overwrite) as writer:
            for name in shard:
                tensor = handle.get_tensor(name)
                if name in items:
                    # ``tensor`` may be backed by the (copy-on-write) memory map: never write into it,
                    # else the touched pages stay as private memory until the file is closed.
                    tensor = tensor.to(torch.float32, copy=True).add_(items[name].compute(), alpha=multiplier)
                writer.write(name, tensor.to(dtypes[name]))
                bar.update()

    try:
        if len(shards) == 1:
            with open_safetensors(dit_path) as handle:
                write_shard(out, shards[0], handle, overwrite)
            report.files.append(out)
            if overwrite:
                _remove_sharded(index, keep=out.name)  # a sharded output from before: stale now
        else:
            total = sum(_nbytes(official[n], dtypes[n]) for n in official)
            report.files = _write_sharded(out, index, shards, dit_path, write_shard, metadata, total, overwrite)
    finally:
        bar.close()
    return report


def _write_sharded(out: Path, index: Path, shards, dit_path, write_shard, metadata, total: int, overwrite: bool):
    """Shards under names unique to this run, then the index (atomically, last), then the previous index's shards
    deleted: a loader only ever opens a complete index, old or new.

    Shards are written in a hidden staging folder beside ``out`` (removed by the next run if this one is
    killed) and renamed out just before the index. Returns the new shards and the index.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out)
    staging = temp_sibling(out)
    shutil.rmtree(staging, ignore_errors=True)  # left by an earlier process that had our PID
    staging.mkdir()
    token = secrets.token_hex(4)
    names = [f"{out.stem}-{token}-{i + 1:05d}-of-{len(shards):05d}{out.suffix}" for i in range(len(shards))]
    installed: list[Path] = []
    try:
        with open_safetensors(dit_path) as handle:
            for name, shard in zip(names, shards, strict=True):
                write_shard(staging / name, shard, handle, True)
        previous = _index_files(index) if overwrite else set()
        for name in names:
            installed.append(install_file(staging / name, out.parent / name, overwrite=False))
        weight_map = {name: file for file, shard in zip(names, shards, strict=True) for name in shard}
        body = {"metadata": {"total_size": total, **metadata}, "weight_map": weight_map}
        write_json(index, body, overwrite=overwrite)
    except BaseException:
        for path in installed:  # unused without our index
            path.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name in sorted(previous - set(names)):  # the old checkpoint's shards, now that no index lists them
        (out.parent / name).unlink(missing_ok=True)
    if overwrite:
        out.unlink(missing_ok=True)  # a single-file output from before
    return [*installed, index]


def _index_files(index: Path) -> set[str]:
    """The shard files an existing index lists (plain ``.safetensors`` names in its folder); none if unreadable."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = set(weight_map.values())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str) and f == Path(f).name and f.endswith(".safetensors")}


def _remove_sharded(index: Path, keep: str) -> None:
    """Delete a sharded checkpoint: its index first (no loader then sees missing shards), then the shards it lists
    (except ``keep``, the new single file)."""
    files = _index_files(index) - {keep}
    index.unlink(missing_ok=True)
    for name in sorted(files):
        (index.parent / name).unlink(missing_ok=True)


def _nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    return torch.Size(shape).numel() * dtype.itemsize


def _upcast_note(stored) -> dict[str, str]:
    """The merged file's ``upcast`` metadata when the base was stored in FP8 (written in BF16), else none."""
    fp8 = sorted({code_of(dtype) for dtype in stored if dtype in FP8_DTYPES})
    return {"upcast": f"{', '.join(fp8)} -> {code_of(FP8_UPCAST)}"} if fp8 else {}


def _plan_shards(
    official: dict[str, tuple[int, ...]], dtypes: dict[str, torch.dtype], max_shard_size: int | None
) -> list[list[str]]:
    """Tensor names per shard, in sorted order, each shard at most ``max_shard_size`` bytes (one tensor minimum).

    Sizes are those written (``dtypes``: an FP8 base is written in BF16).
    """
    shards, current, used = [], [], 0
    for name in sorted(official):
        size = _nbytes(official[name], dtypes[name])
        if current and max_shard_size is not None and used + size > max_shard_size:
            shards.append(current)
            current, used = [], 0
        current.append(name)
        used += size
    return [*shards, current]


def handle_writer(
    path: Path, specs: dict[str, tuple[torch.dtype, tuple[int, ...]]], metadata: dict[str, str], overwrite: bool
) -> SafetensorsWriter:
    """The streaming writer of one output file, with the dtypes and shapes it declares (its own function: the
    atomicity tests fail or kill a merge when its Nth file is opened)."""
    return SafetensorsWriter(path, specs, metadata, overwrite)
