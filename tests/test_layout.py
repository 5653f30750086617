"""The full-size preset accepts exactly the official tensor names and shapes (models built on meta)."""

import json

import torch
from conftest import DATA

from fe2e_deploy.config import PRESETS
from fe2e_deploy.loading.dit_layout import dit_layout, lora_target_modules
from fe2e_deploy.loading.vae_layout import vae_layout
from fe2e_deploy.models.dit import Step1XEditDiT


def reference(name: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads((DATA / name).read_text())["tensors"].items()}


def test_full_dit_layout_is_exactly_the_official_checkpoint():
    expected = reference("step1x_edit_dit_tensors.json")
    assert len(expected) == 817
    assert dit_layout(PRESETS["step1x-edit"]).official_shapes() == expected


def test_full_vae_layout_is_exactly_the_official_checkpoint():
    expected = reference("flux_vae_tensors.json")
    assert len(expected) == 244
    assert vae_layout(PRESETS["step1x-edit"].vae).official_shapes() == expected


def test_lora_targets_are_the_kohya_modules_of_fe2e():
    kohya = {k.split(".")[0] for k in reference("fe2e_lora_kohya_tensors_rank32.json")}
    ours = {"lora_unet_" + m.replace(".", "_") for m in lora_target_modules(PRESETS["step1x-edit"])}
    assert ours == kohya and len(ours) == 304


def test_full_model_parameter_count_on_meta():
    with torch.device("meta"):
        model = Step1XEditDiT(PRESETS["step1x-edit"])
    total = sum(p.numel() for p in model.parameters())
    connector = sum(p.numel() for p in model.connector.parameters())
    assert 12.3e9 < total < 12.6e9  # "12.4 B parameters"
    assert 0.5e9 < connector < 0.6e9  # "0.54 B"
