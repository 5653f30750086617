"""Bad inputs end in one line naming the file, tensor, key or option: NaN/Inf, missing config keys,
malformed LoRA / prompt-embedding files, out-of-range seeds, bad regexes, unreadable files."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import scene_image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fe2e_deploy.cli import app
from fe2e_deploy.config import PRESETS, ConfigError, ConnectorConfig, DiTConfig, VAEConfig, load_model_config
from fe2e_deploy.loading import CheckpointError, load_dit, load_prompt_embedding, load_vae
from fe2e_deploy.loading.checkpoint import non_finite
from fe2e_deploy.lora import read_kohya_lora
from fe2e_deploy.merge import merge_lora
from fe2e_deploy.scenes import synthetic_sample
from fe2e_deploy.strip import strip_model
from fe2e_deploy.synthetic import SyntheticModel
from fe2e_deploy.tiny import write_tiny_model
from fe2e_deploy.train.data import write_sample

runner = CliRunner()
WEIGHT = "double_blocks.0.img_attn.qkv.weight"
LORA_STEM = "lora_unet_double_blocks_0_img_attn_qkv"
NON_FINITE = [float("nan"), float("inf"), float("-inf")]


def _rewrite(src: Path, dst: Path, edit) -> Path:
    state = load_file(src)
    edit(state)
    save_file(state, dst)
    return dst


def _poison(state: dict, name: str, value: float) -> None:
    tensor = state[name].clone()
    tensor.view(-1)[tensor.numel() // 2] = value
    state[name] = tensor


def _one_line_error(result, *needles: str) -> None:
    """A CLI user error: exit code 2, no traceback, the error on one line holding every needle."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], result.output


def _model_args(tiny_dir: Path, **files: Path) -> list[str]:
    paths = {
        "--model-config": tiny_dir / "model_config.json",
        "--dit": tiny_dir / "dit.safetensors",
        "--vae": tiny_dir / "vae.safetensors",
        "--prompt-embedding": tiny_dir / "empty_prompt.npz",
        **{f"--{k.replace('_', '-')}": v for k, v in files.items()},
    }
    return [a for flag, path in paths.items() for a in (flag, str(path))]


# 1. NaN / Inf ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_merge_lora_rejects_a_non_finite_multiplier(tiny_dir, tmp_path, value):
    out = tmp_path / "merged.safetensors"
    args = ["merge-lora", "--dit", str(tiny_dir / "dit.safetensors"), "--lora", str(tiny_dir / "lora.safetensors")]
    result = runner.invoke(app, [*args, "-o", str(out), "--model-config", "tiny", "--multiplier", value])
    _one_line_error(result, "--multiplier")
    assert not out.exists()
    with pytest.raises(ValueError, match="--multiplier"):
        merge_lora(
            tiny_dir / "dit.safetensors",
            tiny_dir / "lora.safetensors",
            out,
            PRESETS["tiny"],
            multiplier=float(value),
            progress=False,
        )
    assert not out.exists()


def test_a_merged_weight_that_overflows_is_an_error_naming_it(tiny_dir, tmp_path):
    def huge(state):
        state[f"{LORA_STEM}.lora_up.weight"] = state[f"{LORA_STEM}.lora_up.weight"] * 1e30
        state[f"{LORA_STEM}.lora_down.weight"] = state[f"{LORA_STEM}.lora_down.weight"] * 1e30

    lora = _rewrite(tiny_dir / "lora.safetensors", tmp_path / "huge.safetensors", huge)
    out = tmp_path / "merged.safetensors"
    with pytest.raises(ValueError, match=rf"{WEIGHT}.*(NaN|Inf)"):
        merge_lora(tiny_dir / "dit.safetensors", lora, out, PRESETS["tiny"], progress=False)
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


