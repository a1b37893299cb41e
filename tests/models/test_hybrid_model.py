"""HybridLM as a whole: mixed layouts, build_model inputs, training step, kernel config plumbing."""
import pytest
import torch

from attnsearch.models import build_model, cache_state_bytes
from attnsearch.space import MECHANISMS, ArchConfig, ConfigError, LayerSpec
from attnsearch.space.presets import PRESETS, preset

from tiny_models import SMALL_PARAMS, VOCAB, tiny_config, tiny_model


def _mixed_config():
    layout = "SFMQKLRA"
    layers = []
    for letter in layout:
        name = next(m.name for m in MECHANISMS.values() if m.code == letter)
        layers.append(LayerSpec(mechanism=name, params=SMALL_PARAMS.get(name, {})))
    return ArchConfig(d_model=32, n_layers=len(layers), n_heads=2, head_dim=16, v_head_dim=32,
                      vocab_size=VOCAB, max_seq_len=64, layers=layers)


def test_mixed_layout_decodes_exactly_and_counts_state():
    config = _mixed_config()
    torch.manual_seed(0)
    model = build_model(config).double().eval()
    tokens = torch.randint(0, VOCAB, (1, 35))
    with torch.no_grad():
        full = model(tokens)
        cache = model.init_cache(1)
        model(tokens[:, :18], cache)
        for t in range(18, 35):
            torch.testing.assert_close(model.step(tokens[:, t], cache), full[:, t], rtol=0, atol=1e-10)
    expected = sum(MECHANISMS[layer.mechanism].state_bytes(config, layer.params, 35, dtype_bytes=8)
                   for layer in config.layers)
    assert cache_state_bytes(cache) == expected == config.state_bytes(35, dtype_bytes=8)


def test_build_model_from_config_dict_json_and_path(tmp_path):
    config = tiny_config("gated_deltanet")
    path = tmp_path / "arch.json"
    config.to_json(path)
    tokens = torch.randint(0, VOCAB, (1, 10))
    outs = []
    for source in (config, config.to_dict(), config.to_json(), path, str(path)):
        torch.manual_seed(0)
        outs.append(build_model(source)(tokens))
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0])
    with pytest.raises(ConfigError, match="^layers"):
        build_model({**config.to_dict(), "n_layers": 5})
    with pytest.raises(ConfigError, match="^config"):
        build_model(42)


def test_tied_head_and_backward(mechanism_name):
    torch.manual_seed(0)
    model = build_model(tiny_config(mechanism_name))
    assert model.lm_head.weight is model.embed.weight
    tokens = torch.randint(0, VOCAB, (2, 24))
    logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
    loss.backward()
    mixer_grads = [p.grad for p in model.blocks[0].mixer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in mixer_grads)
    assert any(g.abs().sum() > 0 for g in mixer_grads)


@pytest.mark.parametrize("name", ["linear", "mamba2", "gla", "deltanet", "gated_deltanet"])
def test_chunk_size_is_quality_neutral(name):
    model16 = tiny_model(name)
    config32 = model16.config.with_layers(
        [layer.model_copy(update={"kernel_config": {"chunk_size": 32}}) for layer in model16.config.layers])
    model32 = build_model(config32).double()
    model32.load_state_dict(model16.state_dict())
    assert model32.blocks[0].mixer.chunk_size == 32
    tokens = torch.randint(0, VOCAB, (2, 45))
    with torch.no_grad():
        torch.testing.assert_close(model32(tokens), model16(tokens), rtol=0, atol=1e-10)


def test_kernel_config_reaches_the_op():
    config = tiny_config("full")
    bad = config.with_layers([LayerSpec(mechanism="full", kernel_config={"no_such_tunable": 1})] * 2)
    with pytest.raises(ValueError, match="no_such_tunable"):
        build_model(bad, backend="torch")(torch.randint(0, VOCAB, (1, 8)))


def test_longer_than_max_seq_len_is_refused():
    model = tiny_model("random_sparse")
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.randint(0, VOCAB, (1, 129)))


def test_every_preset_builds_and_runs_at_proxy_size():
    for name in PRESETS:
        config = preset(name, d_model=32, n_layers=4, n_heads=2, head_dim=16, vocab_size=VOCAB, max_seq_len=256)
        model = build_model(config)
        out = model.generate(torch.randint(0, VOCAB, (12,)), 3)
        assert out.shape == (15,), name
