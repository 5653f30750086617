"""The LoRA training loop: peft adapter on the frozen DiT, AdamW, resumable checkpoints, loss log.

Output folder:

```
OUT/adapter_config.json, adapter_model.safetensors   the final peft adapter (merge-lora reads it)
OUT/lora.safetensors                                 with --kohya: the same LoRA in FE2E's kohya format
OUT/checkpoints/step-000050/                         adapter + training_state.pt every --save-every steps
OUT/loss.jsonl                                       one line per optimizer step: step, loss, lr, seconds
OUT/train_args.json                                  the options of the run
```

The data order is a function of (seed, sample counter) only, and checkpoints hold the optimizer
state, so a resumed run continues exactly where the checkpoint was taken.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..config import finite_number
from ..errors import InvalidInput, MissingInput, OutputExists
from ..files.atomic import atomic_write, write_json
from ..load_gate import opening
from ..loading.dit_layout import dit_layout, lora_target_modules
from ..model_files import ModelFiles
from ..reference import FE2EPipeline
from ..tiny import check_seed
from .data import TrainDataset
from .kohya import kohya_modules, peft_to_kohya
from .objective import velocity_loss, velocity_targets

ADAPTER = "default"
STATE_FILE = "training_state.pt"


@dataclass
class TrainOptions:
    rank: int = 64
    alpha: float = 32.0
    target_modules: list[str] | None = None  # regexes for diffusers module-name suffixes; None: FE2E's
    lr: float = 1e-4
    steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    mixed_precision: str = "no"  # "no" or "bf16"
    gradient_checkpointing: bool = False
    seed: int = 0
    save_every: int = 0
    resolution: tuple[int, int] = (1024, 768)
    kohya: bool = False
    device: str = "cpu"
    cache_latents: bool = False  # keep each sample's VAE latents in memory (small datasets)
    depth_scale: float = 1000.0  # 16-bit depth PNG value / depth_scale = metres

    def validate(self) -> None:
        """Raise a one-line ``ValueError`` naming the first bad option (as its command-line flag)."""
        for flag, value in (
            ("--rank", self.rank),
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--grad-accum", self.grad_accum),
        ):
            if value < 1:
                raise InvalidInput(f"{flag} must be >= 1, got {value}")
        if self.save_every < 0:
            raise InvalidInput(f"--save-every must be >= 0, got {self.save_every}")
        for flag, value in (("--alpha", self.alpha), ("--lr", self.lr), ("--depth-scale", self.depth_scale)):
            finite_number(value, flag, positive=True)
        check_seed(self.seed)
        if self.mixed_precision not in ("no", "bf16"):
            raise InvalidInput(f"--mixed-precision {self.mixed_precision!r} not supported; choose no or bf16")
        for pattern in self.target_modules or []:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise InvalidInput(f"--target-modules {pattern!r}: not a valid regular expression ({exc})") from None
        if self.target_modules:
            try:  # as lora_config joins them (a back-reference may be valid alone and not there)
                re.compile(target_regex(self.target_modules))
            except re.error as exc:
                raise InvalidInput(f"--target-modules {self.target_modules}: invalid together ({exc})") from None


@dataclass
class TrainReport:
    out_dir: Path
    start_step: int
    steps: int
    losses: list[float] = field(default_factory=list)


def fe2e_target_modules(files: ModelFiles) -> list[str]:
    """FE2E's LoRA targets (every Linear of the double and single blocks) as diffusers module names."""
    layout = dit_layout(files.config)
    names = []
    for module in lora_target_modules(files.config):
        for target in layout.rules[module + ".weight"].targets:
            names.append(target.removeprefix("transformer.").removesuffix(".weight"))
    return names


def target_regex(patterns: list[str]) -> str:
    """One regex matching a diffusers module name that ends (at a module boundary) with one of ``patterns``."""
    return r"^(.*\.)?(" + "|".join(patterns) + ")$"  # a suffix at a module boundary, as peft's lists


def lora_config(files: ModelFiles, opts: TrainOptions) -> LoraConfig:
    modules = opts.target_modules or [re.escape(m) for m in fe2e_target_modules(files)]
    return LoraConfig(
        r=opts.rank,
        lora_alpha=opts.alpha,
        target_modules=target_regex(modules),
        lora_dropout=0.0,
        init_lora_weights=True,  # B = 0: training starts at the base model
    )


def sample_indices(step: int, micro: int, opts: TrainOptions, n: int) -> list[int]:
    """Dataset indices of one micro-batch: a seeded permutation per epoch, walked in order."""
    start = (step * opts.grad_accum + micro) * opts.batch_size
    out = []
    for counter in range(start, start + opts.batch_size):
        epoch, pos = divmod(counter, n)
        out.append(int(np.random.default_rng([opts.seed, epoch]).permutation(n)[pos]))
    return out


def _collate(dataset: TrainDataset, indices: list[int], device: torch.device):
    samples = [dataset[i] for i in indices]
    return tuple(torch.stack([getattr(s, f) for s in samples]).to(device) for f in ("rgb", "depth", "normals", "valid"))