@pytest.mark.parametrize("value", NON_FINITE)
def test_a_non_finite_checkpoint_tensor_is_named_when_loaded(tiny_dir, tiny_config, tmp_path, value):
    bad_dit = _rewrite(
        tiny_dir / "dit.safetensors", tmp_path / "bad_dit.safetensors", lambda s: _poison(s, WEIGHT, value)
    )
    message = rf"bad_dit.safetensors: tensor {WEIGHT} .*(NaN|Inf)"
    with pytest.raises(CheckpointError, match=message):
        load_dit(tiny_config, bad_dit, torch.float32, progress=False)
    bad_vae = _rewrite(
        tiny_dir / "vae.safetensors",
        tmp_path / "bad_vae.safetensors",
        lambda s: _poison(s, "decoder.conv_in.weight", value),
    )
    with pytest.raises(CheckpointError, match=r"bad_vae.safetensors: tensor decoder.conv_in.weight .*(NaN|Inf)"):
        load_vae(tiny_config, bad_vae, progress=False)
    # strip and merge read checkpoints tensor by tensor too: same error, nothing written
    stripped = tmp_path / "stripped"
    names = (bad_dit, tiny_dir / "empty_prompt.npz", tiny_dir / "vae.safetensors")
    with pytest.raises(CheckpointError, match=message):
        strip_model(*names, stripped, tiny_config, dtype=torch.float32, progress=False)
    assert not list(stripped.glob("*.safetensors")) and not (stripped / "stripped.json").exists()
    merged = tmp_path / "merged.safetensors"
    with pytest.raises(CheckpointError, match=message):
        merge_lora(bad_dit, tiny_dir / "lora.safetensors", merged, tiny_config, progress=False)
    assert not merged.exists()


def test_non_finite_is_exact_when_the_sum_overflows():
    big = torch.full((100_000,), 60_000.0, dtype=torch.float16)  # finite, but its float16 sum is Inf
    assert non_finite(big) is None
    big[7] = float("nan")
    assert non_finite(big) == "1 NaN and 0 Inf of 100000 values"
    assert non_finite(torch.zeros(3, dtype=torch.int8)) is None and non_finite(torch.zeros(0)) is None


def test_infer_with_a_nan_checkpoint_fails_in_one_line(tiny_dir, tmp_path):
    bad = _rewrite(
        tiny_dir / "dit.safetensors", tmp_path / "nan_dit.safetensors", lambda s: _poison(s, WEIGHT, float("nan"))
    )
    images = tmp_path / "images"
    images.mkdir()
    scene_image(64, 48).save(images / "a.png")
    out = tmp_path / "out"
    args = ["infer", str(images), "-o", str(out), *_model_args(tiny_dir, dit=bad), "--device", "cpu", "--no-progress"]
    result = runner.invoke(app, args)
    _one_line_error(result, "nan_dit.safetensors", WEIGHT)
    assert not list(out.rglob("*.png"))


@pytest.mark.parametrize("part", ["alpha", "lora_up.weight", "lora_down.weight"])
@pytest.mark.parametrize("value", NON_FINITE)
def test_a_non_finite_lora_tensor_is_named(tiny_dir, tiny_config, tmp_path, part, value):
    key = f"{LORA_STEM}.{part}"
    bad = _rewrite(tiny_dir / "lora.safetensors", tmp_path / "bad_lora.safetensors", lambda s: _poison(s, key, value))
    with pytest.raises(CheckpointError, match=rf"bad_lora.safetensors: .*{key}.*(NaN|Inf)"):
        read_kohya_lora(bad, tiny_config)
    out = tmp_path / "merged.safetensors"
    with pytest.raises(CheckpointError, match=rf"bad_lora.safetensors: .*{key}"):
        merge_lora(tiny_dir / "dit.safetensors", bad, out, tiny_config, progress=False)
    assert not out.exists()


def _config_file(tmp_path: Path, edit) -> Path:
    data = PRESETS["tiny"].to_dict()
    edit(data)
    path = tmp_path / "model_config.json"
    path.write_text(json.dumps(data))  # json writes NaN / Infinity, and Python's json reads them back
    return path


