"""The demo model's optimisation loop, shared by its VAE and DiT stages.

AdamW (no weight decay) with a linear warm-up and a cosine decay, gradients clipped to norm 1, a
JSON log line every ``log_every`` steps and an optional wall-clock budget. The cosine follows the
run's progress, the larger of the fraction of ``steps`` done and the fraction of the time budget
spent, so it decays to zero whichever limit binds first: a slower or busier machine runs fewer steps
but still ends at a learning rate of zero (a step-indexed schedule cut off by the budget ended at a
high rate, measured on 2026-12-02: 4700 of 9000 DiT steps). ``train_lora`` keeps its own loop: a
constant learning rate, gradient accumulation and resumable checkpoints.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch


def cosine_lr(progress: float, lr: float, warmup_fraction: float) -> float:
    """The learning rate at ``progress`` in [0, 1] of the run, the cosine spanning what follows the
    warm-up (``warmup_fraction`` of the run)."""
    span = max(1e-12, 1.0 - warmup_fraction)
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress - warmup_fraction) / span)))


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
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Train ``module`` in place on ``loss_at(step)``; returns the losses of the steps run.

    Runs ``steps`` steps or until ``time_budget`` seconds (by ``clock``) are spent, whichever comes
    first; the learning rate decays to zero at that point either way (see the module docstring; the
    caller records the steps run). The first ``warmup`` steps ramp the rate up linearly.
    ``after_step(done)`` runs after each step (checkpoints). The module is left in eval mode.
    """
    module.train().requires_grad_(True)  # the loaders return frozen modules
    optimizer = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=0.0)
    start = clock()
    losses: list[float] = []
    warmup_fraction = 0.0
    for step in range(steps):
        elapsed = clock() - start
        progress = max(step / steps, 0.0 if time_budget is None else elapsed / max(time_budget, 1e-9))
        if progress >= 1.0:
            log({"stage": stage, "stopped_at": step, "reason": f"time budget {time_budget:.0f} s"})
            break
        if step == warmup:
            warmup_fraction = progress  # the cosine spans what is left after the warm-up
        rate = lr * (step + 1) / warmup if step < warmup else cosine_lr(progress, lr, warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = rate
        loss = loss_at(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        done = step + 1
        if done % log_every == 0 or done == steps:
            window = float(np.mean(losses[-log_every:]))
            log({"stage": stage, "step": done, "loss": window, "lr": rate, "seconds": round(clock() - start, 1)})
        if after_step is not None:
            after_step(done)
    module.eval()
    return losses
