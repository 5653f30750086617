"""``serve`` hardened (issue #22): nothing listens beyond --host, slow clients and a full queue leave /healthz
answering, --max-batch-size is honoured, one-line start-up errors, JSON errors, a bounded image size, and a
stop on SIGTERM that drains the requests in progress and leaves no Ray process behind.

One ``serve`` with its own local Ray (no --address: the socket and stop tests are about the cluster it starts)
serves every HTTP test of the module; the last test stops it with SIGTERM to its process group. The start-up
error tests run the command in subprocesses (most fail before Ray starts).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest
from conftest import free_port, scene_image
from PIL import Image

ray = pytest.importorskip("ray")  # the ray extra
psutil = pytest.importorskip("psutil")  # comes with ray

from ray_helpers import alive, assert_processes_end  # noqa: E402

from fe2e_deploy.cluster.serve import cluster_exposure  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SERVE = [sys.executable, "-m", "fe2e_deploy", "serve"]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
BODY_TIMEOUT_S = 2.0  # the server's --body-timeout-s
MAX_ONGOING = 20  # the server's --max-ongoing-requests


def request(url: str, body: bytes | None = None, timeout: float = 60) -> tuple[int, Message, bytes]:
    """(status, headers (case-insensitive), body) of a GET (no body) or POST."""
    req = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


def json_error(body: bytes) -> str:
    """The one-line reason of an error answer ``{"error": "..."}`` (nothing else in it)."""
    answer = json.loads(body)
    assert list(answer) == ["error"] and "\n" not in answer["error"], answer
    return answer["error"]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    port: int
    log: Path


def start(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``serve`` in a session of its own (as a service manager starts it: a signal to its group is the stop)."""
    return subprocess.Popen(
        [*SERVE, *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=os.environ | (env or {}),
    )


def wait_up(proc: subprocess.Popen, url: str, log: Path, limit_s: float = 240) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if request(url + "/healthz", timeout=5)[0] == 200:
                return
        except (OSError, http.client.HTTPException):  # not up yet (or, briefly, another server on the port)
            pass
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"serve did not start: {log.read_text()[-3000:]}")


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``serve --max-batch-size 16 --batch-wait-ms 1000`` (a request waits up to 1 s for 15 others) with its own
    local Ray (Ray's token auth off), a 2 s body timeout and 20 /predict requests at once. No --engine: the
    replica opens the embedded demo model (issue 33 item 16; the engine-file path is test_cluster's server)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    args = ["--port", str(port), "--processing-res", "64x48", "--cpus-per-replica", "1"]
    args += ["--max-batch-size", "16", "--batch-wait-ms", "1000", "--max-body-mb", "1"]
    args += ["--body-timeout-s", str(BODY_TIMEOUT_S), "--max-ongoing-requests", str(MAX_ONGOING)]
    proc = start(args, log, {"RAY_AUTH_MODE": "disabled"})  # the campaign's worst case: nothing may be reachable
    url = f"http://127.0.0.1:{port}"
    wait_up(proc, url, log)
    yield Server(proc, url, port, log)
    if proc.poll() is None:  # the stop test did not run
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def scene() -> bytes:
    return png(scene_image(64, 48, seed=3))


def health(url: str) -> dict:
    status, _, body = request(url + "/healthz", timeout=10)
    assert status == 200
    return json.loads(body)


def non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (connecting to it tests what the network reaches)."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


def test_nothing_listens_beyond_loopback(server):
    """S1: every TCP socket the serve process and its Ray processes listen on is on 127.0.0.1 (the --host): in
    particular each replica's internal gRPC server (Ray 2.60 binds it on every interface, and it unpickles)."""
    listening = []
    for process in tree(server.proc.pid):
        try:
            name = " ".join(process.cmdline())[:60]
            sockets = process.net_connections(kind="tcp")
        except psutil.Error:
            continue
        listening += [(c.laddr.ip, c.laddr.port, name) for c in sockets if c.status == psutil.CONN_LISTEN]
    assert any("ServeReplica" in name for *_, name in listening), listening  # the replica's servers are seen
    assert ("127.0.0.1", server.port) in {(ip, port) for ip, port, _ in listening}, listening
    assert [s for s in listening if s[0] not in LOOPBACK] == []
    outside = non_loopback_address()
    if outside is None:
        pytest.skip("no non-loopback address to connect from")
    for _, port, name in listening:  # nothing answers at the machine's network address
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((outside, port)) != 0, (port, name)


def test_the_cluster_check_refuses_an_unauthenticated_network_cluster():
    """S1 on a cluster: nodes on network addresses without Ray's token auth are refused; loopback is fine."""
    assert cluster_exposure({"127.0.0.1"}, token_auth=False) is None
    assert cluster_exposure({"10.0.0.5", "10.0.0.6"}, token_auth=True) is None
    reason = cluster_exposure({"10.0.0.5"}, token_auth=False)
    assert "10.0.0.5" in reason and "RAY_AUTH_MODE=token" in reason


def slow_client(port: int, declared: int = 100_000) -> socket.socket:
    """A client that sends the headers and half of a declared body, then waits (holds its request open)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {declared}\r\n\r\n"
    s.sendall(head.encode() + b"\x89PNG" + bytes(declared // 2))
    return s


def read_answer(s: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
    )
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return int(head.split(b" ")[1]), rest


def timed_health(url: str) -> float:
    start = time.monotonic()
    try:
        assert request(url + "/healthz", timeout=5)[0] == 200
    except TimeoutError:
        return float("inf")
    return time.monotonic() - start


def test_slow_clients_do_not_stop_healthz_and_get_408(server, scene):
    """M1: 8 clients holding half a body: /healthz answers within 1 s, a whole request is answered, and the slow
    ones get 408 (JSON) after --body-timeout-s."""
    clients = [slow_client(server.port) for _ in range(8)]
    try:
        time.sleep(0.5)  # their requests have reached the replica
        assert timed_health(server.url) < 1.0
        status, _, _ = request(server.url + "/predict?output_res=processing", scene, timeout=30)
        assert status == 200
        for client in clients:
            client.settimeout(BODY_TIMEOUT_S + 10)
            status, body = read_answer(client)
            assert status == 408 and "--body-timeout-s" in json_error(body)
    finally:
        for client in clients:
            client.close()


def test_a_full_replica_answers_503_with_retry_after_and_healthz_still_answers(server, scene):
    """M1: past --max-ongoing-requests, /predict is answered 503 at once, JSON with Retry-After; /healthz answers."""
    clients = [slow_client(server.port) for _ in range(MAX_ONGOING)]
    try:
        time.sleep(1.0)
        start = time.monotonic()
        status, headers, body = request(server.url + "/predict", scene, timeout=10)
        assert time.monotonic() - start < 1.0
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert "retry" in json_error(body)
        assert timed_health(server.url) < 1.0
    finally:
        for client in clients:
            client.close()


def test_max_batch_size_16_runs_16_concurrent_requests_in_one_or_two_engine_calls(server, scene):
    """M6: Ray Serve's default of 5 requests per replica used to cap the batch at 4-5."""
    time.sleep(BODY_TIMEOUT_S + 0.5)  # the slow clients of the tests above are gone
    before = health(server.url)
    barrier = threading.Barrier(16)
    statuses: list[int] = []

    def post() -> None:
        barrier.wait(timeout=30)
        statuses.append(request(server.url + "/predict?output_res=processing", scene, timeout=60)[0])

    threads = [threading.Thread(target=post) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    after = health(server.url)
    assert statuses == [200] * 16
    assert after["images"] - before["images"] == 16
    assert after["engine_calls"] - before["engine_calls"] <= 2, (before, after)


def test_the_replica_opens_the_embedded_demo_model_without_engine(server, scene):
    """Issue 33 item 16: serve without --engine answers the embedded demo model's maps, as infer opens it."""
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from fe2e_deploy.engines import EngineOptions  # noqa: PLC0415
    from fe2e_deploy.web_demo import open_demo_engine  # noqa: PLC0415

    status, _, body = request(server.url + "/predict", scene)
    assert status == 200
    maps = np.load(io.BytesIO(body))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the replica (--cpus-per-replica 1)
    try:
        with open_demo_engine(None, EngineOptions(device="cpu", processing_res=(64, 48))) as engine:
            expected = engine.predict(Image.open(io.BytesIO(scene)))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(maps["depth"], expected.depth, rtol=0, atol=1e-6)
    np.testing.assert_allclose(maps["normals"], expected.normals, rtol=0, atol=1e-6)


def test_every_error_is_one_line_of_json(server):
    """L5: 404 and 405 (FastAPI's own) answer {"error": ...} as /predict's errors do."""
    status, _, body = request(server.url + "/nowhere")
    assert status == 404 and json_error(body)
    status, _, body = request(server.url + "/predict")  # GET
    assert status == 405 and json_error(body)
    status, _, body = request(server.url + "/healthz", b"x")  # POST
    assert status == 405 and json_error(body)
    # A request HTTP cannot parse is answered by uvicorn inside Ray Serve's proxy, before any app: a plain-text 400
    # (what is left of L5; nothing in Ray Serve 2.60 lets the proxy's protocol errors be changed).
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")


def test_an_image_with_too_many_pixels_is_refused_from_its_header(server):
    """A 25 MP PNG of a few KB (over the default --max-image-pixels of 6048x4032) is refused with 413 before it is
    decoded."""
    big = png(Image.new("RGB", (5000, 5000)))
    assert len(big) < 200_000
    start = time.monotonic()
    status, _, body = request(server.url + "/predict?output_res=processing", big, timeout=60)
    assert status == 413 and "5000x5000" in json_error(body) and "--max-image-pixels" in json_error(body)
    assert time.monotonic() - start < 1.0  # not decoded (25 MP take seconds here)


def test_format_ply_answers_a_point_cloud_and_a_video_body_is_415(server, scene):
    """Issue 23: ``format=ply`` (with ``fov``) is infer's point cloud; a video body is refused with 415, one line."""
    from plyfile import PlyData  # noqa: PLC0415

    status, headers, body = request(server.url + "/predict?format=ply&fov=90&output_res=processing", scene)
    assert status == 200 and headers["content-type"] == "application/x-ply"
    ply = PlyData.read(io.BytesIO(body))
    assert len(ply["vertex"].data) == 64 * 48 and any("--fov 90" in c for c in ply.comments)
    status, _, body = request(server.url + "/predict", b"\x00\x00\x00\x18ftypmp42" + bytes(2000))
    assert status == 415 and "video (MP4/MOV)" in json_error(body)
    status, _, body = request(server.url + "/predict?format=ply&intrinsics=1,2", scene)
    assert status == 400 and "intrinsics" in json_error(body)

    # issue 33 item 15: at most 100k points by default (the demo's; every pixel before: 618 MB for 24 MP)
    large = png(scene_image(400, 300, seed=4))  # 120k pixels at output_res=input
    status, _, body = request(server.url + "/predict?format=ply", large)
    assert status == 200 and len(PlyData.read(io.BytesIO(body))["vertex"].data) == 100_000
    status, _, body = request(server.url + "/predict?format=ply&max_points=100001", large)
    assert status == 400 and "--max-points" in json_error(body)
    # and an MPEG-TS clip is a video (415), not an unreadable image (400)
    from test_serve_formats import mpeg_ts  # noqa: PLC0415

    status, _, body = request(server.url + "/predict", mpeg_ts())
    assert status == 415 and "video (MPEG-TS)" in json_error(body)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--max-body-mb", "nan"], "--max-body-mb"),
        (["--batch-wait-ms", "inf"], "--batch-wait-ms"),
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["--body-timeout-s", "-1"], "--body-timeout-s"),
        (["--port", "70000"], "--port 70000"),
        (["--host", "999.1.1.1"], "--host '999.1.1.1'"),
        (["--max-image-pixels", "0"], "--max-image-pixels"),
        (["--max-points", "0"], "--max-points 0"),
    ],
)
def test_a_bad_option_is_named_in_one_line_before_ray_starts(tiny_dir, args, named):
    """L6, M3: each bad value is named; exit code 2, one line, at once (no Ray)."""
    start = time.monotonic()
    result = subprocess.run([*SERVE, "--engine", str(tiny_dir), *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], result.stderr[-2000:]
    assert time.monotonic() - start < 30  # no Ray start-up (about 20 s here)


def test_a_port_in_use_is_one_line(tiny_dir):
    """M3: the port is tried before Ray starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [*SERVE, "--engine", str(tiny_dir), "--port", str(port)]
        result = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port} is in use" in lines[0], result.stderr[-2000:]


def test_an_engine_a_replica_cannot_open_is_one_line(tiny_dir, tmp_path):
    """M3: a truncated dit.safetensors fails in the replica; serve says why in one line (exit code 2) and stops its
    Ray."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in tiny_dir.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    data = (broken / "dit.safetensors").read_bytes()
    (broken / "dit.safetensors").write_bytes(data[: len(data) // 2])
    log = tmp_path / "serve.log"
    proc = start(["--engine", str(broken), "--port", str(free_port()), "--processing-res", "64x48"], log)
    try:
        rc = proc.wait(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    errors = [line for line in log.read_text().splitlines() if line.startswith(("error", "Traceback"))]
    assert rc == 2, log.read_text()[-3000:]
    assert len(errors) == 1 and "a replica could not open the engine" in errors[0], log.read_text()[-3000:]
    assert "dit.safetensors" in errors[0]


def test_sigterm_during_start_up_stops_cleanly(tiny_dir, tmp_path):
    """L4: SIGTERM to the group while Ray starts: a prompt exit 0, no C++ stack dump, no Ray process left."""
    log = tmp_path / "serve.log"
    proc = start(["--engine", str(tiny_dir), "--port", str(free_port()), "--processing-res", "64x48"], log)
    deadline = time.monotonic() + 120
    seen: list[psutil.Process] = []
    while time.monotonic() < deadline and not any("raylet" in " ".join(p.cmdline()) for p in seen):
        time.sleep(0.2)
        try:
            seen = tree(proc.pid)
        except psutil.Error:
            break
    assert proc.poll() is None, log.read_text()[-3000:]
    time.sleep(1.0)  # Ray is starting
    seen = tree(proc.pid)
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        rc = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    text = log.read_text()
    assert rc == 0 and "*** SIGTERM" not in text and "Traceback" not in text, text[-3000:]
    time.sleep(3)
    assert alive(seen) == []


def test_kill_9_of_serve_takes_its_local_cluster_with_it(tiny_dir, tmp_path):
    """kill -9 of serve (the OOM killer, a crashed supervisor): no Ray process of the cluster it started remains
    20 s later (Ray's dashboard and runtime-env agents would wait ~60 s for the dead GCS)."""
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start(["--engine", str(tiny_dir), "--port", str(port), "--processing-res", "64x48"], log)
    try:
        wait_up(proc, f"http://127.0.0.1:{port}", log)
        processes = tree(proc.pid)[1:]
        names = " ".join(p.name() for p in processes)
        assert "raylet" in names and "gcs_server" in names and "Agent" in names, names
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert_processes_end(processes, within_s=20)


def test_sigterm_to_the_group_drains_requests_in_progress_and_stops_fast(server, scene):
    """M4, L3: SIGTERM to serve's whole process group (systemd, timeout, kill -- -PGID) while requests wait in a
    batch: they are answered 200, serve exits 0 within seconds and leaves no Ray process. (Runs last: it stops
    the module's server.)"""
    processes = tree(server.proc.pid)
    results: list[int | str] = []

    def post() -> None:
        try:
            results.append(request(server.url + "/predict?output_res=processing", scene, timeout=60)[0])
        except OSError as exc:
            results.append(repr(exc))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # in the replica, waiting up to 1 s for a batch
    start = time.monotonic()
    os.killpg(server.proc.pid, signal.SIGTERM)
    rc = server.proc.wait(timeout=60)
    stopped_s = time.monotonic() - start
    for thread in threads:
        thread.join(timeout=30)
    assert results == [200] * 4, (results, server.log.read_text()[-3000:])
    assert rc == 0, server.log.read_text()[-3000:]
    assert stopped_s < 15, stopped_s
    time.sleep(3)
    assert alive(processes) == []
    with pytest.raises(OSError):  # nothing listens any more
        request(server.url + "/healthz", timeout=5)
