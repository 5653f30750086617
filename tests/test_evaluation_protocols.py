"""``evaluate --protocol fe2e|marigold`` against a transcription of the official evaluation code
(tests/official_evaluation.py), on small synthetic datasets written in each benchmark's own layout."""

from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import official_evaluation as official
import pytest
import torch
from PIL import Image

from fe2e_deploy.engines.base import Engine
from fe2e_deploy.evaluation.datasets import open_dataset
from fe2e_deploy.evaluation.metrics import DEPTH_METRICS, NORMAL_METRICS
from fe2e_deploy.evaluation.protocols import check_protocol
from fe2e_deploy.evaluation.resize import cv2_resize_linear
from fe2e_deploy.evaluation.run import evaluate_engine, shard_mean

DATA = Path(__file__).parent / "data"


class ImageEngine(Engine):
    """Deterministic maps that depend on every input pixel, so that each resize of the path shows in the scores."""

    name = "image-engine"

    def run(self, x: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        ramp = torch.linspace(-0.1, 0.1, x.shape[-1])
        depth = (0.45 + 0.35 * x.mean(1, keepdim=True) + ramp).clamp(0, 1)
        normals = torch.cat([0.7 * x[:, :1], 0.6 * x[:, 1:2] - 0.1, -(0.3 + 0.6 * x[:, 2:3].abs())], 1)
        return depth, normals.clamp(-1, 1)


def scene(width: int, height: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured image, its depth (a tilted plane with a bump, metres) and normals (unit, facing the camera)."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    depth = 1.5 + 3.0 * v + 0.8 * u + 0.7 * np.exp(-((u - 0.4) ** 2 + (v - 0.5) ** 2) / 0.02)
    gray = np.log(depth) / np.log(depth.max())
    texture = rng.normal(0, 0.08, (height, width, 3))
    rgb = np.clip(np.stack([gray, 1 - gray, 0.5 + 0.3 * np.sin(12 * u)], -1) + texture, 0, 1)
    gy, gx = np.gradient(depth)
    normals = np.stack([gx * width / 4, gy * height / 4, -np.ones_like(depth)], -1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    return (rgb * 255).round().astype(np.uint8), depth, normals


def save_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)


def save_depth_png(path: Path, depth: np.ndarray, scale: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(depth * scale).astype(np.uint16)).save(path)


# -- datasets written in Marigold's layouts (what its evaluation tars hold, with a split list) ---------------


def write_depth_set(root: Path, kind: str) -> Path:
    """Two samples of ``kind`` in its official layout; returns the split list."""
    lines = []
    sizes = {"nyu": (160, 120), "kitti": (1230, 360), "eth3d": (1290, 330), "diode": (128, 96), "scannet": (160, 120)}
    width, height = sizes[kind]
    for i in range(2):
        rgb, depth, _ = scene(width, height, seed=10 * i + len(kind))
        if kind == "nyu":
            names = [f"test/bathroom/rgb_{i:04d}.png", f"test/bathroom/depth_{i:04d}.png"]
            depth[:6, :] = 0.0  # no measurement
            depth[-4:, :] = 12.0  # beyond 10 m
            save_depth_png(root / names[1], depth, 1000)
            names.append(f"test/bathroom/filled_{i:04d}.png")
            save_depth_png(root / names[2], depth, 1000)
        elif kind == "kitti":
            names = [f"2011_09_26/drive_{i}/image_02/data/{i:010d}.png", f"drive_{i}/groundtruth/{i:010d}.png"]
            sparse = np.where(np.random.default_rng(i).random(depth.shape) < 0.3, depth * 10, 0.0)  # LiDAR-like
            save_depth_png(root / names[1], sparse, 256)
            names.append("721.5377")
        elif kind == "eth3d":
            names = [f"rgb/courtyard/images/dslr_images/DSC_{i:04d}.JPG", f"depth/courtyard/DSC_{i:04d}.JPG"]
            raw = depth.astype(np.float32)
            raw[:10] = np.inf  # no depth
            (root / names[1]).parent.mkdir(parents=True, exist_ok=True)
            raw.tofile(root / names[1])
        elif kind == "diode":
            stem = f"indoors/scene_00019/scan_00183/00019_00183_indoors_{i:03d}_010"
            names = [f"{stem}.png", f"{stem}_depth.npy", f"{stem}_depth_mask.npy"]
            (root / names[1]).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / names[1], (depth * 0.5).astype(np.float32)[..., None])  # under DIODE's 0.6 m in places
            mask = np.ones_like(depth)
            mask[:, :20] = 0
            np.save(root / names[2], mask.astype(np.float32))
        else:
            names = [f"scene0000_0{i}/color/{i:06d}.jpg", f"scene0000_0{i}/depth/{i:06d}.png"]
            save_depth_png(root / names[1], depth, 1000)
        save_rgb(root / names[0], rgb)
        lines.append(" ".join(names))
    if kind == "kitti":
        lines.append("2011_09_26/drive_9/image_02/data/0000000009.png None 721.5377")  # dropped, as official
    split = root.parent / f"{kind}_split.txt"
    split.write_text("\n".join(lines) + "\n")
    return split


def official_depth_dataset(root: Path, kind: str, split: Path, monkeypatch):
    if kind == "eth3d":  # the official loader hardcodes ETH3D's 4032 x 6048; the synthetic frames are smaller
        monkeypatch.setattr(official.ETH3DDataset, "HEIGHT", 330)
        monkeypatch.setattr(official.ETH3DDataset, "WIDTH", 1290)
    return official.DEPTH_DATASETS[kind](filename_ls_path=str(split), dataset_dir=str(root))


def assert_metrics_equal(ours: dict, theirs: dict, keys, rel: float = 1e-6) -> None:
    for key in keys:
        assert ours[key] == pytest.approx(float(theirs[key]), rel=rel, abs=1e-12), (key, ours[key], theirs[key])


@pytest.mark.parametrize(
    "kind,alignment",
    [(kind, "log") for kind in ("nyu", "kitti", "eth3d", "diode", "scannet")] + [("nyu", "depth"), ("diode", "depth")],
)
def test_fe2e_protocol_matches_the_official_depth_evaluation(tmp_path, monkeypatch, kind, alignment):
    root = tmp_path / kind
    split = write_depth_set(root, kind)
    data = open_dataset(root, "depth", kind, split_file=split)
    assert data.layout == "marigold-split" and len(data) == 2
    report = evaluate_engine(ImageEngine(), data, "depth", alignment, progress=False, protocol="fe2e")
    assert report["protocol"] == "fe2e" and report["num_images"] == 2
    theirs = official.evaluation_depth(
        ImageEngine(),
        official_depth_dataset(root, kind, split, monkeypatch),
        {"log": "log_space", "depth": "least_square"}[alignment],
    )
    assert_metrics_equal(report["metrics"], theirs, DEPTH_METRICS)


@pytest.mark.parametrize("kind,alignment", [("eth3d", "disparity"), ("nyu", "disparity"), ("kitti", "log")])
def test_marigold_protocol_matches_marigolds_path(tmp_path, monkeypatch, kind, alignment):
    """Antialiased input and output resizes; ETH3D fits its alignment on a copy no wider than 1024."""
    root = tmp_path / kind
    split = write_depth_set(root, kind)
    data = open_dataset(root, "depth", kind, split_file=split)
    report = evaluate_engine(ImageEngine(), data, "depth", alignment, progress=False, protocol="marigold")
    theirs = official.marigold_evaluation_depth(
        ImageEngine(),
        official_depth_dataset(root, kind, split, monkeypatch),
        {"log": "log_space", "disparity": "least_square_disparity"}[alignment],
        alignment_max_res=1024 if kind == "eth3d" else None,
    )
    assert_metrics_equal(report["metrics"], theirs, DEPTH_METRICS)
    fe2e = evaluate_engine(ImageEngine(), data, "depth", alignment, progress=False, protocol="fe2e")
    if kind == "kitti":  # cropped to 1216 x 352, FE2E's own size: no resize at all, in either protocol
        assert fe2e["metrics"] == report["metrics"]
    else:
        assert fe2e["metrics"]["abs_rel"] != report["metrics"]["abs_rel"]  # their resizes differ


# -- DSINE's dsine_eval/<set> layouts, with FE2E's split lists ---------------------------------------------------


def write_normal_set(root: Path, dataset: str, names: list[str], width: int = 64, height: int = 48) -> None:
    for i, name in enumerate(names):
        rgb, _, normals = scene(width, height, seed=i + 3)
        image = root / name
        save_rgb(image, rgb)
        stem = image.with_name(image.name[: image.name.rindex("_img")] + "_normal")
        if dataset in ("nyuv2", "scannet") and i == 0:
            png = np.round((normals + 1) / 2 * 255).astype(np.uint8)
            png[:5] = 0  # no GT
            Image.fromarray(png).save(stem.with_suffix(".png"))
        elif dataset in ("nyuv2", "scannet"):  # GeoNet / FrameNet .npy, x axis flipped by the loader
            flipped = normals * np.array([-1.0, 1.0, 1.0])
            flipped[:, :4] = 0.0
            np.save(stem.with_suffix(".npy"), flipped.astype(np.float32))
        elif dataset in ("ibims", "sintel"):
            import OpenEXR  # noqa: PLC0415

            exr = normals.astype(np.float32)
            exr[:3] *= 0.4  # norm under 0.5: no GT
            header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
            OpenEXR.File(header, {"RGB": exr}).write(str(stem.with_suffix(".exr")))
        else:  # OASIS: the normals of a box, in its own axes
            roi = (normals[10:40, 8:50] * np.array([-1.0, -1.0, 1.0])).astype(np.float32)
            roi[:2] = 0.0
            box = {"min_y": 10, "max_y": 39, "min_x": 8, "max_x": 49, "normal": roi}
            stem.with_suffix(".pkl").write_bytes(pickle.dumps(box))


NORMAL_SETS = {
    "nyu": ("nyuv2", ["test/000000_img.png", "test/000001_img.png"]),
    "scannet": ("scannet", ["scene0532_00/000000_img.png", "scene0220_02/000450_img.png"]),
    "ibims": ("ibims", ["ibims/corridor_01_img.png", "ibims/corridor_02_img.png"]),
    "sintel": ("sintel", ["alley_1/frame_0001_img.png", "alley_1/frame_0002_img.png"]),
    "oasis": ("oasis", ["val/246011_ALI_img.png", "val/246017_ALI_img.png"]),
}


@pytest.mark.parametrize("kind", list(NORMAL_SETS))
def test_fe2e_protocol_matches_the_official_normal_evaluation(tmp_path, kind):
    if kind in ("ibims", "sintel"):
        pytest.importorskip("OpenEXR")
    dataset, names = NORMAL_SETS[kind]
    root = tmp_path / "dsine_eval" / dataset
    write_normal_set(root, dataset, names)
    split = tmp_path / "split.txt"
    split.write_text("\n".join(names) + "\n")
    data = open_dataset(root, "normals", kind, split_file=split)
    assert data.layout == "dsine-split"
    report = evaluate_engine(ImageEngine(), data, "normals", progress=False, protocol="fe2e")
    theirs = official.evaluation_normal(ImageEngine(), str(root), dataset, names)
    assert_metrics_equal(report["metrics"], theirs, NORMAL_METRICS)
    assert sum(r["valid_pixels"] for r in report["per_image"]) < 2 * 64 * 48  # the masks removed pixels


def test_the_bundled_normal_splits_are_fe2e_lists(tmp_path):
    """Without --split-file the normal kinds read FE2E's own lists (here: a folder missing its images)."""
    root = tmp_path / "dsine_eval" / "nyuv2"
    root.mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"test/000000_img\.png: image not found"):
        open_dataset(root, "normals", "nyu")
    write_normal_set(root, "nyuv2", ["test/000000_img.png", "test/000001_img.png"])
    data = open_dataset(root, "normals", "nyu", max_images=2)
    assert [item.name for item in data.items] == ["test/000000_img.png", "test/000001_img.png"]