class Targets:
    """(reference latent, target velocity, token weights) of a micro-batch; with ``cache``, encoded once per sample.

    The frozen VAE's encoding is deterministic (posterior mean, no augmentation), so caching changes
    nothing but the time: at 1024x768 it holds ~2.4 MB per sample.
    """

    def __init__(self, pipe: FE2EPipeline, dataset: TrainDataset, device: torch.device, cache: bool):
        self.pipe, self.dataset, self.device = pipe, dataset, device
        self.cache: dict[int, tuple[torch.Tensor, ...]] | None = {} if cache else None

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        if self.cache is None:
            return velocity_targets(self.pipe, *_collate(self.dataset, indices, self.device))
        for i in indices:
            if i not in self.cache:
                self.cache[i] = velocity_targets(self.pipe, *_collate(self.dataset, [i], self.device))
        return tuple(torch.cat([self.cache[i][k] for i in indices]) for k in range(3))


def save_adapter(transformer: torch.nn.Module, config: LoraConfig, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    state = get_peft_model_state_dict(transformer, adapter_name=ADAPTER)
    state = {k: v.detach().float().contiguous() for k, v in state.items()}
    atomic_write(folder / "adapter_model.safetensors", lambda p: save_file(state, str(p)))


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((out_dir / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def train_lora(
    files: ModelFiles,
    data_dir: str | Path,
    out_dir: str | Path,
    opts: TrainOptions,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainReport:
    """Fine-tune a LoRA with FE2E's objective; see the module docstring for the outputs."""
    out_dir = Path(out_dir)
    opts.validate()
    if (out_dir / "adapter_model.safetensors").exists() and resume is None and not overwrite:
        raise OutputExists(f"{out_dir}: holds a trained adapter (pass --resume to continue or --overwrite)")
    dataset = TrainDataset(data_dir, opts.resolution, opts.depth_scale)
    device = torch.device(opts.device)
    torch.manual_seed(opts.seed)
    base_dtype = torch.bfloat16 if opts.mixed_precision == "bf16" else torch.float32
    pipe = FE2EPipeline.from_files(
        files.config, files.dit, files.vae, files.prompt, None, base_dtype, device, progress=progress
    )
    transformer = pipe.dit.transformer
    config = lora_config(files, opts)
    inject_adapter_in_model(config, transformer, adapter_name=ADAPTER)
    params = []
    for name, param in pipe.dit.named_parameters():
        param.requires_grad_("lora_" in name)
        if "lora_" in name:
            param.data = param.data.float()  # LoRA weights train in FP32
            params.append(param)
    if not params:
        raise InvalidInput("the target modules matched no Linear of the DiT")
    if opts.kohya:  # fail before training, not after
        kohya_modules(list(_adapter_pairs(transformer, config)), files.config)
    if opts.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=0.0)
    start = 0
    if resume is not None:
        checkpoint = latest_checkpoint(out_dir) if str(resume) == "latest" else Path(resume)
        if checkpoint is None or not (checkpoint / STATE_FILE).is_file():
            raise MissingInput(f"{resume}: no checkpoint to resume from (looked in {out_dir / 'checkpoints'})")
        opening("training checkpoint", checkpoint)
        set_peft_model_state_dict(transformer, load_file(checkpoint / "adapter_model.safetensors"), ADAPTER)
        state = torch.load(checkpoint / STATE_FILE, weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "train_args.json", asdict(opts))
    report = TrainReport(out_dir, start, opts.steps)
    log_path = out_dir / "loss.jsonl"
    if log_path.exists():  # keep the log of the steps before ``start`` only
        kept = [ln for ln in log_path.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
        atomic_write(log_path, lambda p: p.write_text("".join(ln + "\n" for ln in kept)))
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts.mixed_precision == "bf16")
    bar = tqdm(
        range(start, opts.steps), desc="train-lora", unit="step", disable=not progress, initial=start, total=opts.steps
    )
    targets = Targets(pipe, dataset, device, opts.cache_latents)
    t0 = time.perf_counter()
    for step in bar:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for micro in range(opts.grad_accum):
            ref_latent, target, weight = targets(sample_indices(step, micro, opts, len(dataset)))
            with autocast:
                loss = velocity_loss(pipe, ref_latent, target, weight) / opts.grad_accum
            loss.backward()
            total += float(loss.detach())
        if not math.isfinite(total):
            raise FloatingPointError(f"loss became {total} at step {step + 1}; lower --lr")
        optimizer.step()
        report.losses.append(total)
        bar.set_postfix(loss=f"{total:.4f}")
        with open(log_path, "a") as fh:
            fh.write(json.dumps({"step": step + 1, "loss": total, "lr": opts.lr, "seconds": time.perf_counter() - t0}))
            fh.write("\n")
        if opts.save_every and (step + 1) % opts.save_every == 0:
            _save_checkpoint(transformer, config, optimizer, step + 1, out_dir)
    save_adapter(transformer, config, out_dir)
    if opts.kohya:
        adapter = _adapter_pairs(transformer, config)
        peft_to_kohya(adapter, files.config, out_dir / "lora.safetensors")
    return report


def _save_checkpoint(transformer, config, optimizer, step: int, out_dir: Path) -> None:
    final = out_dir / "checkpoints" / f"step-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(transformer, config, tmp)
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _adapter_pairs(transformer, config: LoraConfig) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """diffusers module name -> (A, B, scale) of the trained adapter."""
    pairs = {}
    for name, module in transformer.named_modules():
        if hasattr(module, "lora_A") and ADAPTER in module.lora_A:
            a = module.lora_A[ADAPTER].weight.detach().float()
            b = module.lora_B[ADAPTER].weight.detach().float()
            pairs[name] = (a, b, module.scaling[ADAPTER])
    return pairs
