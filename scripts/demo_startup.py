"""Seconds from starting ``fe2e-deploy demo`` to its page answering (BENCHMARKS.md, "Web demo").

``python scripts/demo_startup.py [--runs N] [--command fe2e-deploy]``: each run starts the demo on a free
127.0.0.1 port, polls ``/`` every 0.1 s until it answers 200, prints the seconds, then stops it (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def startup_seconds(command: str, timeout: float = 120.0) -> float:
    port = free_port()
    t0 = time.perf_counter()
    process = subprocess.Popen(
        [command, "demo", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    try:
        while time.perf_counter() - t0 < timeout:
            if process.poll() is not None:
                raise SystemExit(f"the demo exited with {process.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"no answer within {timeout:g} s")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--command", default="fe2e-deploy")
    args = parser.parse_args()
    for run in range(args.runs):
        print(f"run {run}: page answered {startup_seconds(args.command):.1f} s after start", flush=True)


if __name__ == "__main__":
    main()
