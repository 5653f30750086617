"""Stage timers: engines mark their stages (``with self.timer("dit"): ...``); benchmark records them.

Engines hold :data:`NO_TIMER` by default, which costs nothing. :class:`StageTimer` records wall
time on CPU and CUDA events on a GPU (resolved after the run, so timing adds no synchronisation
inside the measured region except at stage boundaries on CPU).
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator

import torch


class NoTimer:
    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        yield


NO_TIMER = NoTimer()


class StageTimer:
    """Collects seconds per stage name, one entry per call, for the runs marked with :meth:`run`."""

    def __init__(self, cuda: bool = False):
        self.cuda = cuda and torch.cuda.is_available()
        self._events: list[tuple[str, object, object]] = []
        self.recording = False

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        if not self.recording:
            yield
            return
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self._events.append((stage, start, end))

    def clear(self) -> None:
        """Forget the durations recorded so far (e.g. a first run's, kept apart from the timed runs)."""
        self._events.clear()

    def seconds(self) -> dict[str, list[float]]:
        """Per stage, the durations recorded so far (synchronises CUDA once)."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, list[float]] = defaultdict(list)
        for stage, start, end in self._events:
            out[stage].append(start.elapsed_time(end) / 1000 if self.cuda else end - start)
        return dict(out)


def op_seconds(fn: Callable[[], object], device: torch.device, runs: int, warmup: int = 1) -> list[float]:
    """Seconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones: CUDA events around each call on a
    GPU (what the device spent), the wall clock on a CPU."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    times = []
    for _ in range(runs):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times
