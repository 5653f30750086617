"""``batch`` at production grade (issue 22): clean failures, a local cluster that dies with its driver,
object stores (an S3 API server on 127.0.0.1), shard outputs (Parquet, WebDataset) resumed from manifests.

One local Ray cluster for the module (started after the S3 credentials are in the environment, so
its workers see them); the driver-kill test starts its own, in a subprocess. The tiny model at 64x48.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import scene_image
from PIL import Image
from typer.testing import CliRunner

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from pyarrow import fs  # noqa: E402
from pyarrow import parquet as pq  # noqa: E402
from ray_helpers import assert_processes_end  # noqa: E402

from fe2e_deploy.artifacts.contract import ContractError  # noqa: E402
from fe2e_deploy.cli import app  # noqa: E402
from fe2e_deploy.cluster.batch import BatchReport, plan_shards, run_batch  # noqa: E402
from fe2e_deploy.cluster.ray_setup import connect  # noqa: E402
from fe2e_deploy.cluster.shards import Sample, ShardManifest, ShardOptions, open_shard  # noqa: E402
from fe2e_deploy.cluster.stores import OutputStore, upload  # noqa: E402
from fe2e_deploy.engines import EngineOptions, load_engine  # noqa: E402
from fe2e_deploy.files.images import find_images  # noqa: E402
from fe2e_deploy.files.outputs import OutputOptions  # noqa: E402
from fe2e_deploy.infer import run_infer  # noqa: E402
from fe2e_deploy.processing import Prediction  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RES = ["--processing-res", "64x48"]
OPTIONS = EngineOptions(processing_res=(64, 48))
NPY_OUTPUTS = OutputOptions(("depth_npy", "normals_npy"))
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


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


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
    assert "UserCodeException" not in result.output
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
    assert_processes_end(cluster_processes, within_s=20)


def shard_maps(out: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (depth, normals) of every Parquet shard under ``out``."""
    table = pq.read_table(out)  # the dataset reader skips _manifests/
    maps = {}
    for row in table.to_pylist():
        shape = (row["height"], row["width"])
        depth = np.frombuffer(row["depth"], "<f2").reshape(shape)
        maps[row["key"]] = (depth, np.frombuffer(row["normals"], "<f2").reshape(*shape, 3))
    return maps


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


KEYS = [*(f"scene{i}" for i in range(6)), "sub/scene6"]