def test_generic_layout_scores_like_the_official_layout(tmp_path, monkeypatch):
    """The same NYUv2 samples arranged in the generic layout get the same numbers (kind rules apply to both)."""
    root = tmp_path / "nyu"
    split = write_depth_set(root, "nyu")
    generic = tmp_path / "generic"
    for line in split.read_text().split("\n")[:2]:
        rgb, depth, _ = line.split()[:3]
        stem = Path(rgb).stem
        save_rgb(generic / "rgb" / f"{stem}.png", np.asarray(Image.open(root / rgb)))
        save_depth_png(generic / "depth" / f"{stem}.png", np.asarray(Image.open(root / depth)) / 1000, 1000)
    a = evaluate_engine(ImageEngine(), open_dataset(root, "depth", "nyu", split_file=split), "depth", protocol="fe2e")
    b = evaluate_engine(ImageEngine(), open_dataset(generic, "depth", "nyu"), "depth", protocol="fe2e", progress=False)
    assert a["metrics"] == b["metrics"]


# -- the resizes ---------------------------------------------------------------------------------------------


def test_cv2_linear_resize_reproduces_opencv_4_8_1():
    """Values that OpenCV 4.8.1.78 (the version FE2E pins) computed: shrinks, enlargements, 2x, odd factors."""
    doc = json.loads((DATA / "cv2_inter_linear_4.8.1.json").read_text())
    for case in doc["cases"]:
        x = np.array(case["input"], dtype=np.float32)
        expected = np.array(case["output"], dtype=np.float32)
        got = cv2_resize_linear(x, tuple(case["size"]))
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=3e-7, atol=2e-6)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        cv2_resize_linear(np.zeros((2, 3, 3), np.float32), (4, 4))


