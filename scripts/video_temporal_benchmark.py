"""Temporal consistency of `infer` on videos: the scene-clip benchmark of BENCHMARKS.md ("Videos").

For each clip of :mod:`fe2e_deploy.scene_clips` (rendered with exact depth), runs `infer` on the demo
model with ``--temporal align`` and ``--temporal none`` (``--outputs depth_npy``) and reports:

- AbsRel with ONE scale/shift (FE2E's log-depth alignment) fitted for the whole clip (per shot on the
  ``cut`` clip), against the mean of per-frame fits;
- flicker: mean over consecutive frames and pixels of |change of the aligned log prediction - change of
  the true log depth| (aligned with the clip's one fit; the pair across a cut left out).

    python scripts/video_temporal_benchmark.py build/video_clips [--frames 48] [--json OUT.json] \
        [--picture docs/video_frames.png --picture-clip turn]

``--picture``: a sheet of frames of one clip (columns): the input, the true depth (one colour scale for the
clip), and the depth preview ``infer`` writes with ``--temporal none`` and with ``align``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fe2e_deploy.evaluation.metrics import LOG_DEPTH_MAX, align_depth, depth_metrics, fit_scale_shift
from fe2e_deploy.scene_clips import CLIPS, write_clip


def clip_metrics(pred: np.ndarray, gt: np.ndarray, shots: list[slice]) -> dict[str, float]:
    """One-fit (per shot) and per-frame AbsRel, and flicker, of predictions against depth (both ``[T, H, W]``)."""
    valid = gt > 0
    log_gt = np.log(np.where(valid, gt, 1.0))
    aligned = np.empty(pred.shape, np.float64)
    for shot in shots:
        scale, shift = fit_scale_shift(pred[shot], log_gt[shot], valid[shot])
        aligned[shot] = np.minimum(pred[shot] * scale + shift, LOG_DEPTH_MAX)
    one = [depth_metrics(np.exp(aligned[t]), gt[t], valid[t])["abs_rel"] for t in range(len(pred))]
    per = [depth_metrics(align_depth(pred[t], gt[t], valid[t]), gt[t], valid[t])["abs_rel"] for t in range(len(pred))]
    starts = {shot.start for shot in shots}
    steps = []
    for t in range(1, len(pred)):
        if t in starts:
            continue
        both = valid[t] & valid[t - 1]
        change = (aligned[t] - aligned[t - 1]) - (log_gt[t] - log_gt[t - 1])
        steps.append(np.abs(change[both]).mean())
    return {"one_fit": float(np.mean(one)), "per_frame": float(np.mean(per)), "flicker": float(np.mean(steps))}


def oracle(gt: np.ndarray, shots: list[slice], video: Path) -> dict[str, dict[str, float]]:
    """The same figures for a perfect affine-invariant model: the exact log depth of each frame scaled to [0, 1]
    by its own 2nd-98th percentiles (as FE2E normalises its targets), then ``none`` and ``align`` (with the
    clip's pictures for the camera's motion, as ``infer`` does)."""
    from fe2e_deploy.files.video import iter_frames
    from fe2e_deploy.temporal import TemporalAligner, registration_image

    log = np.log(np.where(gt > 0, gt, 1.0)).reshape(len(gt), -1)
    lo, hi = np.percentile(log, 2, axis=1)[:, None], np.percentile(log, 98, axis=1)[:, None]
    pred = np.clip((log - lo) / (hi - lo), 0, 1).reshape(gt.shape)
    pictures = [registration_image(image) for image in iter_frames(video)]
    aligner = TemporalAligner()
    aligned = np.stack(
        [aligner.align(frame.astype(np.float32), picture) for frame, picture in zip(pred, pictures, strict=True)]
    ).astype(np.float64)
    return {"none": clip_metrics(pred, gt, shots), "align": clip_metrics(aligned, gt, shots)}


def picture(target: Path, video: Path, gt: np.ndarray, maps: dict[str, np.ndarray], columns: int = 5) -> None:
    """The README's clip sheet: rows input / true depth / none / align for ``columns`` frames spread over the clip."""
    from PIL import Image, ImageDraw

    from fe2e_deploy.files.video import iter_frames
    from fe2e_deploy.video_infer import depth_preview_fast

    picks = np.linspace(0, len(gt) - 1, columns).round().astype(int)
    frames = [image for t, image in enumerate(iter_frames(video)) if t in set(picks)]
    valid = gt > 0
    log = np.log(np.where(valid, gt, 1.0))
    lo, hi = np.percentile(log[valid], 2), np.percentile(log[valid], 98)
    rows = {
        "input": frames,
        "true depth (one scale for the clip)": [
            Image.fromarray(depth_preview_fast(np.where(valid[t], (log[t] - lo) / (hi - lo), 1.0))) for t in picks
        ],
        **{f"--temporal {mode}": [Image.fromarray(depth_preview_fast(maps[mode][t])) for t in picks] for mode in maps},
    }
    w, h, label, gap = frames[0].width * 2, frames[0].height * 2, 16, 4
    sheet = Image.new("RGB", (columns * (w + gap), len(rows) * (h + label + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, images) in enumerate(rows.items()):
        y = r * (h + label + gap)
        draw.text((2, y + 2), f"{name}  (frames {', '.join(str(t) for t in picks)})", fill="black")
        for c, image in enumerate(images):
            sheet.paste(image.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (c * (w + gap), y + label))
    tmp = target.with_name(target.name + ".tmp.png")
    sheet.save(tmp, optimize=True)
    tmp.replace(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path)
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--clips", default=",".join(CLIPS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--picture", type=Path, help="write a sheet of frames of --picture-clip (PNG)")
    parser.add_argument("--picture-clip", default="turn")
    args = parser.parse_args()

    from fe2e_deploy.engines.eager import EagerEngine
    from fe2e_deploy.engines.options import EngineOptions
    from fe2e_deploy.files.outputs import OutputOptions
    from fe2e_deploy.files.video import FrameRange
    from fe2e_deploy.infer import run_infer
    from fe2e_deploy.model_files import ModelFiles
    from fe2e_deploy.video_infer import VideoOptions

    engine = EagerEngine.from_model_files(ModelFiles.resolve(None, None, None, None, None), EngineOptions(device="cpu"))
    results = {}
    with engine:
        for kind in args.clips.split(","):
            video, depth_path = write_clip(args.work / "clips", kind, args.frames)
            gt = np.load(depth_path)
            shots = [slice(0, len(gt))] if kind != "cut" else [slice(0, len(gt) // 2), slice(len(gt) // 2, len(gt))]
            row, maps = {}, {}
            for mode in ("none", "align"):
                out = args.work / f"out_{mode}"
                t0 = time.perf_counter()
                report = run_infer(
                    engine,
                    video,
                    out,
                    overwrite=True,
                    progress=False,
                    outputs=OutputOptions(kinds=("depth_npy",)),
                    images=[],
                    videos=[video],
                    video=VideoOptions(FrameRange(), mode, ("depth_npy",)),
                )
                assert not report.failed, report.failed
                files = sorted((out / "depth_npy" / kind).glob("*_depth.npy"))
                pred = np.stack([np.load(f) for f in files]).astype(np.float64)
                maps[mode] = pred
                row[mode] = clip_metrics(pred, gt, shots)
                row[mode]["seconds"] = round(time.perf_counter() - t0, 1)
            row["oracle"] = oracle(gt, shots, video)
            if args.picture and kind == args.picture_clip:
                picture(args.picture, video, gt, maps)
            results[kind] = row
            a, n = row["align"], row["none"]
            on, oa = row["oracle"]["none"], row["oracle"]["align"]
            print(
                f"{kind:6s} none: one-fit {n['one_fit']:.4f} per-frame {n['per_frame']:.4f} "
                f"({n['one_fit'] / n['per_frame']:.3f}x) flicker {n['flicker']:.4f} | "
                f"align: one-fit {a['one_fit']:.4f} "
                f"({a['one_fit'] / a['per_frame']:.3f}x) flicker {a['flicker']:.4f} "
                f"({n['flicker'] / a['flicker']:.2f}x lower) || exact per-frame depth: none one-fit "
                f"{on['one_fit']:.4f} flicker {on['flicker']:.4f}, align one-fit {oa['one_fit']:.4f} "
                f"flicker {oa['flicker']:.4f} (per-frame fits {oa['per_frame']:.4f})",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
