"""A local Ray cluster dies with the process that started it, even by ``kill -9`` (Linux).

Ray already binds the processes a driver starts itself (GCS, raylet, log monitor...) to it with the
kernel's parent-death signal, but not the agents the raylet starts (dashboard agent, runtime-env
agent): when the driver is killed, they notice their raylet is gone, then wait ~60 s trying to
report it to the dead GCS (``gcs_server_request_timeout_seconds``) before they exit. Ray has no
option for this (its own "reaper" is used only where the kernel signal is missing, and it kills the
driver's whole process group), so :func:`guard_local_cluster` starts this file as a small watchdog
instead: it runs in its own session (a signal to the driver's process group spares it), notes every
second the Ray processes under the driver (its children started from the Ray package, and all their
descendants) and, when the driver's end of its stdin pipe closes without a ``stop`` line (the driver
died), kills the ones still alive (each checked by its start time, so a reused PID is never hit).

This file is run by path (``python -I fate.py PID RAY_DIR``) and imports the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
from pathlib import Path

#: What the driver writes to the watchdog when it shut its cluster down itself (then nothing is killed).
STOP = "stop"

#: Seconds between two looks at the processes under the driver.
INTERVAL_S = 1.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent PID, start time in clock ticks) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state, ppid, ... starttime is the 20th
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ray_processes(driver: int, ray_dir: str) -> dict[int, int]:
    """PID -> start time of the driver's children started from ``ray_dir`` and of all their descendants."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append(int(entry.name))
                starts[int(entry.name)] = stat[1]
    me = os.getpid()  # the watchdog names ray_dir in its own command line
    todo = [pid for pid in children.get(driver, []) if pid != me and ray_dir in _cmdline(pid)]
    found = {}
    while todo:
        pid = todo.pop()
        if pid in starts and pid not in found:
            found[pid] = starts[pid]
            todo.extend(children.get(pid, []))
    return found


def kill_all(processes: dict[int, int]) -> None:
    """SIGKILL each process that still has the start time it was noted with."""
    for pid, start in processes.items():
        stat = _stat(pid)
        if stat is not None and stat[1] == start:
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, signal.SIGKILL)


def watch(driver: int, ray_dir: str) -> None:
    """Note the driver's Ray processes until stdin says ``stop`` (return) or closes (kill them)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the driver; it stops us itself
    seen: dict[int, int] = {}
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], INTERVAL_S)
        if ready:
            line = sys.stdin.readline()
            if line.strip() == STOP:
                return
            if not line:  # EOF: the driver is gone
                break
        seen.update(ray_processes(driver, ray_dir))
    seen.update(ray_processes(driver, ray_dir))  # what is still attached to the dead driver, if anything
    kill_all(seen)


class ClusterGuard:
    """The driver's handle on its watchdog: :meth:`stop` after shutting Ray down (nothing is killed then)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process

    def stop(self) -> None:
        try:
            self.process.stdin.write(f"{STOP}\n".encode())
            self.process.stdin.close()
        except OSError:  # the watchdog died: nothing to stop
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def guard_local_cluster() -> ClusterGuard | None:
    """Start the watchdog of the local cluster this process is about to start (None off Linux).

    Call it before ``ray.init`` (so that processes started during the start-up are seen too) and
    :meth:`ClusterGuard.stop` after ``ray.shutdown``.
    """
    if not sys.platform.startswith("linux"):  # elsewhere Ray's own reaper kills the process group
        return None
    import ray  # noqa: PLC0415

    ray_dir = os.path.dirname(ray.__file__)
    process = subprocess.Popen(
        [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid()), ray_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the driver's process group (Ctrl-C, kill -- -PGID) spares it
    )
    return ClusterGuard(process)


def guard_if_starting(address: str | None) -> ClusterGuard | None:
    """:func:`guard_local_cluster` when this process is about to start a local cluster (no ``address``, not
    connected yet); None when it joins one (a cluster it did not start is not its to end)."""
    import ray  # noqa: PLC0415

    return guard_local_cluster() if address is None and not ray.is_initialized() else None


if __name__ == "__main__":
    watch(int(sys.argv[1]), sys.argv[2])
