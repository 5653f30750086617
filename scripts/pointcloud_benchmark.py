"""Point clouds of the demo model against the true ones, on held-out scenes of the project's scene generator.

For each scene (``random_sample(seed, 128, 96)``, seeds from 1 000 000: never used in training) this runs
``infer`` as the command line does, with the true intrinsics (``--intrinsics``), the true dense depth as
``--align-to`` (a dense .npy; sky pixels are 0 = invalid) and ``--outputs pointcloud,normals_npy``, reads the PLY
back, and compares it with the true cloud (the true depth back-projected with the same intrinsics) on the pixels
with a true depth. Chamfer distance: the mean over both clouds of each point's distance to the nearest point of
the other, ``(mean d(P->Q) + mean d(Q->P)) / 2``, divided by the scene's depth range (max - min true depth).
Context: the same for a flat cloud (every pixel at the median true depth), and the point-to-point error at
the same pixel. Also checks that the PLY's normals are normals_npy's values exactly.

    python scripts/pointcloud_benchmark.py [--scenes 12] [--picture docs/pointcloud_side_view.png]

``--picture``: the first scene's image and its predicted and true clouds seen from the side (README).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from plyfile import PlyData

from fe2e_deploy.engines import EngineOptions
from fe2e_deploy.engines.eager import EagerEngine
from fe2e_deploy.files.outputs import OutputOptions
from fe2e_deploy.files.pointcloud import CameraOptions
from fe2e_deploy.infer import run_infer
from fe2e_deploy.model_files import DEMO_RESOLUTION, demo_model_files
from fe2e_deploy.scenes import random_sample

FIRST_SEED = 1_000_000


def back_project(depth: np.ndarray, fx: float, cx: float, cy: float) -> np.ndarray:
    rows, cols = np.nonzero(depth > 0)
    z = depth[rows, cols].astype(np.float64)
    return np.stack([(cols - cx) * z / fx, (rows - cy) * z / fx, z], -1)


def nearest(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Distance from each point of ``a`` to the nearest point of ``b`` (exact, in chunks of ``a``)."""
    tb = torch.from_numpy(b)
    return np.concatenate(
        [torch.cdist(torch.from_numpy(a[i : i + chunk]), tb).min(dim=1).values.numpy() for i in range(0, len(a), chunk)]
    )


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    return float((nearest(a, b).mean() + nearest(b, a).mean()) / 2)


def side_view(target: Path, image, predicted: np.ndarray, true: np.ndarray, colors: np.ndarray) -> None:
    """Input | predicted cloud | true cloud, the clouds seen from the camera's right (z to the right, up = -y)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2), gridspec_kw={"width_ratios": [1, 1.4, 1.4]})
    axes[0].imshow(image)
    axes[0].set_title("input (128x96)")
    axes[0].axis("off")
    for ax, cloud, title in ((axes[1], predicted, "predicted, --align-to"), (axes[2], true, "true")):
        ax.scatter(cloud[:, 2], -cloud[:, 1], c=colors, s=1.5, linewidths=0)
        ax.set_title(f"{title}: side view")
        ax.set_xlabel("z (m)")
        ax.set_ylabel("-y (m)")
        ax.set_aspect("equal")
    lims = [min(a.get_xlim()[0] for a in axes[1:]), max(a.get_xlim()[1] for a in axes[1:])]
    for ax in axes[1:]:
        ax.set_xlim(lims)
        ax.set_ylim(min(a.get_ylim()[0] for a in axes[1:]), max(a.get_ylim()[1] for a in axes[1:]))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=110)
    plt.close(fig)
    Image.open(buffer).convert("RGB").quantize(64).save(target, optimize=True)  # 64 colours: 1/5 of the bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--picture", type=Path, default=None, help="write the first scene's side view here")
    args = parser.parse_args()
    width, height = DEMO_RESOLUTION
    engine = EagerEngine.from_model_files(demo_model_files(), EngineOptions(device="cpu"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp, engine:
        tmp = Path(tmp)
        for i in range(args.scenes):
            seed = FIRST_SEED + i
            sample = random_sample(seed, width, height)
            folder, align, out = tmp / f"s{seed}", tmp / f"a{seed}", tmp / f"o{seed}"
            folder.mkdir()
            align.mkdir()
            sample.rgb.save(folder / "scene.png")
            np.save(align / "scene.npy", sample.depth)
            fx, cx, cy = sample.focal, (width - 1) / 2, (height - 1) / 2
            camera = CameraOptions((fx, fx, cx, cy))
            outputs = OutputOptions(("pointcloud", "normals_npy"), camera=camera)
            report = run_infer(engine, folder, out, progress=False, outputs=outputs, align_to=align)
            assert report.predicted == 1, report.failed
            vertex = PlyData.read(str(out / "pointcloud/scene_points.ply"))["vertex"].data
            normals = np.load(out / "normals_npy/scene_normals.npy")
            assert np.array_equal(np.stack([vertex[c] for c in ("nx", "ny", "nz")], -1), normals.reshape(-1, 3))
            valid = (sample.depth > 0).ravel()
            predicted = np.stack([vertex[c] for c in "xyz"], -1).astype(np.float64)[valid]
            true = back_project(sample.depth, fx, cx, cy)
            flat = back_project(np.where(sample.depth > 0, np.median(sample.depth[sample.depth > 0]), 0), fx, cx, cy)
            span = float(np.ptp(sample.depth[sample.depth > 0]))
            if args.picture is not None and i == 0:
                colors = np.stack([vertex[c] for c in ("red", "green", "blue")], -1)[valid] / 255
                side_view(args.picture, sample.rgb, predicted, true, colors)
            rows.append(
                (
                    seed,
                    span,
                    chamfer(predicted, true) / span,
                    chamfer(flat, true) / span,
                    float(np.linalg.norm(predicted - true, axis=1).mean() / span),
                )
            )
            print(f"seed {seed}: depth range {span:.2f} m, Chamfer / range {rows[-1][2]:.4f} (flat {rows[-1][3]:.4f}), "
                  f"same-pixel error / range {rows[-1][4]:.4f}")  # fmt: skip
    table = np.array([r[2:] for r in rows])
    print(
        f"{len(rows)} scenes: Chamfer / depth range mean {table[:, 0].mean():.4f} median {np.median(table[:, 0]):.4f} "
        f"max {table[:, 0].max():.4f}; flat baseline mean {table[:, 1].mean():.4f}; same-pixel error / range mean "
        f"{table[:, 2].mean():.4f}; PLY normals == normals_npy on every scene"
    )


if __name__ == "__main__":
    main()
