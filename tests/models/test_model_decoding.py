"""For every mechanism: causality, step decoding == full forward, cache bytes == catalogue."""
import pytest
import torch

from attnsearch.models import cache_state_bytes
from attnsearch.space import MECHANISMS

from tiny_models import VOCAB, tiny_model

T = 53          # not a multiple of the block (16) or the chunk (16)


def test_causal(mechanism_name):
    model = tiny_model(mechanism_name)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (2, T), generator=gen)
    with torch.no_grad():
        logits = model(tokens)
        for t in (0, 15, 16, 31, 40):      # around block boundaries too
            changed = tokens.clone()
            changed[:, t + 1:] = torch.randint(0, VOCAB, (2, T - t - 1), generator=gen)
            assert not torch.equal(changed, tokens)
            other = model(changed)
            torch.testing.assert_close(other[:, :t + 1], logits[:, :t + 1], rtol=0, atol=1e-10)
            assert not torch.allclose(other[:, t + 1:], logits[:, t + 1:])   # the change is seen later


@pytest.mark.parametrize("prefill", [0, 20])
def test_step_decoding_reproduces_forward(mechanism_name, prefill):
    model = tiny_model(mechanism_name)
    tokens = torch.randint(0, VOCAB, (2, T), generator=torch.Generator().manual_seed(2))
    mech = MECHANISMS[mechanism_name]
    with torch.no_grad():
        full = model(tokens)
        cache = model.init_cache(2)
        if prefill:
            torch.testing.assert_close(model(tokens[:, :prefill], cache), full[:, :prefill], rtol=0, atol=1e-10)
        for t in range(prefill, T):
            step_logits = model.step(tokens[:, t], cache)
            torch.testing.assert_close(step_logits, full[:, t], rtol=0, atol=1e-10,
                                       msg=lambda m: f"{mechanism_name} position {t}: {m}")
            # the cache holds exactly what the catalogue says, after every token
            expected = [2 * mech.state_bytes(model.config, layer.params, t + 1, dtype_bytes=8)
                        for layer in model.config.layers]
            assert cache_state_bytes(cache, per_layer=True) == expected, (mechanism_name, t + 1)
        assert cache.pos == T


def test_prefill_cache_bytes_match_catalogue(mechanism_name):
    model = tiny_model(mechanism_name)
    mech = MECHANISMS[mechanism_name]
    for L in (1, 16, 17, 40):
        cache = model.init_cache(3)
        with torch.no_grad():
            model(torch.randint(0, VOCAB, (3, L)), cache)
        params = model.config.layers[0].params
        assert cache_state_bytes(cache) == 2 * 3 * mech.state_bytes(model.config, params, L, dtype_bytes=8), L


def test_param_count_matches_catalogue(mechanism_name):
    model = tiny_model(mechanism_name)
    mixer = model.blocks[0].mixer
    mech = MECHANISMS[mechanism_name]
    assert sum(p.numel() for p in mixer.parameters()) == mech.param_count(model.config, model.config.layers[0].params)


def test_generate_is_greedy_decoding(mechanism_name):
    model = tiny_model(mechanism_name)
    prompt = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(4))
    out = model.generate(prompt, 12)
    assert out.shape == (2, 21) and torch.equal(out[:, :9], prompt)
    with torch.no_grad():
        logits = model(out)
    torch.testing.assert_close(out[:, 9:], logits[:, 8:-1].argmax(-1), rtol=0, atol=0)


def test_step_replaces_cache_tensors_without_writing_into_them(mechanism_name):
    model = tiny_model(mechanism_name)
    with torch.no_grad():
        cache = model.init_cache(2)
        model(torch.randint(0, VOCAB, (2, 31)), cache)
        before = [{k: v.clone() for k, v in layer.items()} for layer in cache.layers]
        mixer, layer_cache = model.blocks[0].mixer, cache.layers[0]
        first = mixer.step(torch.randn(2, 32, dtype=torch.float64), dict(layer_cache), 31)
        again = mixer.step(first * 0 + 1, dict(layer_cache), 31)   # same cache, other input
        assert again.shape == (2, 32)
    for layer, saved in zip(cache.layers, before):
        for key, value in saved.items():
            assert torch.equal(layer[key], value), key