@pytest.mark.parametrize(("section", "key"), [("vae", "scale_factor"), ("vae", "shift_factor"), ("dit", "mlp_ratio")])
@pytest.mark.parametrize("value", NON_FINITE)
def test_non_finite_config_values_are_rejected(tmp_path, section, key, value):
    path = _config_file(tmp_path, lambda d: d[section].update({key: value}))
    with pytest.raises(ConfigError, match=rf"model_config.json: {section}.{key}: expected a finite number"):
        load_model_config(path)


def test_a_zero_vae_scale_factor_is_rejected(tmp_path):
    path = _config_file(tmp_path, lambda d: d["vae"].update({"scale_factor": 0}))
    with pytest.raises(
        ConfigError, match=r"(?s)model_config.json: .*vae.scale_factor must be a finite non-zero number"
    ):
        load_model_config(path)


TRAIN_OPTIONS = [
    (["--alpha", "nan"], "--alpha"),
    (["--alpha", "inf"], "--alpha"),
    (["--alpha", "0"], "--alpha"),
    (["--lr", "nan"], "--lr"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--depth-scale", "nan"], "--depth-scale"),
    (["--depth-scale", "-inf"], "--depth-scale"),
    (["--depth-scale", "0"], "--depth-scale"),
    (["--target-modules", "("], "--target-modules"),
    (["--target-modules", "(?P<x>to_q)", "--target-modules", "(?P<x>to_k)"], "--target-modules"),  # valid alone
    (["--seed", str(2**63)], "--seed"),
    (["--seed", "-1"], "--seed"),
]


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("train") / "data"
    sample = synthetic_sample(64, 48, seed=0)
    write_sample(root, "scene0", sample.rgb, sample.depth, sample.normals)
    return root


@pytest.mark.parametrize(("args", "option"), TRAIN_OPTIONS, ids=[" ".join(a) for a, _ in TRAIN_OPTIONS])
def test_train_lora_rejects_bad_options_naming_them(tiny_dir, train_data, tmp_path, args, option):
    out = tmp_path / "lora"
    base = ["train-lora", str(train_data), "-o", str(out), *_model_args(tiny_dir), "--resolution", "64x48"]
    result = runner.invoke(app, [*base, "--steps", "1", "--rank", "2", "--device", "cpu", "--no-progress", *args])
    _one_line_error(result, option)
    assert not out.exists()


# 2. missing config keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "key"), [("dit", "hidden_size"), ("dit", "axes_dim"), ("connector", "depth"), ("vae", "scale_factor")]
)
def test_a_missing_config_key_is_named(tmp_path, section, key):
    path = _config_file(tmp_path, lambda d: d[section].pop(key))
    with pytest.raises(ConfigError, match=rf"model_config.json: {section}.{key} missing"):
        load_model_config(path)


def test_a_missing_config_section_is_named(tmp_path):
    path = _config_file(tmp_path, lambda d: d.pop("vae"))
    with pytest.raises(ConfigError, match=r"model_config.json: .*vae.*missing"):
        load_model_config(path)


def test_init_tiny_and_presets_write_complete_configs(tiny_dir):
    data = json.loads((tiny_dir / "model_config.json").read_text())
    for section, klass in (("dit", DiTConfig), ("connector", ConnectorConfig), ("vae", VAEConfig)):
        assert set(data[section]) == {f.name for f in fields(klass)}
    for preset in PRESETS.values():
        assert type(preset).from_dict(preset.to_dict()) == preset


# 3. malformed tensors and options --------------------------------------------------------------


def test_a_vector_lora_alpha_is_rejected(tiny_dir, tiny_config, tmp_path):
    bad = _rewrite(
        tiny_dir / "lora.safetensors",
        tmp_path / "vector_alpha.safetensors",
        lambda s: s.update({f"{LORA_STEM}.alpha": torch.full((4,), 2.0)}),
    )
    with pytest.raises(CheckpointError, match=rf"vector_alpha.safetensors: {LORA_STEM}.alpha .*scalar"):
        read_kohya_lora(bad, tiny_config)