def test_protocols_differ_from_infer_by_their_resizes(tmp_path):
    """fe2e resizes the input without antialiasing (the textured images show it) and the output once."""
    root = tmp_path / "nyu"
    split = write_depth_set(root, "nyu")
    data = open_dataset(root, "depth", "nyu", split_file=split)
    fe2e = evaluate_engine(ImageEngine(), data, "depth", progress=False, protocol="fe2e")
    infer = evaluate_engine(ImageEngine(), data, "depth", progress=False, protocol="infer")
    assert all(fe2e["metrics"][k] != infer["metrics"][k] for k in ("abs_rel", "sq_rel", "rmse", "rmse_log"))
    with pytest.raises(ValueError, match="protocol 'official' not supported"):
        evaluate_engine(ImageEngine(), data, "depth", progress=False, protocol="official")
    with pytest.raises(ValueError, match="depth only"):
        check_protocol("marigold", "normals")


def test_shard_mean_is_the_official_multi_gpu_average():
    """evaluation.py: rank r scores images [r * (N // G), (r + 1) * (N // G)) (the last rank: to N); the
    result is np.mean over ranks of each rank's MetricTracker average."""
    rng = np.random.default_rng(7)
    values = [{"abs_rel": float(v)} for v in rng.random(11)]
    chunk = 11 // 3
    ranks = [values[0:chunk], values[chunk : 2 * chunk], values[2 * chunk :]]
    expected = np.mean([np.mean([v["abs_rel"] for v in rank]) for rank in ranks])
    assert shard_mean(values, list(range(11)), 11, 3)["abs_rel"] == pytest.approx(expected, rel=1e-12)
    overall = np.mean([v["abs_rel"] for v in values])
    assert shard_mean(values, list(range(11)), 11, 1)["abs_rel"] == pytest.approx(overall, rel=1e-12)
    assert abs(expected - overall) > 1e-4  # unequal shards weigh images unequally


