"""Evaluation datasets on disk, and ``fe2e-deploy evaluate`` / ``compare`` end to end on the tiny model."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import fe2e_deploy.cli.evaluate_cmd  # noqa: F401  registers the commands
from fe2e_deploy.cli import app
from fe2e_deploy.evaluation.datasets import open_dataset
from fe2e_deploy.evaluation.metrics import DEPTH_METRICS, NORMAL_METRICS

runner = CliRunner()
W, H = 64, 48


def plane(width: int = W, height: int = H) -> tuple[np.ndarray, np.ndarray]:
    """A tilted plane seen by a pinhole camera: its depth and (constant) normal."""
    n = np.array([0.2, -0.3, -1.0]) / np.linalg.norm([0.2, -0.3, -1.0])
    v, u = np.mgrid[0:height, 0:width] + 0.5
    r = np.stack([(u - width / 2) / 50, (v - height / 2) / 50, np.ones((height, width))], axis=-1)
    return -2.0 / (r @ n), np.broadcast_to(n, r.shape).copy()


def normals_png(normals: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round((normals + 1) / 2 * 255).astype(np.uint8))


def depth_png(depth: np.ndarray, scale: float) -> Image.Image:
    return Image.fromarray(np.round(depth * scale).astype(np.uint16))


@pytest.fixture()
def dataset(tmp_path):
    """Two 64x48 images: one with .npy GT, one with PNG GT (16-bit depth in mm) and a mask."""
    root = tmp_path / "ds"
    for sub in ("rgb", "depth", "normals", "mask"):
        (root / sub).mkdir(parents=True)
    depth, normals = plane()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "rgb" / f"im{i}.png")
    np.save(root / "depth" / "im0.npy", depth.astype(np.float32))
    np.save(root / "normals" / "im0.npy", normals.astype(np.float32))
    depth_png(depth, 1000).save(root / "depth" / "im1.png")
    normals_png(normals).save(root / "normals" / "im1.png")
    mask = np.full((H, W), 255, np.uint8)
    mask[:, :10] = 0
    Image.fromarray(mask).save(root / "mask" / "im1.png")
    return root


def evaluate_args(tiny_dir, root, task, *extra):
    return [
        "evaluate",
        "--engine",
        str(tiny_dir),
        "--dataset",
        str(root),
        "--task",
        task,
        "--processing-res",
        "64x48",
        "--no-progress",
        *extra,
    ]


# -- datasets ---------------------------------------------------------------------------------------


def test_generic_layout_decodes_npy_png_and_masks(dataset):
    depth, normals = plane()
    data = open_dataset(dataset, "depth")
    s0, s1 = list(data)
    assert (s0.name, s1.name) == ("im0.png", "im1.png")
    assert np.allclose(s0.gt, depth, rtol=1e-6) and np.abs(s1.gt - depth).max() <= 0.0005 + 1e-9
    assert s0.valid.all() and not s1.valid[:, :10].any() and s1.valid[:, 10:].all()
    assert s0.image.size == (W, H) and s0.image.mode == "RGB"
    n0, n1 = list(open_dataset(dataset, "normals"))
    assert np.allclose(n0.gt, normals, atol=1e-6)
    assert np.abs(n1.gt - normals).max() < 1 / 255 + 1e-9
    assert data.describe()["max_depth"] is None and data.describe()["png_depth_scale"] == 1000


def test_dataset_kinds_set_range_scale_and_crops(tmp_path):
    root = tmp_path / "kitti"
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    gt = np.full((375, 1242), 20.0)
    gt[:, :3] = 90.0  # beyond KITTI's 80 m
    Image.new("RGB", (1242, 375)).save(root / "rgb" / "a.png")
    depth_png(gt, 256).save(root / "depth" / "a.png")
    (sample,) = open_dataset(root, "depth", "kitti")
    assert sample.image.size == (1216, 352) and sample.gt.shape == (352, 1216)  # benchmark crop
    assert np.allclose(sample.gt, 20.0)  # decoded with /256
    rows = np.flatnonzero(sample.valid.any(axis=1))
    assert rows[0] == int(0.3324324 * 352) and rows[-1] == int(0.91351351 * 352) - 1  # Eigen crop

    root = tmp_path / "nyu"
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    Image.new("RGB", (640, 480)).save(root / "rgb" / "a.jpg")
    np.save(root / "depth" / "a.npy", np.full((480, 640), 3.0))
    (sample,) = open_dataset(root, "depth", "nyu")
    assert sample.valid.sum() == (471 - 45) * (601 - 41)
    (root / "dataset.json").write_text(json.dumps({"min_depth": 0.5, "max_depth": 2.0}))
    data = open_dataset(root, "depth", "nyu")
    assert (data.kind.min_depth, data.kind.max_depth) == (0.5, 2.0) and not next(iter(data)).valid.any()
    with pytest.raises(ValueError, match="depth ground truth only"):
        open_dataset(root, "normals", "kitti")
    (root / "dataset.json").write_text(json.dumps({"max_depht": 2.0}))
    with pytest.raises(ValueError, match="dataset.json"):
        open_dataset(root, "depth")


def test_dsine_layout(tmp_path):
    _, normals = plane()
    scene = tmp_path / "nyuv2" / "test"
    scene.mkdir(parents=True)
    gt = normals_png(normals)
    raw = np.asarray(gt).copy()
    raw[:5] = 0  # DSINE: all-zero pixels have no GT
    for stem in ("000000", "000001"):
        Image.new("RGB", (W, H)).save(scene / f"{stem}_img.png")
        Image.fromarray(raw).save(scene / f"{stem}_normal.png")
    data = open_dataset(tmp_path / "nyuv2", "normals", "dsine")
    assert [it.name for it in data.items] == ["test/000000_img.png", "test/000001_img.png"]
    sample = next(iter(data))
    assert sample.valid.sum() == (H - 5) * W
    assert len(open_dataset(tmp_path / "nyuv2", "normals", "dsine", max_images=1)) == 1
    (scene / "000001_normal.png").unlink()
    with pytest.raises(FileNotFoundError, match="000001_normal.png"):
        open_dataset(tmp_path / "nyuv2", "normals", "dsine")
    with pytest.raises(ValueError, match="normals ground truth only"):
        open_dataset(tmp_path / "nyuv2", "depth", "dsine")


def test_bad_ground_truth_files(dataset):
    Image.fromarray(np.full((H, W), 3, np.uint8)).save(dataset / "depth" / "im1.png")  # 8-bit
    data = open_dataset(dataset, "depth")
    with pytest.raises(ValueError, match="16-bit"):
        data.load(data.items[1])
    np.save(dataset / "normals" / "im0.npy", np.zeros((H, W)))
    data = open_dataset(dataset, "normals")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        data.load(data.items[0])


# -- evaluate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("task,keys", [("depth", DEPTH_METRICS), ("normals", NORMAL_METRICS)])
def test_evaluate_writes_a_json_report(tiny_dir, dataset, tmp_path, task, keys):
    out = tmp_path / "report.json"
    result = runner.invoke(app, evaluate_args(tiny_dir, dataset, task, "--json", str(out)))
    assert result.exit_code == 0, result.output
    assert keys[0] in result.output and str(out) in result.output
    report = json.loads(out.read_text())
    assert report["task"] == task and report["num_images"] == 2 and len(report["per_image"]) == 2
    assert set(keys) <= set(report["metrics"])
    assert all(math.isfinite(report["metrics"][k]) for k in keys)
    assert not list(tmp_path.glob(".report*"))  # no temporary file left behind

    again = runner.invoke(app, evaluate_args(tiny_dir, dataset, task, "--json", str(out)))
    assert again.exit_code == 2 and "--overwrite" in again.output
    again = runner.invoke(
        app, evaluate_args(tiny_dir, dataset, task, "--json", str(out), "--overwrite", "--max-images", "1")
    )
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["num_images"] == 1


def test_evaluate_depth_alignments_differ(tiny_dir, dataset):
    tables = []
    for alignment in ("log", "depth", "disparity"):
        result = runner.invoke(app, evaluate_args(tiny_dir, dataset, "depth", "--alignment", alignment))
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        tables.append(lines[next(i for i, line in enumerate(lines) if "abs_rel" in line) + 1])
    assert len(set(tables)) == 3


@pytest.mark.parametrize(
    "change,expected",
    [
        ("missing-folder", "not-there"),
        ("missing-depth", "im1.npy"),
        ("bad-task", "task"),
        ("bad-alignment", "alignment"),
        ("bad-kind", "--dataset-kind"),
        ("bad-res", "resolution"),
    ],
)
def test_evaluate_user_errors_exit_2(tiny_dir, dataset, change, expected):
    root, task, extra = dataset, "depth", []
    if change == "missing-folder":
        root = dataset / "not-there"
    elif change == "missing-depth":
        (dataset / "depth" / "im1.png").unlink()
    elif change == "bad-task":
        task = "albedo"
    elif change == "bad-alignment":
        extra = ["--alignment", "median"]
    elif change == "bad-kind":
        extra = ["--dataset-kind", "middlebury"]
    else:
        extra = ["--processing-res", "60x48"]
    result = runner.invoke(app, evaluate_args(tiny_dir, root, task, *extra))
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and expected in result.output


# -- compare -----------------------------------------------------------------------------------------


def test_compare_an_engine_with_itself(tiny_dir, dataset, tmp_path):
    out = tmp_path / "cmp.json"
    args = [
        "compare",
        str(dataset / "rgb"),
        "--engine",
        str(tiny_dir),
        "--engine",
        str(tiny_dir),
        "--processing-res",
        "64x48",
        "--no-progress",
        "--json",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "depth_abs_rel" in result.output and "worst" in result.output
    report = json.loads(out.read_text())
    assert report["num_images"] == 2 and [r["name"] for r in report["per_image"]] == ["im0.png", "im1.png"]
    for key in ("depth_abs_rel", "depth_rel_l2", "normals_mean_deg"):
        assert report["overall"][key] == pytest.approx(0.0, abs=1e-4)


def test_compare_needs_two_engines(tiny_dir, dataset):
    result = runner.invoke(app, ["compare", str(dataset / "rgb"), "--engine", str(tiny_dir), "--no-progress"])
    assert result.exit_code == 2 and "twice" in result.output
    result = runner.invoke(
        app,
        ["compare", str(dataset / "nothing"), "--engine", str(tiny_dir), "--engine", str(tiny_dir), "--no-progress"],
    )
    assert result.exit_code == 2 and "nothing" in result.output


def test_evaluate_protocols_and_split_files(tiny_dir, tmp_path):
    """The benchmark's own layout (a Marigold split list) and --protocol: fe2e by default, infer differs."""
    root = tmp_path / "nyu"
    depth, _ = plane()
    lines = []
    rng = np.random.default_rng(1)
    for i in range(2):
        (root / "test").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "test" / f"rgb_{i}.png")
        depth_png(depth + i, 1000).save(root / "test" / f"depth_{i}.png")
        lines.append(f"test/rgb_{i}.png test/depth_{i}.png test/filled_{i}.png")
    split = tmp_path / "filename_list_test.txt"
    split.write_text("\n".join(lines) + "\n")
    reports, outputs = {}, {}
    for protocol in (None, "infer"):
        out = tmp_path / f"{protocol}.json"
        extra = ["--dataset-kind", "nyu", "--split-file", str(split), "--json", str(out)]
        extra += ["--protocol", protocol] if protocol else []
        result = runner.invoke(app, evaluate_args(tiny_dir, root, "depth", *extra))
        assert result.exit_code == 0, result.output
        reports[protocol], outputs[protocol] = json.loads(out.read_text()), result.output
    assert reports[None]["protocol"] == "fe2e" and reports[None]["dataset"]["layout"] == "marigold-split"
    assert "protocol fe2e" in outputs[None] and "protocol infer" in outputs["infer"]
    assert reports[None]["metrics"]["abs_rel"] != reports["infer"]["metrics"]["abs_rel"]
    bad = runner.invoke(
        app, evaluate_args(tiny_dir, root, "normals", "--dataset-kind", "nyu", "--protocol", "marigold")
    )
    assert bad.exit_code == 2 and "depth only" in bad.output
    missing = runner.invoke(
        app, evaluate_args(tiny_dir, root, "depth", "--dataset-kind", "nyu", "--split-file", str(tmp_path / "no.txt"))
    )
    assert missing.exit_code == 2 and "no.txt" in missing.output
    no_layout = runner.invoke(app, evaluate_args(tiny_dir, root, "depth", "--dataset-kind", "nyu"))
    assert no_layout.exit_code == 2 and "--split-file" in no_layout.output


