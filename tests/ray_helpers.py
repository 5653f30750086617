"""What the Ray tests share: a simulated multi-node cluster on 127.0.0.1, and the check that processes end."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import psutil
import ray
from ray.cluster_utils import Cluster

from fe2e_deploy.cluster.ray_setup import LOOPBACK, keep_on_loopback

#: A node of one CPU whose raylet runs on 127.0.0.1.
NODE = {"num_cpus": 1, "node_ip_address": LOOPBACK}


@contextlib.contextmanager
def loopback_cluster(workers: int = 2, head_cpus: int = 1) -> Iterator[tuple[Cluster, list]]:
    """A head (``head_cpus`` CPUs) and ``workers`` worker nodes of one CPU, all on 127.0.0.1 (Ray's
    ``cluster_utils.Cluster``); the test process is the driver. Yields the cluster and its worker nodes."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    keep_on_loopback(ray)
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": head_cpus, "include_dashboard": False})
    nodes = [cluster.add_node(**NODE) for _ in range(workers)]
    cluster.wait_for_nodes()
    cluster.connect()
    try:
        assert {node["NodeManagerAddress"] for node in ray.nodes()} == {LOOPBACK}
        yield cluster, nodes
    finally:
        ray.shutdown()
        cluster.shutdown()


def raylet_pid(node) -> int:
    return node.all_processes["raylet"][0].process.pid


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    return [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def assert_processes_end(processes: list[psutil.Process], within_s: float = 20.0) -> None:
    """Every process of ``processes`` ends within ``within_s``; those left are killed, then the test fails."""
    deadline = time.monotonic() + within_s
    left = alive(processes)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = alive(left)
    for p in left:  # leave nothing behind, then fail
        p.kill()
    assert not left, [(p.pid, p.name()) for p in left]
