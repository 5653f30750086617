"""The demo model's optimisation schedule: the cosine ends at zero whichever limit (steps, time) binds."""

from __future__ import annotations

import itertools

import pytest
import torch

from fe2e_deploy.train.schedule import optimise


def _run(steps: int, time_budget: float | None, seconds_per_step: float) -> tuple[list[float], list[dict]]:
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    ticks = itertools.count()
    clock = lambda: next(ticks) * seconds_per_step / 2  # noqa: E731  (two clock reads per step)
    records: list[dict] = []

    def loss_at(step: int) -> torch.Tensor:
        return torch.nn.functional.mse_loss(module(x), y)

    losses = optimise(
        module, loss_at, steps, 0.1, warmup=2, time_budget=time_budget, log=records.append, log_every=1, clock=clock
    )
    return losses, records


def test_time_budget_binds_and_the_rate_still_decays_to_zero():
    losses, records = _run(steps=1000, time_budget=20.0, seconds_per_step=1.0)
    assert len(losses) == 20  # stopped by time, long before 1000 steps
    assert records[-1]["stopped_at"] == 20
    rates = [r["lr"] for r in records if "lr" in r]
    assert rates[1] == pytest.approx(0.1)  # warm-up done
    assert rates[-1] < 0.1 * 0.01  # the cosine nearly finished at the last step
    assert all(a >= b for a, b in zip(rates[1:], rates[2:], strict=False))


def test_steps_bind_when_the_machine_is_fast():
    losses, records = _run(steps=30, time_budget=1e6, seconds_per_step=1.0)
    assert len(losses) == 30 and not any("stopped_at" in r for r in records)
    rates = [r["lr"] for r in records if "lr" in r]
    assert rates[-1] < 0.1 * 0.01 and losses[-1] < losses[0]


def test_no_budget_is_a_plain_cosine():
    losses, records = _run(steps=10, time_budget=None, seconds_per_step=1.0)
    assert len(losses) == 10
    assert [round(r["lr"], 4) for r in records][:2] == [0.05, 0.1]
