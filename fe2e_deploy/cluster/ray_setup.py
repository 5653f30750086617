"""Connecting to Ray: an existing cluster (``--address``) or a local one kept on the loopback interface."""

from __future__ import annotations

import os

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

    A local cluster advertises and binds 127.0.0.1 only (no traffic leaves the machine) and has no
    dashboard. Returns True when this call started Ray (the caller shuts it down); a process already
    connected (a test's cluster, a notebook) is used as it is.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:  # the cluster's nodes must have fe2e-deploy (and the engine files) installed
        ray.init(address=address, log_to_driver=False)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        keep_on_loopback(ray)
        ray.init(num_cpus=num_cpus, _node_ip_address=LOOPBACK, include_dashboard=False, log_to_driver=False)
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
