"""The official FP8-stored DiT (``step1x-edit-i1258-FP8.safetensors``): loaded, merged and stripped.

That file holds the BF16 checkpoint's tensors (same names and shapes) cast to float8_e4m3fn, without
scales. FE2E's ``--quantized`` path loads it and casts the whole DiT to float8_e4m3fn (every tensor:
linear weights, biases, norm scales, the connector's ``scale_factor``), so the tiny copy here is FP8
throughout; a copy with only the matrices in FP8 (1-D tensors BF16) is accepted too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import scene_image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from fe2e_deploy.benchmark import map_errors
from fe2e_deploy.cli import app
from fe2e_deploy.engines.stripped import StrippedEngine
from fe2e_deploy.loading import CheckpointError, load_dit
from fe2e_deploy.lora import read_kohya_lora
from fe2e_deploy.merge import merge_lora
from fe2e_deploy.strip import is_folded, strip_model

FP8 = torch.float8_e4m3fn
runner = CliRunner()


def fp8_copy(state: dict[str, torch.Tensor], matrices_only: bool = False) -> dict[str, torch.Tensor]:
    """The official FP8 file's layout: every tensor cast to E4M3 (or only the >= 2-D ones), no scales."""
    return {k: v.to(FP8) if v.dim() >= 2 or not matrices_only else v for k, v in state.items()}


