"""ArchConfig: JSON round trip, layout strings, scaling, and one clear error per invalid case."""
import json

import pytest

from attnsearch.space import MECHANISMS, ArchConfig, ConfigError, LayerSpec
from attnsearch.space.presets import PRESETS, preset

DIMS = dict(d_model=64, n_heads=4, head_dim=16, vocab_size=97)


def _config(layers):
    return ArchConfig(n_layers=len(layers), layers=layers, **DIMS)


def test_json_round_trip_every_mechanism(tmp_path):
    layers = [LayerSpec(mechanism=name) for name in MECHANISMS]
    layers[1] = LayerSpec(mechanism="sliding_window", params={"window": 7})
    layers[7] = LayerSpec(mechanism="linear", params={"feature_map": "relu"}, kernel_config={"chunk_size": 32})
    config = _config(layers)
    assert ArchConfig.from_json(config.to_json()) == config
    path = tmp_path / "arch.json"
    config.to_json(path)
    again = ArchConfig.from_json(path)
    assert again == config and ArchConfig.from_json(str(path)) == config
    data = json.loads(config.to_json())
    assert data["schema_version"] == 1
    # defaults are written out, so the file does not depend on today's defaults
    assert data["layers"][0]["params"] == {}
    assert data["layers"][3]["params"] == {"block_size": 64, "num_random_blocks": 4, "seed": 0}
    assert data["layers"][7]["kernel_config"] == {"chunk_size": 32}


def test_layout_string_and_from_layout():
    config = ArchConfig.from_layout("SSSSSF", layer_params={"sliding_window": {"window": 16}}, **DIMS)
    assert config.layout_string() == "SSSSSF"
    assert config.n_layers == 6 and config.layers[0].params == {"window": 16}
    every = "".join(m.code for m in MECHANISMS.values())
    assert ArchConfig.from_layout(every, **DIMS).mechanisms() == list(MECHANISMS)


def test_v_head_dim_defaults_to_head_dim():
    assert _config(["full"]).v_head_dim == 16
    assert ArchConfig(n_layers=1, layers=["full"], v_head_dim=32, **DIMS).v_head_dim == 32


def test_scaled_tiles_the_layer_pattern():
    config = ArchConfig.from_layout("MMMF", **DIMS)
    deeper = config.scaled(n_layers=8, d_model=128, head_dim=32)
    assert deeper.layout_string() == "MMMFMMMF"
    assert (deeper.d_model, deeper.head_dim, deeper.v_head_dim, deeper.n_heads) == (128, 32, 32, 4)
    assert config.scaled(n_layers=2).layout_string() == "MM"
    with pytest.raises(ConfigError, match="n_layers"):
        config.scaled(n_layers=0)


def test_with_layers():
    config = ArchConfig.from_layout("FF", **DIMS)
    new = config.with_layers(["mamba2", {"mechanism": "sliding_window", "params": {"window": 4}}, "full"])
    assert new.layout_string() == "MSF" and new.n_layers == 3 and new.d_model == 64
    assert config.with_layers("SSQF").mechanisms() == ["sliding_window", "sliding_window", "gated_deltanet", "full"]
    with pytest.raises(ConfigError, match="layout letter"):
        config.with_layers("SX")


@pytest.mark.parametrize("layer, field", [
    ({"mechanism": "nope"}, "layers[0].mechanism"),
    ({"mechanism": "sliding_window", "params": {"window": 0}}, "layers[0].params.window"),
    ({"mechanism": "longformer", "params": {"window": -5}}, "layers[0].params.window"),
    ({"mechanism": "block_topk", "params": {"block_size": 24}}, "layers[0].params.block_size"),
    ({"mechanism": "random_sparse", "params": {"block_size": 8}}, "layers[0].params.block_size"),
    ({"mechanism": "block_topk", "params": {"top_k": 0}}, "layers[0].params.top_k"),
    ({"mechanism": "performer", "params": {"num_features": 100}}, "layers[0].params.num_features"),
    ({"mechanism": "linear", "params": {"feature_map": "tanh"}}, "layers[0].params.feature_map"),
    ({"mechanism": "full", "params": {"window": 3}}, "layers[0].params.window"),
    ({"mechanism": "linear", "params": {"chunk_size": 32}}, "layers[0].params.chunk_size"),
    ({"mechanism": "gla", "kernel_config": {"chunk_size": 48}}, "layers[0].kernel_config.chunk_size"),
    ({"mechanism": "full", "kernel_config": {"chunk_size": 64}}, "layers[0].kernel_config.chunk_size"),
])
def test_invalid_layer_names_the_field(layer, field):
    data = _config(["full"]).to_dict()
    data["layers"] = [layer]
    with pytest.raises(ConfigError) as info:
        ArchConfig.from_dict(data)
    message = str(info.value)
    assert message.startswith(field + ":"), message
    assert "\n" not in message


@pytest.mark.parametrize("change, field", [
    ({"n_layers": 3}, "layers"),
    ({"d_model": 0}, "d_model"),
    ({"n_heads": -1}, "n_heads"),
    ({"schema_version": 99}, "schema_version"),
    ({"surprise": 1}, "surprise"),
])
def test_invalid_dims_names_the_field(change, field):
    data = _config(["full", "mamba2"]).to_dict()
    data.update(change)
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        ArchConfig.from_dict(data)


def test_missing_field_and_malformed_json(tmp_path):
    data = _config(["full"]).to_dict()
    del data["d_model"]
    with pytest.raises(ConfigError, match=r"^d_model: required"):
        ArchConfig.from_dict(data)
    with pytest.raises(ConfigError, match=r"^json: malformed JSON at line 1"):
        ArchConfig.from_json('{"d_model": 64,')
    with pytest.raises(ConfigError, match=r"^json: no such config file"):
        ArchConfig.from_json(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match=r"^config: must be a JSON object"):
        ArchConfig.from_json("[1, 2]")


def test_config_error_is_value_error_from_constructor_too():
    with pytest.raises(ValueError, match=r"^layers\[0\]\.params\.window"):
        ArchConfig(n_layers=1, layers=[{"mechanism": "sliding_window", "params": {"window": 0}}], **DIMS)


def test_presets_layouts():
    dims = dict(d_model=64, n_heads=4, head_dim=16)
    assert preset("gemma3", n_layers=12, **dims).layout_string() == "SSSSSF" * 2
    assert preset("gemma3", n_layers=6, **dims).layers[0].params == {"window": 1024}
    assert preset("command_a", n_layers=8, **dims).layout_string() == "SSSF" * 2
    assert preset("command_a", n_layers=4, **dims).layers[0].params == {"window": 4096}
    assert preset("jamba", n_layers=8, **dims).layout_string() == "MMMMMMMF"
    assert preset("qwen3_next", n_layers=8, **dims).layout_string() == "QQQF" * 2
    assert preset("transformer", n_layers=3, **dims).layout_string() == "FFF"
    assert preset("linear", n_layers=2, **dims).layout_string() == "AA"
    for name in PRESETS:
        config = preset(name, n_layers=4, **dims)
        assert ArchConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="^preset: unknown preset"):
        preset("nope", n_layers=2, **dims)
