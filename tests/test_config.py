import json

import pytest

from fe2e_deploy.config import PRESETS, ConfigError, ModelConfig, load_model_config


def test_presets_hold_the_official_hyperparameters():
    full = PRESETS["step1x-edit"]
    d = full.dit
    assert (d.hidden_size, d.num_heads, d.depth, d.depth_single_blocks) == (3072, 24, 19, 38)
    assert full.dit.axes_dim == (16, 56, 56) and full.dit.context_in_dim == 4096 and full.dit.vec_in_dim == 768
    assert (full.connector.in_channels, full.connector.hidden_size, full.connector.heads_num) == (3584, 4096, 32)
    assert full.vae.ch_mult == (1, 2, 4, 4) and full.vae.scale_factor == 0.3611 and full.vae.shift_factor == 0.1159
    assert PRESETS["tiny"].dit.hidden_size <= 128


def test_json_round_trip_uses_official_names(tmp_path):
    path = tmp_path / "model_config.json"
    PRESETS["tiny"].save(path)
    data = json.loads(path.read_text())
    assert set(data) == {"dit", "connector", "vae"}
    official = {"in_channels", "vec_in_dim", "context_in_dim", "depth_single_blocks", "axes_dim", "qkv_bias"}
    assert official <= set(data["dit"])
    assert set(data["vae"]) == {
        "resolution",
        "in_channels",
        "ch",
        "out_ch",
        "ch_mult",
        "num_res_blocks",
        "z_channels",
        "scale_factor",
        "shift_factor",
    }
    assert load_model_config(path) == PRESETS["tiny"]
    assert load_model_config("step1x-edit") == PRESETS["step1x-edit"]


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"dit": {"vec_in_dim": 512}}, "vec_in_dim must be 768"),
        ({"dit": {"axes_dim": [8, 8, 8]}}, "sum(dit.axes_dim)"),
        ({"connector": {"hidden_size": 96, "heads_num": 2}}, "must equal dit.context_in_dim"),
        ({"vae": {"ch": 48}}, "multiples of 32"),
        ({"vae": {"ch_mult": [1, 2, 2]}}, "4 levels"),
        ({"dit": {"hidden_size": "64"}}, "expected an integer"),
        ({"dit": {"hiden_size": 64}}, "unknown key"),
        ({"unet": {}}, "unknown section"),
    ],
)
def test_invalid_configs_name_the_problem(tmp_path, patch, message):
    data = PRESETS["tiny"].to_dict()
    for section, values in patch.items():
        data.setdefault(section, {}).update(values)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model_config(path)


def test_missing_and_corrupt_config_files(tmp_path):
    with pytest.raises(ConfigError, match="neither a preset"):
        load_model_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model_config(bad)
    with pytest.raises(ConfigError):
        ModelConfig.from_dict([1, 2])
