import pytest

from attnsearch.evaluators import memory
from attnsearch.space.arch import ArchConfig
from attnsearch.space.presets import preset

DIMS = dict(d_model=128, n_layers=4, n_heads=4, head_dim=32, vocab_size=300, max_seq_len=2048)


def test_full_attention_state_is_the_kv_cache():
    arch = preset("transformer", **DIMS)
    # K and V, 4 heads x 32 dims, 1000 tokens, 4 layers, bf16
    assert memory.state_bytes(arch, 1000) == 4 * 2 * 4 * 32 * 1000 * 2
    assert memory.state_bytes(arch, 1000, "fp32") == 2 * memory.state_bytes(arch, 1000)


def test_windowed_state_stops_growing_and_linear_state_is_constant():
    sw = ArchConfig(layers=[{"mechanism": "sliding_window", "params": {"window": 256}}] * 4, n_layers=4,
                    **{k: v for k, v in DIMS.items() if k != "n_layers"})
    assert memory.state_bytes(sw, 10_000) == memory.state_bytes(sw, 5_000) < memory.state_bytes(
        preset("transformer", **DIMS), 5_000)
    lin = preset("gated_deltanet", **DIMS)
    assert memory.state_bytes(lin, 100) == memory.state_bytes(lin, 100_000) > 0


def test_per_layer_sums_to_total_and_hybrid_mixes():
    arch = preset("jamba", **{**DIMS, "n_layers": 8})
    per = memory.state_bytes_per_layer(arch, 4096)
    assert sum(per) == memory.state_bytes(arch, 4096)
    assert per[7] > per[0]            # the full layer holds the KV cache


def test_param_count_matches_the_built_model():
    torch = pytest.importorskip("torch")
    from attnsearch.models import build_model

    for name in ("transformer", "qwen3_next", "jamba"):
        arch = preset(name, **{**DIMS, "n_layers": 4})
        model = build_model(arch)
        assert memory.param_count(arch) == sum(p.numel() for p in model.parameters()), name


def test_evaluate_memory_and_bad_dtype():
    arch = preset("gemma3", **{**DIMS, "n_layers": 6})
    r = memory.evaluate_memory(arch, 2048)
    assert r.state_bytes == memory.state_bytes(arch, 2048) and r.weight_bytes == 2 * r.param_count
    assert r.to_dict()["context_len"] == 2048
    with pytest.raises(ValueError, match="dtype 'int3' not allowed"):
        memory.state_bytes(arch, 10, "int3")
