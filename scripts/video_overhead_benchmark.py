"""Host-side cost of `infer` on a 1080p video with a near-zero engine: decode + encode overhead per frame, and memory.

Writes a synthetic 1080p H.264 clip (a textured pattern drifting, ``--seconds`` at 24 fps), then runs
``run_infer`` on it with an engine that returns constant maps at once (128x96 processing size), so what
is timed is the host side: decoding, resizing to the processing size, upsampling the maps to 1080p (CPU
engines do it here; GPU engines on the device), temporal alignment, colour maps and H.264 encoding of
the two preview videos. RSS is sampled every 0.5 s: it must stay flat whatever the clip's length.

    python scripts/video_overhead_benchmark.py build/video_overhead [--seconds 20] [--outputs depth_npy]
"""

from __future__ import annotations

import argparse
import resource
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from fe2e_deploy.engines.base import Engine
from fe2e_deploy.engines.options import EngineOptions
from fe2e_deploy.files.outputs import OutputOptions
from fe2e_deploy.files.video import FrameRange, VideoWriter
from fe2e_deploy.infer import run_infer
from fe2e_deploy.video_infer import FRAME_KINDS, VideoOptions

WIDTH, HEIGHT, FPS = 1920, 1080, 24


class ZeroEngine(Engine):
    """Constant maps (a depth ramp, normals facing the camera) at the processing size, in no time."""

    name = "zero"

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        depth = torch.linspace(0, 1, h).view(1, 1, h, 1).expand(b, 1, h, w).contiguous()
        normals = torch.zeros(b, 3, h, w)
        normals[:, 2] = -1
        return depth + 0.01 * x[:, :1], normals


def write_clip(path: Path, seconds: float) -> Path:
    rng = np.random.default_rng(0)
    texture = (rng.random((HEIGHT // 8, (WIDTH + 2 * FPS * 64) // 8, 3)) * 255).astype(np.uint8)
    texture = texture.repeat(8, 0).repeat(8, 1)  # 8x8 blocks, drifting 8 pixels a frame
    writer = VideoWriter(path, Fraction(FPS))
    for i in range(int(seconds * FPS)):
        offset = (8 * i) % (texture.shape[1] - WIDTH)
        writer.write(texture[:, offset : offset + WIDTH])
    return writer.close()


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--outputs", default="", help=f"per-frame files too, among {', '.join(FRAME_KINDS)}")
    parser.add_argument("--temporal", default="align")
    parser.add_argument("--log-every", type=float, default=0.0, help="print the RSS every N s (0: at the end)")
    args = parser.parse_args()
    clip = args.work / "clip1080p.mp4"
    t0 = time.perf_counter()
    if not clip.exists():
        write_clip(clip, args.seconds)
    print(f"clip: {clip} ({args.seconds:.0f} s at {FPS} fps, written in {time.perf_counter() - t0:.0f} s)")

    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        start = last = time.perf_counter()
        while not stop.is_set():
            now = time.perf_counter()
            samples.append((now - start, rss_mb()))
            if args.log_every and now - last >= args.log_every:
                print(f"{now - start:7.0f} s: RSS {samples[-1][1]:.0f} MB", flush=True)
                last = now
            stop.wait(0.5)

    kinds = tuple(k for k in args.outputs.split(",") if k)
    engine = ZeroEngine(EngineOptions(device="cpu", processing_res=(128, 96)))
    before = rss_mb()
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    cpu = time.process_time()
    report = run_infer(
        engine,
        clip,
        args.work / "out",
        overwrite=True,
        progress=False,
        outputs=OutputOptions(kinds=("depth_npy",)),
        images=[],
        videos=[clip],
        video=VideoOptions(FrameRange(), args.temporal, kinds),
    )
    cpu = time.process_time() - cpu
    stop.set()
    thread.join()
    assert not report.failed, report.failed
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    end = samples[-1][0]
    quarters = [max(rss for t, rss in samples if q * end / 4 <= t <= (q + 1) * end / 4) for q in range(4)]
    print(report.summary())
    print(
        f"{report.frames} frames 1920x1080: {report.total_seconds / report.frames:.3f} s per frame end to end "
        f"(decode+prepare {report.read_seconds / report.frames:.3f}, "
        f"engine {report.predict_seconds / report.frames:.4f}, "
        f"align+colour+encode+files {report.write_seconds / report.frames:.3f} s per frame, overlapped); "
        f"CPU {cpu / report.frames:.3f} s per frame (all threads); RSS before {before:.0f} MB, highest in each quarter "
        f"of the run {', '.join(f'{q:.0f}' for q in quarters)} MB, peak {peak:.0f} MB"
    )


if __name__ == "__main__":
    main()