def test_marigold_tar_is_read_in_place(tmp_path):
    """The evaluation tars as downloaded (members ./<path>) give the same samples as the extracted folder."""
    import tarfile  # noqa: PLC0415

    root = tmp_path / "diode"
    split = write_depth_set(root, "diode")
    archive = tmp_path / "diode_val.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    folder = open_dataset(root, "depth", "diode", split_file=split)
    packed = open_dataset(archive, "depth", "diode", split_file=split)
    for a, b in zip(folder, packed, strict=True):
        assert a.name == b.name and np.array_equal(a.gt, b.gt) and np.array_equal(a.valid, b.valid)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    bad = split.read_text().replace("_000_010_depth.npy", "_000_010_dpth.npy")
    (tmp_path / "bad.txt").write_text(bad)
    with pytest.raises(FileNotFoundError, match=r"dpth\.npy: depth ground truth not found"):
        open_dataset(archive, "depth", "diode", split_file=tmp_path / "bad.txt")


# -- non-finite ground truth is invalid in every loader ---------------------------------------------------------

POISON = {(20, 30): np.nan, (25, 35): np.inf, (30, 45): -np.inf}  # pixels with valid GT in every set below


def write_generic_set(root: Path, task: str, mask: bool = False) -> Path:
    """Two 64 x 48 samples of the generic layout with .npy GT (and .npy masks); returns sample 0's GT file."""
    for i in range(2):
        rgb, depth, normals = scene(64, 48, seed=20 + i)
        save_rgb(root / "rgb" / f"s{i}.png", rgb)
        for sub, array in (("depth", depth), ("normals", normals), ("mask", np.ones((48, 64)))):
            if sub in (task, "mask" if mask else None):
                (root / sub).mkdir(parents=True, exist_ok=True)
                np.save(root / sub / f"s{i}.npy", array.astype(np.float32))
    return root / task / "s0.npy"


