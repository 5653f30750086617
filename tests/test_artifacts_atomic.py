"""Artifacts are written whole or not at all: crashes (raised or kill -9), concurrent runs, leftovers, file modes,
and an export that prints no library noise.

A run that dies late must leave the complete old artifact (byte for byte), a run that completes must leave
exactly the new one (no stale file of the old one), and a run without --overwrite must never replace an output
that another run wrote meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import model_file_args, scene_image, strip_tiny
from torch import nn
from typer.testing import CliRunner

import fe2e_deploy.compile.onnx_export as export_module
import fe2e_deploy.files.atomic as atomic_module
import fe2e_deploy.merge as merge_module
import fe2e_deploy.strip as strip_module
from fe2e_deploy.artifacts.stripped import StrippedMeta
from fe2e_deploy.cli import app
from fe2e_deploy.compile.onnx_export import export_module as export_one_module
from fe2e_deploy.compile.onnx_export import export_onnx
from fe2e_deploy.files.atomic import atomic_write
from fe2e_deploy.loading import load_dit
from fe2e_deploy.loading.stripped import load_stripped
from fe2e_deploy.merge import merge_lora
from fe2e_deploy.tiny import write_tiny_model

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
SMALL = ((32, 32),)
SHARD = 300_000  # bytes: the tiny DiT (FP32, ~2.8 MB) in about ten shards

# Runs the CLI in a fresh process that SIGKILLs itself when ``module.name`` is called for the ``nth`` time:
# a deterministic kill -9 (no finally block, no exception handler runs).
KILL_AT = """
import os, signal, sys
import importlib
target = importlib.import_module(sys.argv[1])
name, nth = sys.argv[2], int(sys.argv[3])
real, calls = getattr(target, name), []

def die(*args, **kwargs):
    calls.append(1)
    if len(calls) == nth:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(target, name, die)
from fe2e_deploy.cli import app
app(sys.argv[4:], prog_name="fe2e-deploy")
"""


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder``, hidden ones included."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def visible(folder: Path) -> dict[str, str]:
    """:func:`snapshot` of the files a loader can name (no hidden temp files)."""
    return {k: v for k, v in snapshot(folder).items() if not any(part.startswith(".") for part in Path(k).parts)}


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def run_killed(module: str, name: str, nth: int, args: list[str]) -> subprocess.CompletedProcess:
    """The CLI with ``args``, killed (SIGKILL) at the ``nth`` call of ``module.name``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", KILL_AT, module, name, str(nth), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    return result


