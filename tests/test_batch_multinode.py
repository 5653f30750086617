"""``batch`` on a simulated multi-node Ray cluster (issue 22): three raylets on 127.0.0.1 (Ray's
``cluster_utils.Cluster``), one CPU each; a whole node with an engine worker on it is removed mid-run and
no image is lost. The nodes share this machine's disk, as real nodes share a file system or an object store.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import scene_image

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from ray_helpers import loopback_cluster, raylet_pid  # noqa: E402

from fe2e_deploy.cluster.batch import run_batch  # noqa: E402
from fe2e_deploy.engines import EngineOptions  # noqa: E402
from fe2e_deploy.files.outputs import OutputOptions  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture
def three_nodes():
    """A head and two worker nodes, one CPU each, all on 127.0.0.1; the test process is the driver."""
    with loopback_cluster(workers=2, head_cpus=1) as cluster_and_nodes:
        yield cluster_and_nodes


def engine_worker_pids() -> dict[int, int]:
    """PID -> parent PID (its raylet) of the batch job's engine workers."""
    found = {}
    for process in psutil.process_iter(["cmdline", "ppid"]):
        cmdline = process.info["cmdline"] or []
        if cmdline and cmdline[0].startswith("ray::MapWorker(MapBatches(PredictWorker))"):
            found[process.pid] = process.info["ppid"]
    return found


def test_batch_loses_no_image_when_a_worker_node_goes_away(three_nodes, tiny_dir, tmp_path):
    cluster, nodes = three_nodes
    images = tmp_path / "images"
    images.mkdir()
    for i in range(24):
        scene_image(128, 96, seed=200 + i).save(images / f"img{i:02d}.png")
    out = tmp_path / "out"
    result: dict = {}

    def job() -> None:
        try:
            result["report"] = run_batch(
                tiny_dir,
                images,
                out,
                workers=2,
                cpus_per_worker=0.75,  # one worker per node at most: the two land on different nodes
                options=EngineOptions(processing_res=(128, 96)),
                outputs=OutputOptions(("depth_npy",)),
                progress=False,
            )
        except BaseException as exc:  # shown by the assertion below
            result["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    raylets = {raylet_pid(node): node for node in nodes}
    deadline = time.monotonic() + 240
    victim = None
    while time.monotonic() < deadline and thread.is_alive() and victim is None:
        time.sleep(0.1)
        on_workers = [ppid for ppid in engine_worker_pids().values() if ppid in raylets]
        if on_workers and list(out.glob("depth_npy/*.npy")):  # under way, an engine worker on a worker node
            victim = raylets[on_workers[0]]
    done_before = len(list(out.glob("depth_npy/*.npy")))
    assert victim is not None and done_before < 24, (result, done_before)
    cluster.remove_node(victim, allow_graceful=False)  # the whole node: raylet, object store, its workers
    thread.join(timeout=300)
    assert not thread.is_alive(), "the job did not finish after the node was removed"
    assert "error" not in result, result
    report = result["report"]
    assert sorted(Path(p).name for p in report.written) == sorted(p.name for p in images.iterdir())
    assert not report.failed
    assert sorted(p.name for p in (out / "depth_npy").iterdir()) == [f"img{i:02d}_depth.npy" for i in range(24)]
