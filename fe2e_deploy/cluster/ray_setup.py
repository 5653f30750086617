"""Connecting to Ray: an existing cluster (``--address``) or a local one kept on the loopback interface."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

from ..errors import InvalidInput

LOOPBACK = "127.0.0.1"


class RayMissing(InvalidInput):
    """Ray is not installed (a ValueError: commands report it in one line, exit code 2)."""


def import_ray():
    """``ray``, or an error saying how to install the optional extra."""
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise RayMissing("Ray is not installed: pip install 'fe2e-deploy[ray]'") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` ("auto": the one this machine runs), or start a local one.

    A local cluster is always a new one (never another process's), advertises and binds 127.0.0.1 only
    (no traffic leaves the machine) and has no dashboard. Returns True when this call started Ray (the
    caller shuts it down); a process already connected (a test's cluster, a notebook) is used as it is.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:  # the cluster's nodes must have fe2e-deploy (and the engine files) installed
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        keep_on_loopback(ray)
        # address="local": a new cluster even when RAY_ADDRESS or /tmp/ray/ray_current_cluster (written by `ray start`
        # and by ray.cluster_utils) names a running one, which ray.init() without an address would join
        ray.init(
            address="local", num_cpus=num_cpus, _node_ip_address=LOOPBACK, include_dashboard=False, log_to_driver=False
        )
        addresses = {node["NodeManagerAddress"] for node in ray.nodes()}
        if addresses != {LOOPBACK}:
            ray.shutdown()
            raise RuntimeError(f"the local Ray cluster advertises {sorted(addresses)}, not {LOOPBACK} only")
    return True


def keep_on_loopback(ray) -> None:
    """Make a local cluster advertise and bind 127.0.0.1.

    Ray replaces a loopback ``_node_ip_address`` by the machine's network address unless its "clusters
    disabled" switch is set (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read when Ray is imported); the
    switch is set here for the processes Ray starts, and on the imported constant for this one.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants  # noqa: PLC0415

    ray_constants.ENABLE_RAY_CLUSTER = False


def torch_threads(cpus: float, gpus: float) -> int | None:
    """Torch threads of a CPU worker or replica with ``cpus`` CPUs (at least 1); None beside a GPU (torch decides)."""
    return max(1, round(cpus)) if gpus == 0 else None


@contextlib.contextmanager
def signals_to_driver_only() -> Iterator[None]:
    """Start a local cluster (``ray.init``) inside this block so that a signal to this process's group reaches this
    process only, and a stop while it starts leaves nothing behind.

    Ray spawns its daemons (GCS, raylet, which starts the agents) in the driver's process group, so a SIGTERM to
    the group (systemd without ``KillMode=mixed``, ``timeout``, ``kill -- -PGID``) killed them under a running
    driver, which then waited ~60 s for the dead GCS. Here each process Ray spawns leads a process group of its
    own (as Ray does on Windows); Ray's kernel fate-sharing still ends them if this process dies. ``ray.init`` and
    Ray's core worker install SIGTERM handlers in the driver (``sys.exit(15)``; a C++ abort, exit code 134): this
    process's Python handlers are put back afterwards, and a SIGTERM that ``ray.init`` turned into an exit is
    raised as KeyboardInterrupt. If the block fails (a stop while Ray starts), the process groups it spawned are
    killed: ``ray.init`` may not have recorded them yet, and the agents the raylet started outlive it by a minute.
    Main thread only (where Python handles signals); Linux only (elsewhere Ray's reaper needs one group).
    """
    from ray._private import services, utils  # noqa: PLC0415

    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    original = services.ConsolePopen
    spawned: list[subprocess.Popen] = []

    def own_group(*args, **kwargs) -> subprocess.Popen:
        process = original(*args, process_group=0, **kwargs)
        spawned.append(process)
        return process

    if sys.platform.startswith("linux") and utils.detect_fate_sharing_support():
        services.ConsolePopen = own_group
    try:
        yield
    except BaseException as exc:
        for process in spawned:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
        if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM:  # ray.init's SIGTERM handler: a stop
            raise KeyboardInterrupt from None
        raise
    finally:
        services.ConsolePopen = original
        for signum, handler in handlers.items():
            if handler is not None:
                signal.signal(signum, handler)


def check_listen_address(host: str, port: int, try_bind: bool = True) -> None:
    """Refuse (one line) a port out of range, a host that is no address, and, with ``try_bind``, an address this
    machine cannot listen on (in use, not one of its addresses), before Ray starts."""
    if not 1 <= port <= 65535:
        raise InvalidInput(f"--port {port}: must be 1-65535")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInput(f"--host {host!r}: not an address or a known host name ({exc})") from None
    if not try_bind:
        return
    with socket.socket(family, kind, proto) as probe:  # no SO_REUSEADDR: Ray Serve's proxy binds without it too
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InvalidInput(f"--port {port}: {host}:{port} is in use (another server?)") from None
            raise InvalidInput(f"--host {host!r}: cannot listen on {host}:{port} ({exc.strerror})") from None