# -- OASIS .pkl ground truth that cannot be unpickled: that sample is unreadable, the run goes on -----------


class RunsCode:
    """Pickles to a call of ``os.system``: what a hostile .pkl would hold."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os  # noqa: PLC0415

        return (os.system, (self.command,))


def test_evaluate_reports_corrupt_and_hostile_oasis_pickles_as_unreadable(tiny_dir, tmp_path):
    root = tmp_path / "oasis"
    (root / "val").mkdir(parents=True)
    marker = tmp_path / "pwned"
    _, normals = plane()
    box = {"min_y": 5, "max_y": 40, "min_x": 6, "max_x": 50, "normal": normals[5:41, 6:51].astype(np.float32)}
    good = pickle.dumps(box)
    payloads = {"a": good, "b": good[: len(good) // 2], "c": pickle.dumps(RunsCode(f"touch {marker}"))}
    rng = np.random.default_rng(2)
    for stem, payload in payloads.items():
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "val" / f"{stem}_img.png")
        (root / "val" / f"{stem}_normal.pkl").write_bytes(payload)
    split = tmp_path / "split.txt"
    split.write_text("".join(f"val/{stem}_img.png\n" for stem in payloads))
    out = tmp_path / "report.json"
    extra = ["--dataset-kind", "oasis", "--split-file", str(split), "--json", str(out)]
    result = runner.invoke(app, evaluate_args(tiny_dir, root, "normals", *extra))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    assert not marker.exists()  # the hostile pickle never ran
    report = json.loads(out.read_text())
    assert [r["name"] for r in report["per_image"]] == ["val/a_img.png"]
    assert [r["name"] for r in report["unreadable"]] == ["val/b_img.png", "val/c_img.png"]
    for stem, entry in zip("bc", report["unreadable"], strict=True):
        assert f"{stem}_normal.pkl" in entry["reason"] and f"{stem}_normal.pkl" in result.output
    assert "posix.system is not allowed" in report["unreadable"][1]["reason"]
    assert all(math.isfinite(report["metrics"][k]) for k in NORMAL_METRICS)


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # EOFError
        b"\x80\x05\x95garbage",  # UnpicklingError
        b"\x80\x04K\x01\x94h\x05.",  # a memo key that is not there
        pickle.dumps([1, 2, 3]),  # not a dict
        pickle.dumps({"min_y": 0, "max_y": 3, "min_x": 0, "max_x": 3, "normal": np.zeros(3)}),  # 1-D normals
        pickle.dumps({"min_y": 0, "max_y": 3, "min_x": 0, "max_x": 3, "normal": np.ones((2, 2, 3))}),  # box != roi
    ],
)
def test_every_bad_oasis_pickle_is_an_unreadable_sample(tmp_path, payload):
    from fe2e_deploy.files.images import UnreadableInput  # noqa: PLC0415

    (tmp_path / "val").mkdir()
    Image.new("RGB", (W, H)).save(tmp_path / "val" / "a_img.png")
    (tmp_path / "val" / "a_normal.pkl").write_bytes(payload)
    (tmp_path / "split.txt").write_text("val/a_img.png\n")
    data = open_dataset(tmp_path, "normals", "oasis", split_file=tmp_path / "split.txt")
    with pytest.raises(UnreadableInput, match="a_normal.pkl"):
        data.load(data.items[0])
