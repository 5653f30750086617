"""Connecting to Ray: an existing cluster (``--address``) or a local one kept on the loopback interface."""

from __future__ import annotations

import os


def import_ray():
    """``ray``, or an error saying how to install the optional extra."""
    try:
        import ray  # noqa: PLC0415
    except ImportError:
        raise ImportError("Ray is not installed: pip install 'fe2e-deploy[ray]'") from None
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
        ray.init(
            num_cpus=num_cpus,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
        )
    return True