def ground_truth_file(root: Path, case: str, split: Path | None) -> Path:
    """The GT file that gets the non-finite pixels."""
    if case in ("nyu-npy", "ibims-exr", "oasis-pkl"):
        dataset, names = NORMAL_SETS[case.split("-")[0]]
        image = root / names[1 if case == "nyu-npy" else 0]  # nyuv2: sample 1 is the .npy one
        suffix = {"nyu-npy": ".npy", "ibims-exr": ".exr", "oasis-pkl": ".pkl"}[case]
        return image.with_name(image.name[: image.name.rindex("_img")] + "_normal" + suffix)
    return root / split.read_text().split()[1]  # eth3d, diode: the first line's depth


def set_pixels(path: Path, values: dict, shape: tuple[int, int], normals: bool) -> None:
    """Write ``values`` (``{(y, x): v}``) into a GT file; normals get ``v`` in their x channel (0: all three)."""

    def edit(array: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
        for (y, x), v in values.items():
            if normals and v == 0:
                array[y - dy, x - dx, :] = 0.0
            elif normals:
                array[y - dy, x - dx, 0] = v
            else:
                array[y - dy, x - dx, ...] = v
        return array

    if path.suffix == ".npy":
        np.save(path, edit(np.load(path)))
    elif path.suffix == ".pkl":
        box = pickle.loads(path.read_bytes())
        box["normal"] = edit(box["normal"], box["min_y"], box["min_x"])
        path.write_bytes(pickle.dumps(box))
    elif path.suffix == ".exr":
        import OpenEXR  # noqa: PLC0415

        from fe2e_deploy.evaluation.official_layouts import read_exr_rgb  # noqa: PLC0415

        header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
        OpenEXR.File(header, {"RGB": edit(read_exr_rgb(path))}).write(str(path))
    else:  # ETH3D's raw float32
        edit(np.fromfile(path, dtype=np.float32).reshape(shape)).tofile(path)


NON_FINITE_CASES = {  # case: task, kind, how the GT is stored
    "generic-depth": ("depth", "generic"),
    "generic-depth-diode-mask": ("depth", "diode"),  # the mask alone is the valid region
    "generic-normals": ("normals", "generic"),
    "eth3d-raw": ("depth", "eth3d"),
    "diode-npy": ("depth", "diode"),
    "diode-tar": ("depth", "diode"),
    "nyu-npy": ("normals", "nyu"),
    "ibims-exr": ("normals", "ibims"),
    "oasis-pkl": ("normals", "oasis"),
}


def non_finite_dataset(root: Path, case: str, how: str):
    """``case``'s dataset with the POISON pixels: ``clean`` (untouched), ``poisoned`` (NaN, +Inf, -Inf) or
    ``masked`` (made invalid the loader's own way: zero GT, or DIODE's mask)."""
    task, kind = NON_FINITE_CASES[case]
    split = None
    if case.startswith("generic"):
        gt = write_generic_set(root, task, mask=kind == "diode")
    elif task == "depth":
        split = write_depth_set(root, kind)
        gt = ground_truth_file(root, case, split)
    else:
        dataset, names = NORMAL_SETS[kind]
        write_normal_set(root, dataset, names)
        split = root.parent / f"{case}.txt"
        split.write_text("\n".join(names) + "\n")
        gt = ground_truth_file(root, case, split)
    shape = {"eth3d-raw": (330, 1290)}.get(case, (0, 0))
    if how == "poisoned":
        set_pixels(gt, POISON, shape, task == "normals")
    elif how == "masked" and kind == "diode":
        mask = gt.with_name(gt.name.replace("_depth.npy", "_depth_mask.npy")) if split else gt.parent.parent / "mask"
        mask = mask / gt.name if mask.is_dir() else mask
        set_pixels(mask, dict.fromkeys(POISON, 0.0), shape, False)
    elif how == "masked":
        set_pixels(gt, dict.fromkeys(POISON, 0.0), shape, task == "normals")
    if case == "diode-tar":
        archive = root.parent / f"{root.name}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        root = archive
    return open_dataset(root, task, kind, split_file=split)


@pytest.mark.parametrize("case", list(NON_FINITE_CASES))
def test_non_finite_ground_truth_is_invalid_in_every_loader(tmp_path, case):
    """NaN, +Inf and -Inf GT pixels are left out, exactly as if the loader had found no GT there."""
    if case == "ibims-exr":
        pytest.importorskip("OpenEXR")
    task = NON_FINITE_CASES[case][0]
    data = {how: non_finite_dataset(tmp_path / how / "data", case, how) for how in ("clean", "poisoned", "masked")}
    valid = {how: sum(int(s.valid.sum()) for s in d) for how, d in data.items()}
    assert valid["poisoned"] == valid["masked"] == valid["clean"] - len(POISON), valid
    for protocol in ("fe2e", "infer"):
        poisoned, masked = (
            evaluate_engine(ImageEngine(), data[how], task, progress=False, protocol=protocol)
            for how in ("poisoned", "masked")
        )
        keys = DEPTH_METRICS if task == "depth" else NORMAL_METRICS
        assert all(np.isfinite(poisoned["metrics"][k]) for k in keys), poisoned["metrics"]
        for key in keys:
            assert poisoned["metrics"][key] == pytest.approx(masked["metrics"][key], rel=1e-12, abs=0), (protocol, key)


# -- a truncated Marigold tar ------------------------------------------------------------------------------------


def diode_tar(tmp_path: Path) -> tuple[Path, Path, int]:
    """DIODE's two samples as a tar read in place, its split list, and an offset in the middle of the data of
    the second sample's depth (the archive's fifth of six files)."""
    root = tmp_path / "diode"
    split = write_depth_set(root, "diode")
    archive = tmp_path / "diode_val.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname=".")
    with tarfile.open(archive) as tar:
        member = tar.getmember("./" + split.read_text().splitlines()[1].split()[1])
    return archive, split, member.offset_data + member.size // 2


def test_a_tar_truncated_inside_a_member_is_one_line_naming_it(tmp_path):
    from typer.testing import CliRunner  # noqa: PLC0415

    import fe2e_deploy.cli.evaluate_cmd  # noqa: F401, PLC0415  registers the command
    from fe2e_deploy.cli import app  # noqa: PLC0415

    archive, split, cut = diode_tar(tmp_path)
    archive.write_bytes(archive.read_bytes()[:cut])
    with pytest.raises(ValueError, match=r"diode_val\.tar: truncated or corrupt tar archive"):
        open_dataset(archive, "depth", "diode", split_file=split)
    args = ["evaluate", "--engine", str(tmp_path / "no-model"), "--dataset", str(archive), "--task", "depth"]
    result = CliRunner().invoke(app, [*args, "--dataset-kind", "diode", "--split-file", str(split), "--no-progress"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(archive) in errors[0] and "truncated" in errors[0], result.output


def test_a_member_cut_short_after_indexing_is_one_unreadable_sample(tmp_path):
    """The archive shrinks while it is read (a copy still being written): that sample alone is reported."""
    archive, split, cut = diode_tar(tmp_path)
    data = open_dataset(archive, "depth", "diode", split_file=split)
    archive.write_bytes(archive.read_bytes()[:cut])  # the same file, which the dataset holds open
    report = evaluate_engine(ImageEngine(), data, "depth", progress=False, protocol="fe2e")
    assert [r["name"] for r in report["per_image"]] == [data.items[0].name]
    (entry,) = report["unreadable"]
    assert entry["name"] == data.items[1].name
    assert str(archive) in entry["reason"] and "_001_010_depth.npy" in entry["reason"], entry["reason"]