def dead_pid() -> int:
    """The PID of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def strip_args(tiny_dir: Path, out: Path, dtype: str) -> list[str]:
    return ["strip", "-o", str(out), *model_file_args(tiny_dir, lora=False), "--dtype", dtype, "--no-progress"]


def merge_sharded(tiny_dir: Path, tiny_config, out: Path, multiplier: float, **kwargs):
    return merge_lora(
        tiny_dir / "dit.safetensors",
        tiny_dir / "lora.safetensors",
        out,
        tiny_config,
        multiplier=multiplier,
        max_shard_size=SHARD,
        progress=False,
        **kwargs,
    )


def index_of(out: Path) -> Path:
    return out.with_name(out.name + ".index.json")


def late_failure(*args, **kwargs):
    raise RuntimeError("crashed late")


# --- 1. multi-file artifacts: the complete old one, the complete new one, or refused --------------------------


def test_strip_overwrite_that_fails_late_leaves_the_old_folder_whole(tiny_dir, tiny_config, tmp_path, monkeypatch):
    out = strip_tiny(tiny_dir, tiny_config, tmp_path / "stripped", torch.float32)
    before = snapshot(out)
    with monkeypatch.context() as patch:
        patch.setattr(strip_module, "stripped_meta", late_failure)  # after the weights and the VAE
        with pytest.raises(RuntimeError, match="crashed late"):
            strip_tiny(tiny_dir, tiny_config, out, torch.bfloat16, overwrite=True)
    assert snapshot(out) == before  # not new BF16 weights under the old FP32 stripped.json
    assert [p.name for p in tmp_path.iterdir()] == ["stripped"]  # no staging folder left
    (out / "stray.txt").write_text("a file of the old folder")
    strip_tiny(tiny_dir, tiny_config, out, torch.bfloat16, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted([StrippedMeta.WEIGHTS, StrippedMeta.VAE, StrippedMeta.FILE])
    assert load_stripped(out).meta.dtype == "bfloat16"
    assert [p.name for p in tmp_path.iterdir()] == ["stripped"]


@pytest.mark.slow
def test_strip_killed_during_overwrite_leaves_the_old_folder_and_the_next_run_cleans_up(tiny_dir, tmp_path):
    out = tmp_path / "stripped"
    assert runner.invoke(app, strip_args(tiny_dir, out, "fp32")).exit_code == 0
    before = snapshot(out)
    run_killed("fe2e_deploy.strip", "stripped_meta", 1, [*strip_args(tiny_dir, out, "bf16"), "--overwrite"])
    assert snapshot(out) == before
    assert hidden(tmp_path)  # the killed run's staging folder
    result = runner.invoke(app, [*strip_args(tiny_dir, out, "bf16"), "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / StrippedMeta.FILE).read_text())["dtype"] == "bfloat16"
    assert [p.name for p in tmp_path.iterdir()] == ["stripped"]  # the dead run's leftovers are gone


@pytest.mark.slow
def test_sharded_merge_killed_during_overwrite_loads_the_old_merge(tiny_dir, tiny_config, tmp_path):
    out = tmp_path / "merged" / "dit.safetensors"
    merge_sharded(tiny_dir, tiny_config, out, 0.5)
    before = visible(out.parent)
    old = load_dit(tiny_config, index_of(out), torch.float32, progress=False).state_dict()
    args = ["merge-lora", "--dit", str(tiny_dir / "dit.safetensors"), "--lora", str(tiny_dir / "lora.safetensors")]
    args += ["--out", str(out), "--model-config", str(tiny_dir / "model_config.json"), "--multiplier", "1"]
    args += ["--max-shard-size", str(SHARD), "--overwrite", "--no-progress"]
    run_killed("fe2e_deploy.merge", "handle_writer", 3, args)  # two new shards written, then kill -9
    assert visible(out.parent) == before  # not shards 1-2 at x1.0 and the rest at x0.5
    again = load_dit(tiny_config, index_of(out), torch.float32, progress=False).state_dict()
    assert all(torch.equal(old[k], again[k]) for k in old)

    report = merge_sharded(tiny_dir, tiny_config, out, 1.0, overwrite=True)
    single = tmp_path / "single.safetensors"
    merge_lora(tiny_dir / "dit.safetensors", tiny_dir / "lora.safetensors", single, tiny_config, progress=False)
    want = load_dit(tiny_config, single, torch.float32, progress=False).state_dict()
    new = load_dit(tiny_config, index_of(out), torch.float32, progress=False).state_dict()
    assert all(torch.equal(want[k], new[k]) for k in want) and not all(torch.equal(old[k], new[k]) for k in old)
    shards = set(json.loads(index_of(out).read_text())["weight_map"].values())
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([index_of(out).name, *shards])  # old shards gone
    assert sorted(p.name for p in report.files) == sorted([index_of(out).name, *shards])


def test_merge_overwrite_switching_single_and_sharded_leaves_no_stale_file(tiny_dir, tiny_config, tmp_path):
    out = tmp_path / "m" / "dit.safetensors"
    merge_lora(tiny_dir / "dit.safetensors", tiny_dir / "lora.safetensors", out, tiny_config, progress=False)
    merge_sharded(tiny_dir, tiny_config, out, 1.0, overwrite=True)
    assert not out.exists()  # the single file of the old merge would shadow the new index
    shards = set(json.loads(index_of(out).read_text())["weight_map"].values())
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([index_of(out).name, *shards])
    merge_lora(
        tiny_dir / "dit.safetensors", tiny_dir / "lora.safetensors", out, tiny_config, overwrite=True, progress=False
    )
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # the old index and its shards are gone


def test_sharded_merge_that_fails_late_leaves_the_old_merge(tiny_dir, tiny_config, tmp_path, monkeypatch):
    out = tmp_path / "merged" / "dit.safetensors"
    merge_sharded(tiny_dir, tiny_config, out, 0.5)
    before = snapshot(out.parent)
    real, calls = merge_module.handle_writer, []

    def fails_at_the_third_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_module, "handle_writer", fails_at_the_third_shard)
    with pytest.raises(OSError, match="No space"):
        merge_sharded(tiny_dir, tiny_config, out, 1.0, overwrite=True)
    assert snapshot(out.parent) == before  # nothing new, nothing left over


@pytest.mark.slow
def test_export_overwrite_that_fails_late_leaves_the_old_export_and_no_stale_check(
    tiny_dir, tiny_config, tmp_path, monkeypatch
):
    stripped = strip_tiny(tiny_dir, tiny_config, tmp_path / "stripped", torch.float32)
    out = tmp_path / "export"
    args = ["export", str(stripped), "-o", str(out), "--resolution", "32x32", "--graph", "fe2e", "--no-progress"]
    result = runner.invoke(app, [*args, "--check"])
    assert result.exit_code == 0, result.output
    assert (out / "check.json").is_file()
    before = snapshot(out)
    with monkeypatch.context() as patch:
        patch.setattr(export_module, "resolution_name", late_failure)  # used by the manifest, after the graphs
        with pytest.raises(RuntimeError, match="crashed late"):
            export_onnx(stripped, out, resolutions=SMALL, graphs=("fe2e",), dtype=torch.bfloat16, overwrite=True)
    assert snapshot(out) == before  # not BF16 weights.bin under the old float32 manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "stripped"]
    result = runner.invoke(app, [*args, "--overwrite", "--dtype", "bf16"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["compute"] == "bf16"
    files = {"manifest.json", manifest["weights"]["file"], *(g["file"] for g in manifest["graphs"].values())}
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # no check.json of the old export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "stripped"]


# --- 2. concurrent runs without --overwrite never replace each other's output ------------------------------


def test_merge_refuses_a_file_that_appeared_while_it_was_writing(tiny_dir, tiny_config, tmp_path, monkeypatch):
    out = tmp_path / "merged.safetensors"
    real = merge_module.handle_writer

    def other_run_finishes_first(*args, **kwargs):
        out.write_bytes(b"the other run's merge")
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_module, "handle_writer", other_run_finishes_first)
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_lora(tiny_dir / "dit.safetensors", tiny_dir / "lora.safetensors", out, tiny_config, progress=False)
    assert out.read_bytes() == b"the other run's merge"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_sharded_merge_refuses_an_index_that_appeared_meanwhile(tiny_dir, tiny_config, tmp_path, monkeypatch):
    out = tmp_path / "merged" / "dit.safetensors"
    real = merge_module.handle_writer

    def other_run_finishes_first(*args, **kwargs):
        index_of(out).write_text('{"weight_map": {}}')
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_module, "handle_writer", other_run_finishes_first)
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_sharded(tiny_dir, tiny_config, out, 1.0)
    assert index_of(out).read_text() == '{"weight_map": {}}'
    assert [p.name for p in out.parent.iterdir()] == [index_of(out).name]  # our shards removed again


def test_strip_refuses_a_folder_that_appeared_while_it_was_writing(tiny_dir, tiny_config, tmp_path, monkeypatch):
    out = tmp_path / "stripped"
    real = strip_module.stripped_meta

    def other_run_finishes_first(*args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / StrippedMeta.FILE).write_text("the other run's strip")
        return real(*args, **kwargs)

    monkeypatch.setattr(strip_module, "stripped_meta", other_run_finishes_first)
    with pytest.raises(FileExistsError, match="--overwrite"):
        strip_tiny(tiny_dir, tiny_config, out)
    assert snapshot(out) == {StrippedMeta.FILE: hashlib.sha256(b"the other run's strip").hexdigest()}
    assert [p.name for p in tmp_path.iterdir()] == ["stripped"]


@pytest.mark.slow
def test_export_refuses_a_folder_that_appeared_while_it_was_writing(tiny_dir, tiny_config, tmp_path, monkeypatch):
    stripped = strip_tiny(tiny_dir, tiny_config, tmp_path / "stripped", torch.float32)
    out = tmp_path / "export"
    real = export_module.resolution_name

    def other_run_finishes_first(*args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / "manifest.json").write_text("the other run's export")
        return real(*args, **kwargs)

    monkeypatch.setattr(export_module, "resolution_name", other_run_finishes_first)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_onnx(stripped, out, resolutions=SMALL, graphs=("fe2e",), progress=False)
    assert snapshot(out) == {"manifest.json": hashlib.sha256(b"the other run's export").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "stripped"]


def test_folder_outputs_refuse_a_non_empty_folder_of_another_kind(tiny_dir, tiny_config, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="not a stripped model folder"):
            strip_tiny(tiny_dir, tiny_config, mine, overwrite=overwrite)
    assert snapshot(mine) == {"notes.txt": hashlib.sha256(b"keep").hexdigest()}
    empty = tmp_path / "empty"
    empty.mkdir()
    strip_tiny(tiny_dir, tiny_config, empty)  # an empty folder may be filled
    assert (empty / StrippedMeta.FILE).is_file()


# --- 3. leftovers of killed runs, file modes -------------------------------------------------------------------


def test_stale_temps_of_dead_runs_are_removed_but_not_a_live_runs(tiny_dir, tiny_config, tmp_path):
    dead, live = dead_pid(), os.getppid()
    out = tmp_path / "merged.safetensors"
    stale_file = tmp_path / f".merged.tmp{dead}.safetensors"
    stale_file.write_bytes(b"half a merge")
    busy = tmp_path / f".merged.tmp{live}.safetensors"
    busy.write_bytes(b"being written by a live process")
    other = tmp_path / f".other.tmp{dead}.safetensors"  # another target's: cleaned when that one is written
    other.write_bytes(b"not ours")
    merge_lora(tiny_dir / "dit.safetensors", tiny_dir / "lora.safetensors", out, tiny_config, progress=False)
    assert not stale_file.exists() and busy.exists() and other.exists()

    stripped = tmp_path / "stripped"
    staging = tmp_path / f".stripped.tmp{dead}"
    staging.mkdir()
    (staging / StrippedMeta.WEIGHTS).write_bytes(b"half a strip")
    strip_tiny(tiny_dir, tiny_config, stripped)
    assert not staging.exists()


def test_a_swap_killed_between_its_renames_gets_the_old_folder_back(tiny_dir, tiny_config, tmp_path):
    """kill -9 after the old folder was renamed aside and before the new one was renamed in: the next run puts the
    old complete folder back (and, without --overwrite, refuses to replace it)."""
    dead = dead_pid()
    old = strip_tiny(tiny_dir, tiny_config, tmp_path / f".stripped.old{dead}", torch.float32)
    before = snapshot(old)
    (tmp_path / f".stripped.tmp{dead}").mkdir()  # the new folder that was about to be renamed in
    out = tmp_path / "stripped"
    with pytest.raises(FileExistsError, match="--overwrite"):
        strip_tiny(tiny_dir, tiny_config, out, torch.bfloat16)
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["stripped"]


def test_written_files_get_the_normal_mode(tmp_path):
    previous = os.umask(0o022)
    try:
        paths = write_tiny_model(tmp_path / "tiny")
    finally:
        os.umask(previous)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in paths.values()}
    assert modes == {p.name: oct(0o644) for p in paths.values()}  # not 0o600 (safetensors writes through mkstemp)


# --- 4. the main command prints no library noise during export -------------------------------------------------

NOISE = (
    "torchvision is not installed",
    "LeafSpec",
    "Skipping constant folding",
    "torch/export/_trace.py",  # torch.export DEBUG traces
)
# torch.export at DEBUG (as TORCH_LOGS or a user's logging setup would leave it) shows its traces
QUICKSTART = """
import logging, sys
import torch
logging.getLogger("torch.export").setLevel(logging.DEBUG)
from fe2e_deploy.cli import app
app(sys.argv[1:], prog_name="fe2e-deploy")
"""


@pytest.mark.slow
def test_quickstart_prints_no_exporter_noise(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    scene_image(64, 48, seed=1).save(images / "a.png")
    args = ["quickstart", str(images), "-o", str(tmp_path / "out"), "--work-dir", str(tmp_path / "work")]
    env = {k: v for k, v in os.environ.items() if k != "TORCH_LOGS"} | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", QUICKSTART, *args, "--processing-res", "32x32", "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for line in ("$ fe2e-deploy export", "$ fe2e-deploy infer", "engine: onnxruntime-fp32-cpu"):
        assert line in output
    assert [n for n in NOISE if n in output] == []


def test_export_module_restores_logging_and_warnings(tmp_path):
    logger = logging.getLogger("torch.export")
    level, filters = logger.level, list(warnings.filters)
    logger.setLevel(logging.DEBUG)
    try:
        export_one_module(
            nn.Linear(4, 2),
            (torch.randn(1, 4, generator=torch.Generator().manual_seed(0)),),
            tmp_path / "linear.onnx",
            ("x",),
            ("y",),
        )
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(level)
    assert warnings.filters == filters
    assert logging.getLogger("torch.onnx._internal.exporter._registration").filters == []
    assert logging.getLogger("onnxscript.optimizer._constant_folding").filters == []


def test_many_writes_into_one_folder_list_it_once_and_still_see_new_leftovers(tmp_path, monkeypatch):
    """Stale-temp cleanup must not make writing N files into a folder quadratic (infer writes thousands)."""
    listings = []
    real_scandir = os.scandir

    def counting_scandir(path):
        listings.append(path)
        return real_scandir(path)

    monkeypatch.setattr(atomic_module.os, "scandir", counting_scandir)
    for i in range(20):
        atomic_write(tmp_path / f"map{i}.png", lambda p: p.write_bytes(b"png"))
    assert len(listings) == 1
    stale = tmp_path / f".map3.tmp{dead_pid()}.png"  # another process's leftover: the folder changed
    stale.write_bytes(b"half a map")
    atomic_write(tmp_path / "map3.png", lambda p: p.write_bytes(b"png"))
    assert not stale.exists() and len(listings) == 2