@pytest.mark.parametrize("part", ["lora_up.weight", "lora_down.weight"])
def test_non_float_lora_tensors_are_rejected(tiny_dir, tiny_config, tmp_path, part):
    key = f"{LORA_STEM}.{part}"
    bad = _rewrite(
        tiny_dir / "lora.safetensors", tmp_path / "int8.safetensors", lambda s: s.update({key: s[key].to(torch.int8)})
    )
    with pytest.raises(CheckpointError, match=rf"int8.safetensors: {key} has dtype I8, expected a float type"):
        read_kohya_lora(bad, tiny_config)
    out = tmp_path / "merged.safetensors"
    with pytest.raises(CheckpointError, match=rf"int8.safetensors: {key} has dtype I8"):
        merge_lora(tiny_dir / "dit.safetensors", bad, out, tiny_config, progress=False)
    assert not out.exists()


def test_an_integer_or_one_element_alpha_is_read_as_its_value(tiny_dir, tiny_config, tmp_path):
    key = f"{LORA_STEM}.alpha"
    for alpha in (torch.tensor(3, dtype=torch.int8), torch.tensor([3.0])):  # some trainers write these
        lora = _rewrite(
            tiny_dir / "lora.safetensors", tmp_path / "alpha.safetensors", lambda s, a=alpha: s.update({key: a})
        )
        assert read_kohya_lora(lora, tiny_config)["double_blocks.0.img_attn.qkv"].alpha == 3.0
    boolean = _rewrite(
        tiny_dir / "lora.safetensors", tmp_path / "bool.safetensors", lambda s: s.update({key: torch.tensor(True)})
    )
    with pytest.raises(CheckpointError, match=rf"bool.safetensors: {key} has dtype BOOL"):
        read_kohya_lora(boolean, tiny_config)


def _npz(tmp_path: Path, name: str, **arrays) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_malformed_prompt_embeddings_are_named(tmp_path):
    strings = _npz(tmp_path, "s.npz", embeds=np.full((5, 4), "x"), masks=np.ones(5, np.int64))
    with pytest.raises(CheckpointError, match=r"s.npz: 'embeds' has dtype <U1, expected numbers"):
        load_prompt_embedding(strings, 4)
    mask_strings = _npz(tmp_path, "m.npz", embeds=np.zeros((5, 4), np.float32), masks=np.full(5, "1"))
    with pytest.raises(CheckpointError, match=r"m.npz: 'masks' has dtype <U1, expected numbers"):
        load_prompt_embedding(mask_strings, 4)
    long = _npz(tmp_path, "l.npz", embeds=np.zeros((100_000, 4), np.float32), masks=np.ones(100_000, np.int64))
    with pytest.raises(CheckpointError, match=r"l.npz: 100000 tokens, more than 4096"):
        load_prompt_embedding(long, 4)
    nan_mask = _npz(tmp_path, "n.npz", embeds=np.zeros((5, 4), np.float32), masks=np.array([1, 1, np.nan, 0, 0]))
    with pytest.raises(CheckpointError, match=r"n.npz: 'masks' must hold only 0 and 1"):
        load_prompt_embedding(nan_mask, 4)
    inf = _npz(tmp_path, "i.npz", embeds=np.full((5, 4), np.inf, np.float32), masks=np.ones(5, np.int64))
    with pytest.raises(CheckpointError, match=r"i.npz: 'embeds' contains NaN or Inf"):
        load_prompt_embedding(inf, 4)
    ok = _npz(tmp_path, "ok.npz", embeds=np.zeros((5, 4), np.float16), masks=np.array([1, 1, 0, 0, 0], bool))
    assert int(load_prompt_embedding(ok, 4).mask.sum()) == 2


SEEDS = [str(2**63), str(2**64), "-1"]