@pytest.fixture(scope="module")
def files_out(tiny_dir, images, tmp_path_factory) -> Path:
    """``infer``'s float32 .npy maps (one torch thread, as the batch workers): what the outputs are compared with."""
    out = tmp_path_factory.mktemp("files_out")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_infer(load_engine(tiny_dir, OPTIONS), images, out, outputs=NPY_OUTPUTS, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert len(report.written) == 7 and not report.failed
    return out


def reference(files_out: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    return np.load(files_out / "depth_npy" / f"{key}_depth.npy"), np.load(
        files_out / "normals_npy" / f"{key}_normals.npy"
    )


def test_parquet_shards_hold_the_maps_and_resume_from_their_manifests(cluster, tiny_dir, images, files_out, tmp_path):
    out = tmp_path / "out"
    shards = ShardOptions("parquet", shard_size=3)
    report = run_batch(tiny_dir, images, out, cpus_per_worker=0.5, options=OPTIONS, shards=shards, progress=False)
    assert len(report.written) == 7 and not report.failed
    assert sorted(p.name for p in out.iterdir()) == ["_manifests", *(f"shard-00000{i}.parquet" for i in range(3))]
    maps = shard_maps(out)
    assert sorted(maps) == KEYS
    for key, (depth, normals) in maps.items():  # float16: within half a step of the float32 maps
        want_depth, want_normals = reference(files_out, key)
        np.testing.assert_allclose(depth, want_depth, rtol=0, atol=5e-4)
        np.testing.assert_allclose(normals, want_normals, rtol=0, atol=5e-4)
    manifest = ShardManifest.from_json(json.loads((out / "_manifests" / "shard-000001.json").read_text()))
    assert manifest.keys == KEYS[3:6] and manifest.shard == "shard-000001.parquet"
    assert manifest.shard_bytes == (out / "shard-000001.parquet").stat().st_size

    # a shard without its manifest (a run killed between the two) is removed; its images go into a new shard
    (out / "_manifests" / "shard-000001.json").unlink()
    again = run_batch(tiny_dir, images, out, cpus_per_worker=0.5, options=OPTIONS, shards=shards, progress=False)
    assert [Path(p).stem for p in again.written] == ["scene3", "scene4", "scene5"] and len(again.skipped) == 4
    assert sorted(p.name for p in out.glob("*.parquet")) == [f"shard-00000{i}.parquet" for i in (0, 2, 3)]
    assert sorted(shard_maps(out)) == KEYS

    # resuming reads the manifests and the shards' sizes, never a shard (here: unreadable, of the size its manifest
    # records); nothing to do, so no Ray
    kept = (out / "shard-000000.parquet").read_bytes()
    (out / "shard-000000.parquet").write_bytes(b"x" * len(kept))
    idle = run_batch(tiny_dir, images, out, options=OPTIONS, shards=shards, progress=False)
    assert len(idle.skipped) == 7 and not idle.written and idle.ray_start_seconds == 0
    assert "in finished shards" in idle.summary() and not idle.notes
    (out / "shard-000000.parquet").write_bytes(kept)

    # issue 33 item 9: a truncated shard and a deleted one are redone (and said), not skipped
    shard3 = out / "shard-000003.parquet"
    shard3.write_bytes(shard3.read_bytes()[:100])
    (out / "shard-000002.parquet").unlink()
    args = batch_args(images, out, tiny_dir, "--output-format", "parquet", "--shard-size", "3")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    assert "4 image(s) written, 3 skipped (in finished shards), 0 failed" in result.output, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert len(notes) == 2, result.output
    assert "shard-000002.parquet: missing; its 1 image(s) are predicted again" in notes[0], notes
    assert "shard-000003.parquet: 100 bytes, but its manifest records" in notes[1], notes
    assert sorted(p.name for p in out.glob("*.parquet")) == [f"shard-00000{i}.parquet" for i in (0, 4, 5)]
    assert sorted(p.name for p in (out / "_manifests").iterdir()) == [f"shard-00000{i}.json" for i in (0, 4, 5)]
    assert sorted(shard_maps(out)) == KEYS
    (out / "_manifests" / "shard-000002.json").write_text('{"format": "fe2e-batch-shard", "format_version": 1}')
    with pytest.raises(ContractError, match=r"shard-000002\.json: field .* is missing"):
        run_batch(tiny_dir, images, out, options=OPTIONS, shards=shards, progress=False)


def test_webdataset_shards_through_the_command_line(cluster, tiny_dir, images, files_out, tmp_path):
    out = tmp_path / "out"
    args = batch_args(images, out, tiny_dir, "--output-format", "webdataset", "--normals-dtype", "uint8")
    result = CliRunner().invoke(app, [*args, "--previews", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "7 image(s) written, 0 skipped (in finished shards), 0 failed" in result.output
    members = tar_members(out / "shard-000000.tar")  # one shard: the default holds 64 images
    suffixes = ["depth.npy", "normals.npy", "depth.png", "normals.png", "json"]
    assert list(members) == [f"{key}.{suffix}" for key in KEYS for suffix in suffixes]  # grouped by key
    for key in KEYS:
        want_depth, want_normals = reference(files_out, key)
        depth = np.load(io.BytesIO(members[f"{key}.depth.npy"]))
        normals = np.load(io.BytesIO(members[f"{key}.normals.npy"]))
        assert depth.dtype == np.float16 and normals.dtype == np.uint8 and normals.shape == (48, 64, 3)
        np.testing.assert_allclose(depth, want_depth, rtol=0, atol=5e-4)
        assert np.abs(normals / 255.0 * 2 - 1 - want_normals).max() <= 2 / 255 + 1e-3
        assert Image.open(io.BytesIO(members[f"{key}.depth.png"])).size == (64, 48)
        info = json.loads(members[f"{key}.json"])
        assert info == {"source": "sub/scene6.jpg" if key == "sub/scene6" else f"{key}.png", "height": 48, "width": 64}
    mixed = CliRunner().invoke(app, [*batch_args(images, out, tiny_dir, "--output-format", "parquet")])
    assert mixed.exit_code == 2 and "holds webdataset shards" in error_lines(mixed.output)[0], mixed.output


def test_a_shard_that_cannot_be_written_is_one_line_and_exit_code_2(cluster, tiny_dir, images, tmp_path):
    out = tmp_path / "out"
    (out / "shard-000000.parquet").mkdir(parents=True)  # a folder where the shard must go
    (out / "shard-000000.parquet" / "keep").write_text("")
    result = CliRunner().invoke(app, batch_args(images, out, tiny_dir, "--output-format", "parquet"))
    assert result.exit_code == 2, (result.output, result.exception)
    [line] = error_lines(result.output)
    assert "shard-000000.parquet: Is a directory" in line and "UserCodeException" not in result.output, line
    assert not (out / "_manifests").exists() or not list((out / "_manifests").iterdir())


@pytest.fixture(scope="module")
def s3():
    """An S3 API server on 127.0.0.1 (moto) with a bucket; yields the query that points pyarrow at it."""
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        assert host == "127.0.0.1"
        query = f"?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        filesystem = fs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True
        )
        filesystem.create_dir("bucket")
        yield filesystem, query
    finally:
        server.stop()


def s3_keys(filesystem, prefix: str) -> list[str]:
    infos = filesystem.get_file_info(fs.FileSelector(prefix, recursive=True, allow_not_found=True))
    return sorted(i.path.removeprefix(prefix + "/") for i in infos if i.type == fs.FileType.File)


def test_batch_from_and_to_an_s3_server_resumes(cluster, s3, tiny_dir, images, files_out):
    filesystem, query = s3
    for path in sorted(images.rglob("*.*")):
        with filesystem.open_output_stream(f"bucket/in/{path.relative_to(images).as_posix()}") as f:
            f.write(path.read_bytes())
    source = f"s3://bucket/in{query}"

    # infer's files, one object each, the same maps as on a local disk
    report = run_batch(
        tiny_dir,
        source,
        f"s3://bucket/files{query}",
        cpus_per_worker=0.5,
        options=OPTIONS,
        outputs=NPY_OUTPUTS,
        progress=False,
    )
    assert len(report.written) == 7 and not report.failed
    assert s3_keys(filesystem, "bucket/files") == files_under(files_out)  # nothing else: no temporaries
    with filesystem.open_input_file("bucket/files/normals_npy/sub/scene6_normals.npy") as f:
        got = np.load(io.BytesIO(f.readall()))
    np.testing.assert_allclose(got, reference(files_out, "sub/scene6")[1], rtol=0, atol=1e-6)
    filesystem.delete_file("bucket/files/depth_npy/scene2_depth.npy")
    again = run_batch(
        tiny_dir,
        source,
        f"s3://bucket/files{query}",
        cpus_per_worker=0.5,
        options=OPTIONS,
        outputs=NPY_OUTPUTS,
        progress=False,
    )
    assert [Path(p).name for p in again.completed] == ["scene2.png"] and len(again.skipped) == 6
    assert s3_keys(filesystem, "bucket/files") == files_under(files_out)
    local_in = run_batch(tiny_dir, images, f"s3://bucket/files{query}", outputs=NPY_OUTPUTS, progress=False)
    assert len(local_in.skipped) == 7 and local_in.ray_start_seconds == 0  # local images, outputs in S3: all there

    # Parquet shards and their manifests; a rerun skips every image from the manifests
    shards = ShardOptions("parquet", shard_size=4)
    target = f"s3://bucket/shards{query}"
    report = run_batch(tiny_dir, source, target, cpus_per_worker=0.5, options=OPTIONS, shards=shards, progress=False)
    assert len(report.written) == 7 and not report.failed
    names = ["_manifests/shard-000000.json", "_manifests/shard-000001.json", "shard-000000.parquet"]
    assert s3_keys(filesystem, "bucket/shards") == [*names, "shard-000001.parquet"]
    table = pq.read_table("bucket/shards", filesystem=filesystem)
    assert sorted(table.column("key").to_pylist()) == KEYS
    idle = run_batch(tiny_dir, source, target, options=OPTIONS, shards=shards, progress=False)
    assert len(idle.skipped) == 7 and not idle.written and idle.ray_start_seconds == 0


def test_an_interrupted_upload_leaves_no_object(s3):
    """pyarrow completes an upload when its stream closes, even after an error: the partial object is deleted."""
    filesystem, _ = s3

    class Failing(io.BytesIO):
        def read(self, size=-1):
            if self.tell() > 0:
                raise OSError("the source broke")
            return super().read(min(size, 1000) if size and size > 0 else 1000)

    with pytest.raises(OSError, match="the source broke"):
        upload(Failing(b"x" * 5000), filesystem, "bucket/partial/object.bin")
    assert s3_keys(filesystem, "bucket/partial") == []


def finished_shard(output: str | Path, fmt: str = "parquet") -> OutputStore:
    """A finished output (shard 0 and its manifest, one sample), written without Ray; returns its store."""
    store = OutputStore.parse(output)
    options = ShardOptions(fmt)
    normals = np.zeros((4, 4, 3), np.float32)
    normals[..., 2] = 1
    with open_shard(store, 0, options) as shard:
        shard.add(Sample.of("scene0", "scene0.png", Prediction(np.zeros((4, 4), np.float32), normals), options))
    return store


def planted_manifest(store: OutputStore, number: int, shard: str) -> bytes:
    """A manifest ``_manifests/shard-NNNNNN.json`` that is valid in every field but ``shard``."""
    good = ShardManifest.from_json(json.loads(store.read_bytes("_manifests/shard-000000.json")))
    document = {**good.to_json(), "shard": shard}
    data = json.dumps(document).encode()
    store.put_bytes(f"_manifests/shard-{number:06d}.json", data)
    return data


@pytest.mark.parametrize(
    "shard",
    [
        "shard-000009/../../victim.txt",  # a path out of the output (deleted by --overwrite, exit 0, before)
        "part-1.parquet",  # no shard name (an AttributeError traceback before)
        "shard-000009.parquet",  # a valid name, but not this manifest's shard (deleted by --overwrite before)
        "shard-000005.parquet/../../victim.txt",
    ],
)
def test_a_hostile_manifest_touches_nothing_and_is_one_line(tiny_dir, images, tmp_path, shard):
    """Issue 33 items 2 and 9: a manifest's ``shard`` must be its own shard's name (``shard-NNNNNN.parquet|tar``,
    the number of the manifest); anything else stops the run in one line (exit code 2), deleting nothing, with or
    without --overwrite. Nothing outside the output is ever deleted: the names deleted are the toolkit's own."""
    out = tmp_path / "out"
    store = finished_shard(out)
    (out / "shard-000009").mkdir()  # lets the path resolve on a local disk
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / "shard-000009.parquet").write_bytes(b"not ours to delete on a planted manifest's word")
    planted_manifest(store, 5, shard)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and images not in p.parents}
    for more in ([], ["--overwrite"]):
        result = CliRunner().invoke(app, batch_args(images, out, tiny_dir, "--output-format", "parquet", *more))
        assert result.exit_code == 2, (result.output, result.exception)
        [line] = error_lines(result.output)
        assert "shard-000005.json" in line and "shard" in line and "Traceback" not in result.output, line
        assert {p: p.read_bytes() for p in before if p.is_file()} == before  # nothing deleted or changed


def test_a_hostile_manifest_on_an_s3_server_deletes_nothing_outside_the_prefix(s3, tiny_dir, images, monkeypatch):
    """Issue 33 item 2: on an object store, ``shard-000001/../../victim.txt`` deleted ``bucket/victim.txt``
    (outside the output's prefix) on --overwrite. Now the run is refused in one line and no object changes."""
    filesystem, query = s3
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    with filesystem.open_output_stream("bucket/victim.txt") as f:
        f.write(b"keep me")
    target = f"s3://bucket/hostile{query}"
    store = finished_shard(target)
    planted_manifest(store, 1, "shard-000001/../../victim.txt")
    before = s3_keys(filesystem, "bucket")
    assert "victim.txt" in before and "hostile/shard-000000.parquet" in before
    result = CliRunner().invoke(app, batch_args(images, target, tiny_dir, "--output-format", "parquet", "--overwrite"))
    assert result.exit_code == 2, (result.output, result.exception)
    [line] = error_lines(result.output)
    assert "shard-000001.json" in line, line
    assert s3_keys(filesystem, "bucket") == before
    with filesystem.open_input_file("bucket/victim.txt") as f:
        assert f.readall() == b"keep me"


def test_only_the_toolkits_own_names_are_deleted(images, tmp_path):
    """Issue 33 item 2: --overwrite (and the removal of orphans) deletes the shard and manifest names batch writes,
    exactly, from a listing of OUT; other files that merely start like them stay, and the store refuses a path out
    of its folder."""
    out = tmp_path / "out"
    store = finished_shard(out)
    others = ["shard-000001-notes.txt", "shard-000002.parquet.bak", "shard-3.parquet", "_manifests/notes.json"]
    for name in others:
        (out / name).write_text("not batch's")
    (out / "shard-000007.tar").write_bytes(b"an orphan of batch's (no manifest)")
    report = BatchReport()
    jobs = plan_shards(find_images(images), images, store, ShardOptions("parquet"), True, report)
    assert sum(len(job.sources) for job in jobs) == 7 and not report.notes
    assert files_under(out) == sorted(others)
    for rel in ("../victim.txt", "/etc/hosts", "shard-000009/../../victim.txt", "", "./x"):
        with pytest.raises(ValueError, match="nothing deleted"):
            store.delete(rel)


def closed_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


def test_object_store_outputs_that_cannot_be_written_are_one_line_and_fast(s3, tiny_dir, images, monkeypatch):
    """Issue 33 item 6: at batch's write probe, ``-o s3://`` and ``-o gs://`` (no bucket), a missing bucket and an
    unreachable endpoint were 57-line tracebacks, exit code 1 (the endpoint after seconds of retries). Now: one
    line naming the output, exit code 2, within seconds (the probe does not retry)."""
    _, query = s3
    for key, value in S3_ENV.items():
        monkeypatch.setenv(key, value)
    unreachable = f"s3://bucket/out?endpoint_override=127.0.0.1:{closed_port()}&scheme=http&region=us-east-1"
    cases = {
        "s3://": "s3://: no bucket",
        "gs://": "gs://: no bucket",
        f"s3://no-such-bucket/out{query}": "s3://no-such-bucket/out: cannot write there",
        unreachable: "s3://bucket/out: cannot write there",
    }
    for output, named in cases.items():
        start = time.monotonic()
        result = CliRunner().invoke(app, batch_args(images, output, tiny_dir))
        elapsed = time.monotonic() - start
        assert result.exit_code == 2, (output, result.output, result.exception)
        [line] = error_lines(result.output)
        assert named in line and "Traceback" not in result.output, (output, line)
        assert elapsed < 3, (output, elapsed)


def test_clips_in_the_input_and_a_zero_shard_size_are_refused_before_any_work(tiny_dir, images, tmp_path):
    """Issue 33 items 7 and 10: videos among the images were skipped without a word, ``--shard-size 0`` ran with
    64; options of the other output format were dropped. Each is one line naming it, exit code 2, no Ray."""
    folder = tmp_path / "with_clips"
    shutil.copytree(images, folder)
    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(64))
    (folder / "sub" / "take2.MOV").write_bytes(b"\x00\x00\x00\x18ftypqt  " + bytes(64))
    out = tmp_path / "out"
    for source in (folder, f"file://{folder}"):
        result = CliRunner().invoke(app, batch_args(source, out, tiny_dir))
        assert result.exit_code == 2, (result.output, result.exception)
        [line] = error_lines(result.output)
        assert "2 video(s)" in line and "clip.mp4" in line and "sub/take2.MOV" in line and "infer" in line, line
    cases = {
        ("--output-format", "parquet", "--shard-size", "0"): "--shard-size 0: must be an integer from 1 to 1000000",
        (
            "--output-format",
            "webdataset",
            "--shard-size",
            "-1",
        ): "--shard-size -1: must be an integer from 1 to 1000000",
        ("--shard-size", "8"): "--shard-size: only with --output-format parquet or webdataset",
        ("--previews", "--normals-dtype", "uint8"): "--normals-dtype, --previews: only with --output-format",
        ("--output-format", "parquet", "--outputs", "depth_npy"): "--outputs: only with --output-format files",
    }
    for more, named in cases.items():
        result = CliRunner().invoke(app, batch_args(images, out, tiny_dir, *more))
        assert result.exit_code == 2, (more, result.output, result.exception)
        [line] = error_lines(result.output)
        assert named in line, (more, line)
    assert not out.exists() or not any(out.iterdir())
