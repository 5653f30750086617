"""``infer``: run an engine over a folder of images and write depth and normal maps.

Follow an image: :func:`find_images` lists it, :func:`read_image` opens it, ``engine.predict``
(for the reference engine: :class:`fe2e_deploy.pipeline.FE2EPipeline`) returns its
:class:`~fe2e_deploy.pipeline.Prediction`, and :func:`fe2e_deploy.outputs.write_prediction` writes
the five files named by :func:`fe2e_deploy.outputs.output_paths`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from .engines import Engine
from .files.atomic import check_writable_dir
from .files.images import find_images, read_image
from .files.outputs import output_names, output_paths, write_prediction


@dataclass
class InferReport:
    """What ``infer`` did with each image (an image is in exactly one list)."""

    written: list[Path] = field(default_factory=list)  # none of its outputs existed, or --overwrite
    completed: list[Path] = field(default_factory=list)  # some of its outputs were missing: all five rewritten
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # all five outputs exist
    failed: list[tuple[Path, str]] = field(default_factory=list)
    predict_seconds: float = 0.0
    total_seconds: float = 0.0

    @property
    def predicted(self) -> int:
        """Images that went through the engine (written or completed)."""
        return len(self.written) + len(self.completed)

    @property
    def seconds_per_image(self) -> float:
        return self.total_seconds / max(1, self.predicted)

    def summary(self) -> str:
        completed = f"{len(self.completed)} completed (some outputs were missing), " if self.completed else ""
        return (
            f"{len(self.written)} image(s) written, {completed}"
            f"{len(self.skipped)} skipped (all outputs exist), {len(self.failed)} failed; "
            f"{self.seconds_per_image:.3f} s per image end to end "
            f"({self.predict_seconds / max(1, self.predicted):.3f} s in the engine)"
        )


def check_infer_paths(input_dir: str | Path, output_dir: str | Path) -> list[Path]:
    """The images under ``input_dir`` (outside ``output_dir``); refuses a file as the folder, a folder with no
    image, and an output folder that cannot be written, before any model is loaded."""
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    if input_dir.is_file():
        raise NotADirectoryError(f"{input_dir}: is a file; give the folder that holds the images")
    out_resolved = output_dir.resolve()
    images = [p for p in find_images(input_dir) if not p.resolve().is_relative_to(out_resolved)]
    if not images:
        raise FileNotFoundError(f"{input_dir}: no .jpg/.jpeg/.png images found")
    check_writable_dir(output_dir)
    return images


def run_infer(
    engine: Engine,
    input_dir: str | Path,
    output_dir: str | Path,
    overwrite: bool = False,
    progress: bool = True,
    batch_size: int = 1,
) -> InferReport:
    """Predict every image under ``input_dir``; unreadable images are reported, not fatal.

    An image whose five outputs all exist is skipped (unless ``overwrite``); one with only some of them
    is predicted again and all five are rewritten (``completed``). Outputs are named by
    :func:`output_names` (unique in each folder); an image whose outputs would be another image's fails.
    ``batch_size`` images go to the engine together (``Engine.predict_batch``); outputs are the same.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    images = check_infer_paths(input_dir, output_dir)
    names = output_names(path.relative_to(input_dir) for path in images)
    report = InferReport()
    start = time.perf_counter()
    bar = tqdm(total=len(images), desc=f"infer ({engine.name})", unit="img", disable=not progress)
    owners: dict[Path, Path] = {}  # output file -> the image it belongs to
    pending: list[tuple[Path, dict[str, Path], Image.Image, bool]] = []
    for index, path in enumerate(images):
        rel = path.relative_to(input_dir)
        paths = output_paths(output_dir, rel, names[rel])
        existing = [p for p in paths.values() if p.exists()]
        taken = next((owners[p] for p in paths.values() if p in owners), None)
        if taken is not None:
            _fail(report, bar, path, f"its outputs ({paths['depth_npy'].name}, ...) would be those of {taken}")
        elif len(existing) == len(paths) and not overwrite:
            owners.update(dict.fromkeys(paths.values(), path))
            report.skipped.append((path, f"all its outputs exist, e.g. {existing[0]} (pass --overwrite to replace)"))
            bar.update()
        else:
            owners.update(dict.fromkeys(paths.values(), path))
            try:
                image = read_image(path)
            except (OSError, ValueError, Image.DecompressionBombError) as exc:
                _fail(report, bar, path, f"unreadable image: {exc}")
            else:
                try:
                    engine.processing_size(image)  # a size the engine does not have, or too large, fails alone
                except ValueError as exc:
                    _fail(report, bar, path, str(exc))
                else:
                    pending.append((path, paths, image, bool(existing) and not overwrite))
        if pending and (len(pending) == batch_size or index == len(images) - 1):
            t0 = time.perf_counter()
            predictions = engine.predict_batch([image for _, _, image, _ in pending])
            report.predict_seconds += time.perf_counter() - t0
            for (path, paths, _, completing), prediction in zip(pending, predictions, strict=True):
                if not prediction.is_finite():  # an engine that computes NaN/Inf: nothing written for this image
                    _fail(report, bar, path, f"{engine.name} returned NaN or Inf in its maps (nothing written)")
                    continue
                write_prediction(paths, prediction)
                (report.completed if completing else report.written).append(path)
                bar.update()
            pending = []
    bar.close()
    report.total_seconds = time.perf_counter() - start
    return report


def _fail(report: InferReport, bar: tqdm, path: Path, reason: str) -> None:
    report.failed.append((path, reason))
    tqdm.write(f"warning: skipping {path}: {reason}")
    bar.update()
