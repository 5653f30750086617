"""``batch`` at production grade (issue 22): clean failures, a local cluster that dies with its driver,
object stores (an S3 API server on 127.0.0.1), shard outputs (Parquet, WebDataset) resumed from manifests.

One local Ray cluster for the module (started after the S3 credentials are in the environment, so
its workers see them); the driver-kill test starts its own, in a subprocess. The tiny model at 64x48.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import scene_image
from typer.testing import CliRunner

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from fe2e_deploy.cli import app  # noqa: E402
from fe2e_deploy.cluster.ray_setup import connect  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RES = ["--processing-res", "64x48"]
S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def cluster():
    saved = {key: os.environ.get(key) for key in S3_ENV}
    os.environ.update(S3_ENV)  # before Ray starts: its workers inherit the environment
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    assert connect(None, num_cpus=2)
    yield
    ray.shutdown()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i in range(6):
        scene_image(64, 48, seed=i).save(folder / f"scene{i}.png")
    (folder / "sub").mkdir()
    scene_image(64, 48, seed=9).save(folder / "sub" / "scene6.jpg")
    return folder


def batch_args(images: str | Path, out: str | Path, tiny_dir: Path, *more: str) -> list[str]:
    args = ["batch", str(images), "-o", str(out), "--engine", str(tiny_dir), *RES, "--cpus-per-worker", "0.5"]
    return [*args, "--no-progress", *more]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_a_write_error_is_one_line_and_exit_code_2(cluster, tiny_dir, images, tmp_path):
    """M5: a file where an output folder must go (as a full disk or a read-only folder would) stops the job
    with one line naming it, exit code 2 (was a 158-line Ray traceback, exit code 1)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "depth_npy").write_text("a file in the way")
    result = CliRunner().invoke(app, batch_args(images, out, tiny_dir, "--outputs", "depth_npy"))
    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output
    [line] = error_lines(result.output)
    assert "depth_npy" in line and "File exists" in line, line


def test_a_killed_driver_takes_its_local_cluster_with_it(tiny_dir, tmp_path):
    """L2: kill -9 of the driver of a local cluster: no Ray process of that cluster remains 20 s later
    (the dashboard and runtime-env agents used to stay ~60 s)."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(40):
        scene_image(128, 96, seed=i).save(images / f"s{i:02d}.png")
    out = tmp_path / "out"
    args = [sys.executable, "-m", "fe2e_deploy", *batch_args(images, out, tiny_dir, "--outputs", "depth_npy")]
    args[args.index("64x48")] = "128x96"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    log = tmp_path / "driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(args, start_new_session=True, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and driver.poll() is None and not list(out.glob("depth_npy/*.npy")):
            time.sleep(0.2)
        assert driver.poll() is None and list(out.glob("depth_npy/*.npy")), log.read_text()[-3000:]
        cluster_processes = psutil.Process(driver.pid).children(recursive=True)
        names = {p.name() for p in cluster_processes}
        assert {"raylet", "gcs_server"} <= names and any("Agent" in n for n in names), names
    finally:
        if driver.poll() is None:
            os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    deadline = time.monotonic() + 20
    alive = cluster_processes
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:  # leave nothing behind, then fail
        p.kill()
    assert not alive, [(p.pid, p.name()) for p in alive]
