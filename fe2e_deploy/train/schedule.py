"""The demo model's optimisation loop, shared by its VAE and DiT stages.

AdamW (no weight decay) with a linear warm-up and a cosine decay over ``steps``, gradients clipped
to norm 1, a JSON log line every ``log_every`` steps and an optional wall-clock budget. ``train_lora``
keeps its own loop: a constant learning rate, gradient accumulation and resumable checkpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch


def cosine_lr(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))


def optimise(
    module: torch.nn.Module,
    loss_at: Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    warmup: int,
    time_budget: float | None = None,
    log: Callable[[dict], object] = print,
    stage: str = "train",
    log_every: int = 25,
    after_step: Callable[[int], object] | None = None,
) -> list[float]:
    """Train ``module`` in place on ``loss_at(step)``; returns the losses of the steps run.

    ``time_budget`` (seconds) stops early, after the step that crosses it (the schedule stays the one
    of ``steps``, so an early stop ends at a higher learning rate; the caller records the steps run).
    ``after_step(done)`` runs after each step (checkpoints). The module is left in eval mode.
    """
    module.train().requires_grad_(True)  # the loaders return frozen modules
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    start = time.perf_counter()
    losses: list[float] = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, lr, warmup)
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        done = step + 1
        elapsed = time.perf_counter() - start
        if done % log_every == 0 or done == steps:
            window = float(np.mean(losses[-log_every:]))
            log({"stage": stage, "step": done, "loss": window, "seconds": round(elapsed, 1)})
        if after_step is not None:
            after_step(done)
        if time_budget is not None and elapsed > time_budget:
            log({"stage": stage, "stopped_at": done, "reason": f"time budget {time_budget:.0f} s"})
            break
    module.eval()
    return losses