@pytest.fixture(scope="module")
def files(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """The tiny DiT as the BF16 release file and as its FP8 copies (made from the BF16 one, as released)."""
    folder = tmp_path_factory.mktemp("fp8")
    bf16 = {k: v.to(torch.bfloat16) for k, v in load_file(tiny_dir / "dit.safetensors").items()}
    states = {"bf16": bf16, "fp8": fp8_copy(bf16), "fp8_matrices": fp8_copy(bf16, matrices_only=True)}
    paths = {}
    for name, state in states.items():
        paths[name] = folder / f"dit-{name}.safetensors"
        save_file(state, str(paths[name]))
    return {**paths, "folder": folder}


def header_dtypes(path: Path) -> set[str]:
    with safe_open(str(path), "pt") as fh:
        return {fh.get_slice(k).get_dtype() for k in fh.keys()}  # noqa: SIM118


def test_the_tiny_fp8_file_is_stored_like_the_official_one(files):
    assert header_dtypes(files["fp8"]) == {"F8_E4M3"}
    assert header_dtypes(files["fp8_matrices"]) == {"F8_E4M3", "BF16"}
    assert files["fp8"].stat().st_size < 0.6 * files["bf16"].stat().st_size


@pytest.mark.parametrize("layout", ["fp8", "fp8_matrices"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, None])
def test_load_dit_upcasts_the_fp8_weights_exactly(files, tiny_config, layout, dtype):
    """Every E4M3 value is a BF16 value: the loaded model equals the FP8 values written as BF16."""
    model = load_dit(tiny_config, files[layout], dtype, progress=False)
    want = dtype or torch.bfloat16  # as stored: FP8 cannot be computed with, so BF16
    assert {p.dtype for p in model.state_dict().values()} == {want}
    exact = files["folder"] / f"{layout}-as-bf16.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(files[layout]).items()}, str(exact))
    reference = load_dit(tiny_config, exact, want, progress=False).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def test_infer_runs_the_eager_engine_on_the_fp8_file(files, tiny_dir, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    scene_image(64, 48).save(images / "a.png")
    args = ["infer", str(images), "-o", str(tmp_path / "pred"), "--no-progress", "--processing-res", "64x48"]
    args += ["--model-config", str(tiny_dir / "model_config.json"), "--dit", str(files["fp8"])]
    args += ["--vae", str(tiny_dir / "vae.safetensors"), "--prompt-embedding", str(tiny_dir / "empty_prompt.npz")]
    args += ["--lora", str(tiny_dir / "lora.safetensors"), "--outputs", "depth_npy", "--dtype", "bf16"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "depth_npy" / "a_depth.npy").is_file()


@pytest.fixture(scope="module")
def merged(files, tiny_dir) -> Path:
    out = files["folder"] / "merged-from-fp8.safetensors"
    args = ["merge-lora", "--dit", str(files["fp8"]), "--lora", str(tiny_dir / "lora.safetensors"), "-o", str(out)]
    result = runner.invoke(app, [*args, "--model-config", str(tiny_dir / "model_config.json"), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out


def test_merge_lora_of_the_fp8_file_writes_bf16_with_the_delta_unrounded(merged, files, tiny_dir, tiny_config):
    """Merged weights are ``bf16(fp8 + delta)``; the others the FP8 values in BF16; nothing re-rounded to FP8."""
    base, out = load_file(files["fp8"]), load_file(merged)
    assert header_dtypes(merged) == {"BF16"}
    pairs = read_kohya_lora(tiny_dir / "lora.safetensors", tiny_config)
    for name, tensor in base.items():
        pair = pairs.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
        want = (tensor.float() + pair.delta()).to(torch.bfloat16) if pair else tensor.to(torch.bfloat16)
        assert torch.equal(out[name], want), name
    qkv = "double_blocks.0.img_attn.qkv.weight"
    assert not torch.equal(out[qkv].to(FP8).to(torch.bfloat16), out[qkv])  # an FP8 output would lose the delta
    with safe_open(str(merged), "pt") as fh:
        assert fh.metadata()["upcast"] == "F8_E4M3 -> BF16"


def test_sharded_merge_of_the_fp8_file_counts_the_bf16_bytes(files, tiny_dir, tiny_config, tmp_path):
    out = tmp_path / "sharded.safetensors"
    merge_lora(files["fp8"], tiny_dir / "lora.safetensors", out, tiny_config, max_shard_size=400_000, progress=False)
    index = json.loads((tmp_path / "sharded.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    tensors = {k: v for s in shards for k, v in load_file(tmp_path / s).items()}
    assert index["metadata"]["total_size"] == sum(v.numel() * 2 for v in tensors.values())
    assert all((tmp_path / s).stat().st_size < 400_000 + 20_000 for s in shards)


def kept_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The official weights a stripped folder keeps (not the folded FP32 constants)."""
    state = load_file(folder / "stripped_dit.safetensors")
    return {k: v for k, v in state.items() if k.endswith((".weight", ".bias", ".scale"))}


def test_strip_takes_the_fp8_file_with_and_without_lora(files, merged, tiny_dir, tiny_config):
    """``strip --lora`` of the FP8 file keeps the same weights as ``strip`` of its merge; without a LoRA the
    kept weights are the FP8 values exactly (BF16 output)."""
    folder = files["folder"]
    common = ["--model-config", str(tiny_dir / "model_config.json"), "--vae", str(tiny_dir / "vae.safetensors")]
    common += ["--prompt-embedding", str(tiny_dir / "empty_prompt.npz"), "--no-progress"]
    runs = {
        "lora": ["--dit", str(files["fp8"]), "--lora", str(tiny_dir / "lora.safetensors")],
        "plain": ["--dit", str(files["fp8"])],
        "merged": ["--dit", str(merged)],
    }
    for name, extra in runs.items():
        result = runner.invoke(app, ["strip", "-o", str(folder / f"strip-{name}"), *common, *extra])
        assert result.exit_code == 0, result.output
    with_lora, from_merge = kept_weights(folder / "strip-lora"), kept_weights(folder / "strip-merged")
    assert all(torch.equal(v, from_merge[k]) for k, v in with_lora.items())
    base = load_file(files["fp8"])
    plain = kept_weights(folder / "strip-plain")
    assert plain and all(v.dtype == torch.bfloat16 and not is_folded(k) for k, v in plain.items())
    assert all(torch.equal(v, base[k].to(torch.bfloat16)) for k, v in plain.items())
    meta = json.loads((folder / "strip-lora" / "stripped.json").read_text())
    assert meta["dtype"] == "bfloat16" and meta["sources"]["dit"]["path"] == str(files["fp8"])


def test_fp8_predictions_stay_close_to_the_bf16_file(files, tiny_dir, tiny_config):
    """Stripped (BF16, with the LoRA), the FP8 file's maps vs the BF16 file's on a seeded scene.

    Measured on the tiny random model (seed 0): depth relative L2 0.049, normals mean angle 6.2 deg (0.052 and
    6.1 deg for the matrices-only FP8 copy); seeds 1 and 2 give 0.034 / 5.6 deg and 0.064 / 8.9 deg. Random tiny
    weights (64 wide, no redundancy) amplify the ~3 % E4M3 rounding far more than the trained 12 B model would.
    """
    image, errors = scene_image(64, 48, seed=0), {}
    predictions = {}
    for name in ("bf16", "fp8", "fp8_matrices"):
        out = files["folder"] / f"engine-{name}"
        names = (files[name], tiny_dir / "empty_prompt.npz", tiny_dir / "vae.safetensors")
        strip_model(*names, out, tiny_config, lora=tiny_dir / "lora.safetensors", progress=False)
        predictions[name] = StrippedEngine(out, processing_res=(64, 48)).predict(image)
    for name in ("fp8", "fp8_matrices"):
        errors[name] = map_errors(predictions[name], predictions["bf16"])
        print(f"{name} vs bf16: " + ", ".join(f"{k} {v:.4f}" for k, v in errors[name].items()))
        assert 1e-3 < errors[name]["depth_rel_l2"] < 0.1
        assert 0.1 < errors[name]["normals_mean_angle_deg"] < 12.0


def _with_tensor(src: Path, dst: Path, name: str, tensor: torch.Tensor) -> Path:
    state = load_file(src)
    state[name] = tensor
    save_file(state, str(dst))
    return dst


@pytest.mark.parametrize(
    ("dtype", "code"), [(torch.float8_e8m0fnu, "F8_E8M0"), (torch.int32, "I32"), (torch.complex64, "C64")]
)
def test_unsupported_dtypes_are_one_line_errors(files, tiny_dir, tiny_config, tmp_path, dtype, code):
    """Load, merge and strip refuse a tensor stored in another dtype, naming the file, the tensor and the dtype."""
    name = "double_blocks.0.img_attn.proj.bias"
    value = load_file(files["fp8"])[name].to(torch.float32).to(dtype)
    bad = _with_tensor(files["fp8"], tmp_path / "bad.safetensors", name, value)
    prompt, vae, lora = tiny_dir / "empty_prompt.npz", tiny_dir / "vae.safetensors", tiny_dir / "lora.safetensors"
    calls = {
        "load": lambda: load_dit(tiny_config, bad, torch.bfloat16, progress=False),
        "merge": lambda: merge_lora(bad, lora, tmp_path / "m.safetensors", tiny_config, progress=False),
        "strip": lambda: strip_model(bad, prompt, vae, tmp_path / "s", tiny_config, lora=lora, progress=False),
    }
    for what, call in calls.items():
        with pytest.raises(CheckpointError) as raised:
            call()
        message = str(raised.value)
        assert "\n" not in message and str(bad) in message and name in message, (what, message)
        assert code in message or str(dtype) in message, (what, message)
    assert not (tmp_path / "m.safetensors").exists() and not (tmp_path / "s").exists()


def test_an_fp8_stored_lora_is_accepted(files, tiny_dir, tiny_config, tmp_path):
    lora = load_file(tiny_dir / "lora.safetensors")
    stored = {k: v.to(FP8) if k.endswith(".weight") else v for k, v in lora.items()}
    save_file(stored, str(tmp_path / "lora-fp8.safetensors"))
    out = tmp_path / "m.safetensors"
    merge_lora(files["bf16"], tmp_path / "lora-fp8.safetensors", out, tiny_config, progress=False)
    assert header_dtypes(out) == {"BF16"}
