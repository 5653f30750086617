"""Peak memory of a block of work, counted where every allocator shows up.

``torch.cuda.max_memory_allocated`` sees PyTorch's caching allocator only: AOTInductor's weights
and workspaces, cuBLAS/cuDNN workspaces and the CUDA context are missing from it. A sampling
thread reads the device-wide figure instead (``cudaMemGetInfo``: total - free, everything on the
GPU) on CUDA, and the resident set size (``/proc/self/statm``) on CPU. Sampling costs the GIL now
and then, so it runs around untimed work (building, warm-up, one extra run), never around the
timed runs.
"""

from __future__ import annotations

import os
import resource
import threading

import torch

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def memory_in_use(device: torch.device) -> int:
    """Bytes in use now: device-wide on CUDA, this process's resident set on CPU."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return int(total - free)
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * PAGE
    except OSError:  # not Linux: the process peak so far is the best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """``with PeakMemory(device) as m: ...``; then ``m.peak`` (bytes) and ``m.baseline`` (in use at first entry).

    Entering again (around more untimed work) keeps the peak and the first baseline.
    """

    def __init__(self, device: torch.device | str, interval: float = 0.005):
        self.device, self.interval = torch.device(device), interval
        self.baseline: int | None = None
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def kind(self) -> str:
        if self.device.type == "cuda":
            return "device-wide memory in use (cudaMemGetInfo, sampled): every allocator and the CUDA context"
        return "process resident set size (sampled)"

    def sample(self) -> None:
        self.peak = max(self.peak, memory_in_use(self.device))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = memory_in_use(self.device)
        self.baseline = now if self.baseline is None else self.baseline
        self.peak = max(self.peak, now)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.sample()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
