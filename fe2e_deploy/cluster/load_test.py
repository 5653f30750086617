"""A bounded load test of ``serve``: N requests from C concurrent clients, throughput and latency percentiles.

``python -m fe2e_deploy.cluster.load_test http://127.0.0.1:8000 image.png --requests 200 --concurrency 8``
prints one JSON object (requests/s, p50/p90/p99 latency in ms, status counts, the server's engine calls,
hence the mean batch). Standard library only: it measures the server, not a client library.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

from ..errors import InvalidInput


def post(url: str, body: bytes, timeout: float) -> int:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def healthz(url: str) -> dict:
    with urllib.request.urlopen(url.rstrip("/") + "/healthz", timeout=30) as response:
        return json.loads(response.read())


def load_test(
    url: str, body: bytes, requests: int = 100, concurrency: int = 8, query: str = "", timeout: float = 120.0
) -> dict:
    """Send ``requests`` POST /predict with ``body`` from ``concurrency`` threads (each sends its next request
    when the last one is answered); returns throughput, latency percentiles and the status codes."""
    if requests < 1 or concurrency < 1:
        raise InvalidInput(f"requests and concurrency must be >= 1 (got {requests}, {concurrency})")
    target = url.rstrip("/") + "/predict" + query
    before = healthz(url)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    remaining = iter(range(requests))

    def client() -> None:
        while True:
            with lock:
                if next(remaining, None) is None:
                    return
            start = time.perf_counter()
            status = post(target, body, timeout)
            with lock:
                latencies.append(time.perf_counter() - start)
                statuses[status] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(min(concurrency, requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    after = healthz(url)
    calls = after["engine_calls"] - before["engine_calls"]
    ms = sorted(1000 * t for t in latencies)

    def percentile(q: float) -> float:
        return ms[min(len(ms) - 1, round(q * (len(ms) - 1)))]

    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "requests_per_s": round(requests / seconds, 2),
        "latency_ms": {
            "mean": round(statistics.fmean(ms), 1),
            "p50": round(percentile(0.5), 1),
            "p90": round(percentile(0.9), 1),
            "p99": round(percentile(0.99), 1),
        },
        "status": {str(k): v for k, v in sorted(statuses.items())},
        "engine_calls": calls,
        "mean_batch": round((after["images"] - before["images"]) / calls, 2) if calls else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8000")
    parser.add_argument("image", type=Path, help="the image file every request sends")
    parser.add_argument("--requests", type=int, default=100, help="requests in all (default 100)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--query", default="", help="query string of /predict, e.g. '?format=png&map=depth'")
    args = parser.parse_args()
    print(json.dumps(load_test(args.url, args.image.read_bytes(), args.requests, args.concurrency, args.query)))


if __name__ == "__main__":
    main()
