"""The mechanism catalogue: names, codes, parameter specs and the shape of its formulas.

(That state_bytes and param_count equal the real caches and modules is checked in tests/models.)
"""
import pytest

from attnsearch.space import MECHANISMS, ArchConfig, ConfigError, mechanism

CANONICAL = ["full", "sliding_window", "dilated", "random_sparse", "longformer", "bigbird",
             "block_topk", "linear", "performer", "cosformer", "retnet", "mamba2", "gla",
             "deltanet", "gated_deltanet"]
ARCH = ArchConfig(d_model=256, n_layers=1, n_heads=4, head_dim=64, layers=["full"])


def test_canonical_names_unique_codes_and_families():
    assert list(MECHANISMS) == CANONICAL
    codes = [m.code for m in MECHANISMS.values()]
    assert len(set(codes)) == len(codes) and all(len(c) == 1 and c.isupper() for c in codes)
    for m in MECHANISMS.values():
        assert m.family in ("softmax", "linear", "delta")
        assert m.op == {"softmax": "softmax_attention", "linear": "linear_attention", "delta": "delta_rule"}[m.family]
        for spec in m.params.values():
            assert spec.kind in ("quality", "tunable")
            assert spec.check(spec.default, "x") == spec.default      # defaults are valid


def test_lookup_error_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        mechanism("flash")
    assert "flash" in str(info.value) and all(name in str(info.value) for name in CANONICAL)


def test_tunables_are_kernel_only():
    for m in MECHANISMS.values():
        tunables = set(m.tunable_params())
        assert tunables == ({"chunk_size"} if m.family != "softmax" else set())
    assert set(mechanism("block_topk").quality_params()) == {"block_size", "top_k"}


def test_state_bytes_shape():
    L1, L2 = 4096, 65536
    kv_per_token = 4 * (64 + 64) * 2
    assert mechanism("full").state_bytes(ARCH, {}, L1) == L1 * kv_per_token
    sw = mechanism("sliding_window")
    assert sw.state_bytes(ARCH, {"window": 1024}, 100) == 100 * kv_per_token
    assert sw.state_bytes(ARCH, {"window": 1024}, L2) == 1023 * kv_per_token
    lf = mechanism("longformer")
    assert lf.state_bytes(ARCH, {}, L2) == lf.state_bytes(ARCH, {}, L2 + 64) < mechanism("full").state_bytes(ARCH, {}, L2)
    for name in ("linear", "performer", "cosformer", "retnet", "mamba2", "gla", "deltanet", "gated_deltanet"):
        m = mechanism(name)
        assert m.state_bytes(ARCH, {}, 1) == m.state_bytes(ARCH, {}, L2) > 0, name
    assert mechanism("linear").state_bytes(ARCH, {}, 10, dtype_bytes=4) == 4 * (4 * 64 * 64 + 4 * 64)
    with pytest.raises(ValueError):
        mechanism("full").state_bytes(ARCH, {}, -1)


def test_cost_grows_as_expected():
    T = 16384
    full = mechanism("full").cost(ARCH, {}, T, batch=2)
    assert full.flops > 0 and full.bytes > 0
    assert full.flops == pytest.approx(full.detail["projection_flops"] + full.detail["core_flops"])
    # projections: 4 d x (H*64) matrices, 2 FLOPs per multiply-add, over B*T tokens
    assert full.detail["projection_flops"] == 2 * 2 * T * 4 * 256 * 256
    dilated = mechanism("dilated").cost(ARCH, {"dilation": 2}, T, batch=2)
    assert dilated.detail["core_flops"] == pytest.approx(full.detail["core_flops"] / 2, rel=0.01)
    for name in ("sliding_window", "random_sparse", "longformer", "bigbird", "block_topk"):
        sparse = mechanism(name).cost(ARCH, {}, T, batch=2)
        assert sparse.detail["core_flops"] < full.detail["core_flops"] / 4, name
    for name in ("linear", "mamba2", "gla", "deltanet", "gated_deltanet"):
        m = mechanism(name)
        c1, c2 = m.cost(ARCH, {}, T, 1), m.cost(ARCH, {}, 2 * T, 1)
        assert c2.flops == pytest.approx(2 * c1.flops, rel=1e-6), name      # linear in T
    # full attention is quadratic
    assert mechanism("full").cost(ARCH, {}, 2 * T, 1).detail["core_flops"] > 3.9 * mechanism("full").cost(ARCH, {}, T, 1).detail["core_flops"]