@pytest.mark.parametrize("seed", SEEDS)
def test_seeds_out_of_range_are_one_line_errors(tmp_path, seed):
    out = tmp_path / "tiny"
    _one_line_error(runner.invoke(app, ["init-tiny", str(out), "--seed", seed]), "--seed")
    assert not out.exists()
    args = ["strip", "-o", str(tmp_path / "s"), "--synthetic-weights", "tiny", "--seed", seed, "--no-progress"]
    _one_line_error(runner.invoke(app, args), "--seed")
    assert not (tmp_path / "s").exists()
    args = ["benchmark", "--synthetic-weights", "tiny", "--device", "cpu", "--resolution", "64x48", "--seed", seed]
    _one_line_error(runner.invoke(app, args), "--seed")


def test_a_non_integer_seed_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["init-tiny", str(tmp_path / "tiny"), "--seed", "1e23"])
    assert result.exit_code == 2 and "--seed" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "tiny").exists()


def test_the_largest_seed_works(tmp_path):
    synth = SyntheticModel.create("tiny", seed=2**63 - 1)
    assert torch.isfinite(synth.dit.get_tensor("img_in.weight")).all()
    assert torch.isfinite(synth.vae.get_tensor("decoder.conv_in.weight")).all()
    assert synth.prompt().embeds.shape[0] > 0
    paths = write_tiny_model(tmp_path / "tiny", seed=2**63 - 1)
    assert load_file(paths["dit"])


# 4. unreadable files ---------------------------------------------------------------------------


@pytest.fixture
def deny_reading(monkeypatch):
    """Make reading the given paths fail as it does for a non-root user without read permission.

    (Tests run as root, whom permission bits do not stop.) Python's ``open`` raises PermissionError;
    safetensors' ``safe_open`` raises FileNotFoundError "No such file or directory" (measured as a
    non-root user), which is what made the message misleading.
    """
    import fe2e_deploy.loading.checkpoint as checkpoint  # noqa: PLC0415

    denied: set[Path] = set()
    real_open, real_safe_open = builtins.open, checkpoint.safe_open

    def is_denied(file) -> bool:
        return isinstance(file, str | os.PathLike) and Path(file).resolve() in denied

    def fake_open(file, *args, **kwargs):
        if is_denied(file):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    def fake_safe_open(file, *args, **kwargs):
        if is_denied(file):
            raise FileNotFoundError(f"No such file or directory: {file}")
        return real_safe_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(checkpoint, "safe_open", fake_safe_open)
    return lambda *paths: denied.update(Path(p).resolve() for p in paths)


def test_unreadable_files_say_permission_denied(tiny_dir, tiny_config, deny_reading):
    names = ("dit.safetensors", "vae.safetensors", "lora.safetensors", "empty_prompt.npz", "model_config.json")
    deny_reading(*(tiny_dir / n for n in names))
    for call, name in (
        (lambda: load_dit(tiny_config, tiny_dir / "dit.safetensors", torch.float32, progress=False), names[0]),
        (lambda: load_vae(tiny_config, tiny_dir / "vae.safetensors", progress=False), names[1]),
        (lambda: read_kohya_lora(tiny_dir / "lora.safetensors", tiny_config), names[2]),
        (lambda: load_prompt_embedding(tiny_dir / "empty_prompt.npz", 48), names[3]),
        (lambda: load_model_config(tiny_dir / "model_config.json"), names[4]),
    ):
        with pytest.raises(ValueError, match=rf"{name}: permission denied") as info:
            call()
        assert "No such file" not in str(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permission bits")
def test_unreadable_files_say_permission_denied_for_real(tiny_dir, tiny_config, tmp_path):
    for name in ("dit.safetensors", "empty_prompt.npz"):
        path = tmp_path / name
        path.write_bytes((tiny_dir / name).read_bytes())
        path.chmod(0)
    with pytest.raises(CheckpointError, match="dit.safetensors: permission denied"):
        load_dit(tiny_config, tmp_path / "dit.safetensors", torch.float32, progress=False)
    with pytest.raises(CheckpointError, match="empty_prompt.npz: permission denied"):
        load_prompt_embedding(tmp_path / "empty_prompt.npz", 48)
