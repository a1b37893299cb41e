"""Triton linear attention / delta rule (under TRITON_INTERPRET=1, fp32) vs the float64 recurrence.

Every case checks the output, the final state and the gradient of every input (q, k, v, g, beta,
initial_state) on random inputs with T not a multiple of the chunk.
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch

from attnsearch import kernels
from attnsearch.kernels import delta_rule_ref, linear_attention_ref

TOL = 2e-5  # fp32 everywhere (the interpreter's products are exact fp32)


@pytest.fixture(scope="module", autouse=True)
def interpreter():
    """Kernels are bound to the interpreter when decorated: (re)load the module with it switched on."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime.interpreter import InterpretedFunction

    from attnsearch.kernels import triton_linear
    if not isinstance(triton_linear._state_fwd_kernel, InterpretedFunction):
        importlib.reload(triton_linear)
    yield triton_linear
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


def _rel(a, b):
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def _gate(kind, B, T, H, K, gmin, gen):
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    return {None: None, "H": u(H) * gmin, "BTH": u(B, T, H) * gmin, "BTHK": u(B, T, H, K) * gmin}[kind]


def _compare(op, gate, *, B=1, T=37, H=2, K=16, V=32, chunk=16, gmin=-1.0, h0=True, seed=0, config=None,
             grad_g=True, g_dtype=None, g=None):
    gen = torch.Generator().manual_seed(seed)
    x = {"q": torch.randn(B, T, H, K, generator=gen), "k": torch.randn(B, T, H, K, generator=gen),
         "v": torch.randn(B, T, H, V, generator=gen)}
    if op == "delta":
        x["k"] = torch.nn.functional.normalize(x["k"], dim=-1)
        x["beta"] = torch.rand(B, T, H, generator=gen)
    g = _gate(gate, B, T, H, K, gmin, gen) if g is None else g
    if g is not None:
        # a gate in its own dtype (the reference takes its rounded values exactly)
        x["g"] = g if g_dtype is None else g.to(g_dtype)
    if h0:
        x["h0"] = torch.randn(B, H, K, V, generator=gen)
    ours = {n: t.clone().requires_grad_(n != "g" or grad_g) for n, t in x.items()}
    ref = {n: t.double().requires_grad_(True) for n, t in x.items()}
    if op == "delta":
        o, s = kernels.delta_rule(ours["q"], ours["k"], ours["v"], ours["beta"], ours.get("g"), chunk_size=chunk,
                                  initial_state=ours.get("h0"), output_final_state=True, backend="triton",
                                  config=config)
        ro, rs = delta_rule_ref(ref["q"], ref["k"], ref["v"], ref["beta"], ref.get("g"), None, ref.get("h0"), True)
    else:
        o, s = kernels.linear_attention(ours["q"], ours["k"], ours["v"], ours.get("g"), chunk_size=chunk,
                                        initial_state=ours.get("h0"), output_final_state=True, backend="triton",
                                        config=config)
        ro, rs = linear_attention_ref(ref["q"], ref["k"], ref["v"], ref.get("g"), None, ref.get("h0"), True)
    assert o.dtype == x["q"].dtype and o.shape == ro.shape and s.shape == rs.shape
    wo = torch.randn(ro.shape, generator=gen)
    ws = torch.randn(rs.shape, generator=gen)
    ((o * wo).sum() + (s * ws).sum()).backward()
    ((ro * wo.double()).sum() + (rs * ws.double()).sum()).backward()
    errs = {"o": _rel(o, ro), "state": _rel(s, rs)}
    errs.update({"d" + n: _rel(ours[n].grad, ref[n].grad) for n in ours if ours[n].requires_grad})
    # dg comes back in the gate's dtype: a bf16 gradient carries bf16 rounding (2^-8)
    tol = {"dg": 8e-3} if g_dtype in (torch.bfloat16, torch.float16) else {}
    bad = {n: e for n, e in errs.items() if not e <= tol.get(n, TOL)}  # NaN fails too
    assert not bad, f"{op} gate={gate}: errors above {TOL}: {bad}"


@pytest.mark.parametrize("gate", [None, "H", "BTH", "BTHK"])
def test_linear_attention_matches_recurrence(gate):
    _compare("linear", gate, T=37, chunk=16)


@pytest.mark.parametrize("gate", [None, "BTH"])
def test_delta_rule_matches_recurrence(gate):
    _compare("delta", gate, T=37, chunk=16)


@pytest.mark.parametrize("T,chunk,gmin,config", [(37, 16, -1.0, None), (32, 16, -1.0, None), (9, 16, -1.0, None),
                                                 (35, 32, -20.0, None), (37, 16, -1.0, {"OUT_V_LOOP": 1}),
                                                 (37, 16, -1.0, {"PREP_SCALAR": 2})])
def test_fixed_decay_without_gate_gradient(interpreter, monkeypatch, T, chunk, gmin, config):
    """RetNet's fixed [H] decay with no gradient takes the kernels' fixed path: the chunk's cumulative
    decay comes from the row index, with no pass over the gate (the passes are made to fail here)."""
    def no_pass(*a, **k):
        raise AssertionError("the fixed-decay path made a pass over the gate")
    monkeypatch.setattr(interpreter, "_chunk_cumsum", no_pass)
    monkeypatch.setattr(interpreter, "_gate_prep", no_pass)
    _compare("linear", "H", T=T, chunk=chunk, gmin=gmin, K=16, V=16, seed=5, config=config, grad_g=False)


def test_fixed_head_gate_delta_rule():
    _compare("delta", "H", T=21, chunk=16, V=16)


@pytest.mark.parametrize("op,gate", [("linear", "H"), ("linear", "BTH"), ("linear", "BTHK"), ("delta", "H"),
                                     ("delta", "BTH")])
def test_strong_decay_is_exact_and_finite(op, gate):
    # g down to -20 per step: the cumulative gate reaches -600 inside a chunk; nothing may overflow,
    # and the gate gradient (tiny here) must not drown in cancelling O(1) terms
    _compare(op, gate, T=35, chunk=32, K=16, V=16, gmin=-20.0, seed=3)


@pytest.mark.parametrize("op,gate,T,chunk", [("linear", "BTHK", 40, 32), ("delta", "BTH", 70, 64),
                                             ("linear", None, 70, 64)])
def test_larger_chunks_and_tiles(op, gate, T, chunk):
    # several 16-row sub-blocks per chunk (per-channel gate, UT block inverse) and split K/V tiles
    config = {"BLOCK_V": 16, "OUT_BLOCK_K": 16, "OUT_BLOCK_V": 16, "BWD_BLOCK_V": 16}
    if op == "linear":
        config["BLOCK_K"] = 16
    _compare(op, gate, T=T, K=32, V=32, chunk=chunk, config=config, seed=5)


def test_without_initial_state():
    _compare("linear", "BTH", T=20, chunk=16, h0=False, V=16)
    _compare("delta", None, T=20, chunk=16, h0=False, V=16)


def test_output_final_state_false_returns_none():
    q = torch.randn(1, 18, 1, 16)
    o, s = kernels.linear_attention(q, q, q, chunk_size=16, backend="triton")
    assert s is None and o.shape == q.shape


@pytest.mark.parametrize("op,config,chunk", [
    ("linear_attention", {"BLOCK_K": 48}, 64),
    ("linear_attention", {"num_warps": 3}, 64),
    ("linear_attention", {"BLOCK_K": 256, "BLOCK_V": 256}, 64),
    ("linear_attention", {"OUT_BLOCK_K": 256, "OUT_BLOCK_V": 128}, 64),
    ("delta_rule", {"BWD_BLOCK_V": 256}, 128),
    ("linear_attention", {"tile": 64}, 64),
    ("linear_attention", {}, 256),
    ("delta_rule", {"BLOCK_K": 64}, 64),
    ("delta_rule", {"num_stages": 9}, 64),
    ("delta_rule", {}, 8),
    ("linear_attention", {"PREP_SCALAR": 3}, 64),
    ("linear_attention", {"GLA_OUT_FUSED": 2}, 64),
    ("delta_rule", {"PREP_CHANNEL": 1}, 64),
    ("delta_rule", {"GATED_BWD_BLOCK_V": 256}, 128),
])
def test_invalid_configs_raise(op, config, chunk):
    q = torch.randn(1, 20, 1, 16)
    with pytest.raises(ValueError):
        if op == "delta_rule":
            kernels.delta_rule(q, q, q, torch.rand(1, 20, 1), chunk_size=chunk, backend="triton", config=config)
        else:
            kernels.linear_attention(q, q, q, chunk_size=chunk, backend="triton", config=config)


def test_config_space_and_defaults_are_consistent(interpreter):
    for op in ("linear_attention", "delta_rule"):
        cfg = interpreter.default_config(op)
        assert set(cfg) <= set(interpreter.CONFIG_SPACE[op])
        for key, value in cfg.items():
            assert value in interpreter.CONFIG_SPACE[op][key]
        for chunk in interpreter.CHUNK_SIZES:
            interpreter.validate_config(op, cfg, chunk_size=chunk)


@pytest.mark.parametrize("paths,span", [({"PREP_CHANNEL": 0, "GLA_OUT_FUSED": 0}, 9.0),
                                        ({"PREP_CHANNEL": 1, "GLA_OUT_FUSED": 1}, -1.0),
                                        ({"PREP_CHANNEL": 1, "GLA_OUT_FUSED": 1}, 9.0)])
def test_per_channel_gate_sub_block_path(interpreter, monkeypatch, span, paths):
    # chunks whose cumulative gate spans more than GLA_SAFE_SPAN take the sub-block path: all of them
    # (span -1) or a mix of both paths inside one sequence (span 9: flags [[0, 1, 1], [0, 0, 1]] here);
    # with the gate pass and the fused output, b is stored only for the unsafe chunks
    monkeypatch.setattr(interpreter, "GLA_SAFE_SPAN", span)
    _compare("linear", "BTHK", T=40, chunk=16, K=16, V=16, gmin=-1.0, seed=7, config=paths)


@pytest.mark.parametrize("paths", [{"PREP_CHANNEL": 0, "GLA_OUT_FUSED": 0}, {"PREP_CHANNEL": 1, "GLA_OUT_FUSED": 1}])
@pytest.mark.parametrize("span", [None, 9.0])
@pytest.mark.parametrize("g_dtype,seed", [(torch.float16, 5), (torch.float64, 6)])
def test_gate_dtype_cumulative_sums(interpreter, monkeypatch, paths, span, g_dtype, seed):
    # a 16-bit per-channel gate forms its cumulative sums as matmuls with a 0/1 triangle (exact: every
    # product is a gate value); a gate wider than the inputs (fp64) keeps the fp32 cumulative sum. Span 9
    # mixes safe and sub-block chunks in one sequence. fp16, not bf16, here: the interpreter's bf16 tl.dot
    # multiplies the raw bits (Triton 3.x); bf16 gates are checked on the GPU (benchmarks/linear_gradcheck.py)
    if span is not None:
        monkeypatch.setattr(interpreter, "GLA_SAFE_SPAN", span)
    _compare("linear", "BTHK", T=40, chunk=16, K=16, V=16, gmin=-1.0, seed=seed, config=paths, g_dtype=g_dtype)


# the gate paths (precomputed decayed operands of the scans, fused GLA output), each alone and together
GATE_PATHS = [({"PREP_SCALAR": 0, "PREP_CHANNEL": 0, "GLA_OUT_FUSED": 0}, ("BTH", "BTHK")),
              ({"PREP_SCALAR": 1}, ("H", "BTH")), ({"PREP_SCALAR": 2}, ("H", "BTH")),
              ({"PREP_CHANNEL": 1}, ("BTHK",)), ({"GLA_OUT_FUSED": 1}, ("BTHK",)),
              ({"PREP_CHANNEL": 1, "GLA_OUT_FUSED": 1}, ("BTHK",)),
              ({"OUT_V_LOOP": 1, "OUT_BLOCK_V": 16}, (None, "BTH")), ({"OUT_V_LOOP": 0}, (None, "H", "BTH"))]


@pytest.mark.parametrize("paths,gates", GATE_PATHS)
def test_gate_paths_match_recurrence(paths, gates):
    for gate in gates:
        _compare("linear", gate, T=37, chunk=16, K=16, V=16, config=paths, seed=11)


@pytest.mark.parametrize("prep", [0, 1, 2])
def test_gate_paths_delta_rule(prep):
    _compare("delta", "BTH", T=37, chunk=16, K=16, V=16, config={"PREP_SCALAR": prep}, seed=12)
    if prep == 2:  # a fixed [H] gate without an initial state; the output's V loop
        _compare("delta", "BTH", T=37, chunk=16, K=16, V=32, config={"OUT_V_LOOP": 1, "OUT_BLOCK_V": 16}, seed=14)
        _compare("delta", "H", T=21, chunk=16, K=16, V=16, h0=False, config={"PREP_SCALAR": prep}, seed=13)


@pytest.mark.parametrize("op,gate", [("linear", None), ("linear", "BTHK"), ("delta", None), ("delta", "BTH")])
def test_backward_scan_own_tile_and_launch(op, gate):
    # the backward state scan on its own V tile (two tiles of V=32) and launch, the forward scan on another
    config = {"SCAN_BWD_BLOCK_V": 16, "scan_bwd_num_warps": 2, "scan_bwd_num_stages": 1, "BLOCK_V": 32}
    _compare(op, gate, T=37, chunk=16, K=16, V=32, config=config, seed=15)


@pytest.mark.parametrize("op,gate", [("linear", "H"), ("linear", "BTHK"), ("delta", "BTH")])
def test_gate_paths_strong_decay(op, gate):
    paths = {"PREP_SCALAR": 2} if op == "delta" else {"PREP_SCALAR": 2, "PREP_CHANNEL": 1, "GLA_OUT_FUSED": 1}
    _compare(op, gate, T=35, chunk=32, K=16, V=16, gmin=-20.0, seed=3, config=paths)


def test_gate_paths_split_tiles():
    # K tiles of the scans (the per-channel exp(b_last) is read per K tile) and several V tiles of the
    # fused output, several sub-blocks per chunk
    # fused output; the gated backward's own V tile (GATED_BWD_BLOCK_V) beside the ungated one's
    config = {"BLOCK_K": 16, "BLOCK_V": 16, "OUT_BLOCK_V": 16, "BWD_BLOCK_V": 32, "GATED_BWD_BLOCK_V": 16,
              "PREP_CHANNEL": 1, "GLA_OUT_FUSED": 1, "PREP_SCALAR": 2}
    _compare("linear", "BTHK", T=40, K=32, V=32, chunk=32, config=config, seed=5)
    _compare("linear", "BTH", T=40, K=32, V=32, chunk=32, config=config, seed=6)
    _compare("delta", "BTH", T=40, K=32, V=32, chunk=32, config={"BLOCK_V": 16, "BWD_BLOCK_V": 32,
                                                                 "GATED_BWD_BLOCK_V": 16}, seed=8)


@pytest.mark.parametrize("gate,gmin,T,chunk,K,V,tile", [
    (None, -1.0, 37, 16, 16, 32, 16), ("BTH", -1.0, 37, 16, 16, 32, 16), ("BTH", -20.0, 37, 16, 16, 32, 16),
    (None, -1.0, 40, 32, 32, 32, 16), ("BTH", -3.0, 40, 32, 32, 32, 16)])
def test_wy_bwd_split(gate, gmin, T, chunk, K, V, tile):
    """WY_BWD_SPLIT 1: dw by its own kernel, then the UT-transform backward accumulating dL over V and K tiles
    (one K tile and two V tiles at chunk 16; two of each with K = V = 32 in tiles of 16)."""
    _compare("delta", gate, T=T, chunk=chunk, K=K, V=V, gmin=gmin, seed=41,
             config={"WY_BWD_SPLIT": 1, "BWD_BLOCK_V": tile})


@pytest.mark.parametrize("gate,gmin", [(None, -1.0), ("BTH", -1.0), ("BTH", -20.0)])
def test_wy_bwd_split_fp16_matches_default(gate, gmin):
    """fp16 inputs: the split path keeps Tm in fp16 (the fp32 tests cannot see that rounding); its gradients
    must be as close to the float64 recurrence as the default path's (both ~5e-4 here)."""
    gen = torch.Generator().manual_seed(43)
    B, T, H, K, V = 1, 45, 2, 32, 32
    x = {"q": torch.randn(B, T, H, K, generator=gen),
         "k": torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1),
         "v": torch.randn(B, T, H, V, generator=gen), "beta": torch.rand(B, T, H, generator=gen)}
    x = {n: t.half() for n, t in x.items()}
    if gate:
        x["g"] = torch.rand(B, T, H, generator=gen) * gmin
    wo = torch.randn(B, T, H, V, generator=gen)
    ref = {n: t.double().requires_grad_(True) for n, t in x.items()}
    ro = delta_rule_ref(ref["q"], ref["k"], ref["v"], ref["beta"], ref.get("g"), None, None, False)[0]
    (ro * wo.double()).sum().backward()
    errs = []
    for config in ({}, {"WY_BWD_SPLIT": 1, "BWD_BLOCK_V": 16}):
        ours = {n: t.clone().requires_grad_(True) for n, t in x.items()}
        o, _ = kernels.delta_rule(ours["q"], ours["k"], ours["v"], ours["beta"], ours.get("g"), chunk_size=16,
                                  backend="triton", config=config)
        (o.float() * wo).sum().backward()
        errs.append({n: _rel(ours[n].grad, ref[n].grad) for n in ours})
    default, split = errs
    assert all(split[n] <= 1.1 * default[n] + 1e-4 for n in split), (default, split)


@pytest.mark.parametrize("tiles", [{"BLOCK_K": 32, "BLOCK_V": 16}, {"BLOCK_K": 16, "BLOCK_V": 32}])
@pytest.mark.parametrize("gate", ["H", "BTH"])
def test_scalar_decay_scan_tiles(tiles, gate):
    # the forward scan with the gate in its loop (no gate pass), K tiles wider and narrower than V tiles
    config = {**tiles, "PREP_SCALAR": 0}
    _compare("linear", gate, T=45, K=32, V=32, chunk=16, gmin=-3.0, config=config, seed=21,
             grad_g=gate != "H")


@pytest.mark.parametrize("dtype,chunk,most,most_bwd", [(torch.bfloat16, 64, 3, 3), (torch.float32, 64, 2, 2),
                                                      (torch.bfloat16, 128, 2, 1), (torch.float32, 128, 1, 1)])
def test_stages_fit_shared_memory(interpreter, dtype, chunk, most, most_bwd):
    # chunk 128 with the defaults' 3 stages asked for 311-332 KB of shared memory on the H200 (limit 227 KB)
    for op in interpreter.OPS:
        cfg = {**interpreter.default_config(op), "num_stages": 3, "out_num_stages": 3, "bwd_num_stages": 3}
        used = interpreter.fit_stages(cfg, dtype, chunk)
        assert used["num_stages"] == used["out_num_stages"] == used["scan_bwd_num_stages"] == most
        assert used["bwd_num_stages"] == most_bwd
        assert interpreter.fit_stages({**cfg, "num_stages": 1, "bwd_num_stages": 1}, dtype, chunk)["num_stages"] == 1


def test_fp32_inputs_cap_pipeline_stages(interpreter):
    # 3 stages of fp32 tiles overflowed the H200's shared memory (279-295 KB of 227 KB); bf16 keeps them
    cfg = interpreter.default_config("linear_attention")
    x32, x16 = torch.zeros(1, 4, 1, 16), torch.zeros(1, 4, 1, 16, dtype=torch.bfloat16)
    for x, most in ((x32, 2), (x16, 3)):
        used = interpreter._prepare(x, x, x, None, None, None, 64, {**cfg, "num_stages": 3, "out_num_stages": 3,
                                                                    "bwd_num_stages": 3})[-1]
        assert used["num_stages"] == used["out_num_stages"] == used["bwd_num_stages"] == most


@pytest.mark.parametrize("mode", [1, 2, 3])
@pytest.mark.parametrize("gate,gmin", [(None, -1.0), ("H", -1.0), ("H", -20.0), ("BTH", -1.0), ("BTH", -8.0),
                                       ("BTH", -20.0)])
def test_fused_forward_matches_recurrence(mode, gate, gmin):
    """The fused scan + output pass (FUSED_FWD), training forward: gmin -1 folds every chunk's decay, -20 takes
    the exact loop, -8 mixes sequences of both kinds; modes 1 / 2 leave (some) training forwards on the split path."""
    config = {"FUSED_FWD": mode, "FUSED_BLOCK_V": 16, "fused_num_stages": 2}
    _compare("linear", gate, T=37, chunk=16, K=16, V=32, gmin=gmin, config=config, grad_g=gate != "H", seed=31)


@pytest.mark.parametrize("fold", [0, 1, 3])
@pytest.mark.parametrize("gate,gmin", [(None, -1.0), ("H", -2.0), ("H", -20.0), ("BTH", -3.0), ("BTH", -20.0)])
def test_inference_forward_writes_no_states(interpreter, monkeypatch, fold, gate, gmin):
    """Without a gradient the fused pass runs with STORE_H off and the result equals the float64 recurrence;
    an ungated input with FUSED_FWD 0 still matches (the split path, h_n written and dropped)."""
    calls = []
    real = interpreter._fused_fwd
    monkeypatch.setattr(interpreter, "_fused_fwd",
                        lambda *a, **kw: calls.append(a[9]) or real(*a, **kw))  # a[9]: store_h
    gen = torch.Generator().manual_seed(41)
    B, T, H, K, V = 2, 45, 2, 32, 16
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v, h0 = torch.randn(B, T, H, V, generator=gen), torch.randn(B, H, K, V, generator=gen)
    g = _gate(gate, B, T, H, K, gmin, gen)
    for mode in (0, 1):
        with torch.no_grad():
            o, s = kernels.linear_attention(q, k, v, g, chunk_size=16, initial_state=h0, output_final_state=True,
                                            backend="triton", config={"FUSED_FWD": mode, "FUSED_FOLD": fold,
                                                                      "FUSED_BLOCK_V": 16, "fused_num_stages": 2})
        ro, rs = linear_attention_ref(q.double(), k.double(), v.double(), None if g is None else g.double(), None,
                                      h0.double(), True)
        assert _rel(o, ro) <= TOL and _rel(s, rs) <= TOL, (mode, _rel(o, ro), _rel(s, rs))
    assert calls == [False]  # only mode 1 took the fused pass, and stored no states


def test_fused_safe_flags(interpreter):
    """The per-sequence flag of the scalar-gate cumulative sum: 1 only when every chunk moves b by at most
    GLA_SAFE_SPAN after its first step (the first step itself may be anything); with levels (FUSED_FOLD 3 / 4)
    2 when by at most GLA_SAFE_SPAN / 2, 1 when by at most GLA_SAFE_SPAN, else 0: the widest chunk decides."""
    T, BT = 40, 16
    g = torch.full((1, T, 4), -1.0)
    g[0, 16, 1] = -1000.0                      # the first step of chunk 1: still level 2
    g[0, 20:32, 2] = -8.0                      # chunk 1 moves by 3 + 12 * 8 = 99 > 80 after its first step
    g[0, 20:32, 3] = -4.0                      # 3 + 12 * 4 = 51: within 80, not within 40
    b, flag = interpreter._chunk_cumsum(g, BT, flags=True)
    assert flag.tolist() == [1, 1, 0, 1]
    b, flag = interpreter._chunk_cumsum(g, BT, flags=True, levels=True)
    assert flag.tolist() == [2, 2, 0, 1]
    assert torch.allclose(b[0, 0, :16], torch.cumsum(g[0, :16, 0], 0))


def _inference_matches(g, config, seed):
    """Linear attention without a gradient (K = 16, V = 32, chunks of 16, an initial state) under ``config``, with
    the [1, T, H] gate g: output and final state equal the float64 recurrence."""
    gen = torch.Generator().manual_seed(seed)
    _, T, H = g.shape
    q, k = torch.randn(1, T, H, 16, generator=gen), torch.randn(1, T, H, 16, generator=gen)
    v, h0 = torch.randn(1, T, H, 32, generator=gen), torch.randn(1, H, 16, 32, generator=gen)
    with torch.no_grad():
        o, s = kernels.linear_attention(q, k, v, g, chunk_size=16, initial_state=h0, output_final_state=True,
                                        backend="triton", config=config)
    ro, rs = linear_attention_ref(q.double(), k.double(), v.double(), g.double(), None, h0.double(), True)
    assert _rel(o, ro) <= TOL and _rel(s, rs) <= TOL, (_rel(o, ro), _rel(s, rs))


def _three_level_gate(T, seed):
    """A [1, T, 3] data-dependent gate with one head at each fold level for chunks of 16: steps in (-1, 0] (a
    chunk spans at most 15), about -4 (about 60), about -20 (about 300: a folded loop's factors would overflow)."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(1, T, 3, generator=gen)
    return -(u * torch.tensor([1.0, 0.5, 0.5]) + torch.tensor([0.0, 3.75, 19.75]))


@pytest.mark.parametrize("fold", [3, 4, 5])
@pytest.mark.parametrize("op,mode", [("linear", 1), ("linear", 3), ("delta", 3)])
def test_fused_fold_levels_side_by_side(interpreter, fold, op, mode):
    """FUSED_FOLD 3 / 4 (5: within 72) with data-dependent gates: a head whose chunks span at most 40 takes the
    end-pivot loop,
    one within 80 FOLD 1's middle-pivot loop (before, the exact loop: the benchmark's logsigmoid(randn) steps span
    about 50 per 64 rows and made FOLD 3 1.45x slower on the H100), a wider one the exact loop; three heads of one
    batch, forward (inference, FUSED_FWD 1) or forward and every gradient (training, FUSED_FWD 3), T = 45 with a
    shorter last chunk."""
    g = _three_level_gate(45, seed=50)
    assert interpreter._chunk_cumsum(g, 16, flags=True, levels=True)[1].tolist() == [2, 1, 0]
    # FOLD 5's top level reaches LAZY_SPAN (72): the second head folds there too
    assert interpreter._chunk_cumsum(g, 16, flags=True, levels=True, top=72.0)[1].tolist() == [2, 2, 0]
    config = {"FUSED_FWD": mode, "FUSED_BLOCK_V": 16, "FUSED_FOLD": fold, "fused_num_stages": 2}
    if mode == 3:
        _compare(op, "BTH", T=45, H=3, chunk=16, K=16, V=32, config=config, seed=51, g=g)
        return
    _inference_matches(g, config, seed=52)


def test_gated_backward_warps(interpreter):
    """gated_bwd_num_warps sets the per-chunk backward's warps for gated inputs only (0: bwd_num_warps); the delta
    rule's defaults keep gated inputs at the 8 warps gradient-checked on the H200."""
    cfg = interpreter.default_config("delta_rule")
    assert interpreter._launch_opts(cfg, "bwd")["num_warps"] == cfg["bwd_num_warps"] == 4
    assert interpreter._launch_opts(cfg, "bwd_gated")["num_warps"] == 8
    assert interpreter._launch_opts({**cfg, "gated_bwd_num_warps": 0}, "bwd_gated")["num_warps"] == 4
    with pytest.raises(ValueError):
        kernels.delta_rule(*(torch.zeros(1, 4, 1, 16) for _ in range(3)), torch.zeros(1, 4, 1), chunk_size=16,
                           backend="triton", config={"gated_bwd_num_warps": 3})


def test_fused_config_validation():
    q = torch.randn(1, 20, 1, 16)
    for bad in ({"FUSED_FWD": 4}, {"fused_gated_num_stages": 5}, {"FUSED_FOLD": 6}, {"FUSED_BLOCK_V": 24}):
        with pytest.raises(ValueError):
            kernels.linear_attention(q, q, q, chunk_size=16, backend="triton", config=bad)


@pytest.mark.parametrize("mode", [1, 3])
@pytest.mark.parametrize("gate,gmin", [(None, -1.0), ("BTH", -1.0), ("BTH", -8.0), ("BTH", -20.0), ("H", -3.0)])
def test_fused_delta_rule_matches_recurrence(mode, gate, gmin):
    """The delta rule's fused pass (v_new = u - w h_n inside the loop), training forward with mode 3."""
    config = {"FUSED_FWD": mode, "FUSED_BLOCK_V": 16, "fused_num_stages": 2}
    _compare("delta", gate, T=37, chunk=16, K=16, V=32, gmin=gmin, config=config, seed=33)


@pytest.mark.parametrize("fold", [4, 5])
@pytest.mark.parametrize("op,gate,gmin", [("linear", "H", -0.5), ("linear", "BTH", -1.0), ("delta", "BTH", -1.0),
                                          ("linear", "BTH", -4.0), ("linear", "BTH", -9.0), ("delta", "BTH", -9.0)])
def test_fused_fold4_renormalises(op, gate, gmin, fold):
    """FUSED_FOLD 4 over 7 chunks of 16: the state's pending decay falls below LAZY_MIN (2^-20) within a few
    chunks (up to -8 and -16 a chunk) and is multiplied back into the state, more than once; -4 mixes folded and
    exact sequences. FOLD 5 multiplies it back before a chunk that would take it below exp(-72) (-9: chunks of
    about 70, FOLD 5's folded loop, FOLD 4's FOLD 1 loop). Inference (FUSED_FWD 1: no states stored) and
    training (3: states stored)."""
    for mode in (1, 3):
        config = {"FUSED_FWD": mode, "FUSED_BLOCK_V": 16, "FUSED_FOLD": fold, "fused_num_stages": 2}
        if mode == 1:
            gen = torch.Generator().manual_seed(40)
            B, T, H, K, V = 1, 100, 2, 16, 32
            q, k, v = (torch.randn(B, T, H, d, generator=gen) for d in (K, K, V))
            g = _gate(gate, B, T, H, K, gmin, gen)
            h0 = torch.randn(B, H, K, V, generator=gen)
            if op == "delta":
                k = torch.nn.functional.normalize(k, dim=-1)
                beta = torch.rand(B, T, H, generator=gen)
                with torch.no_grad():
                    o, s = kernels.delta_rule(q, k, v, beta, g, chunk_size=16, initial_state=h0,
                                              output_final_state=True, backend="triton", config=config)
                ro, rs = delta_rule_ref(q.double(), k.double(), v.double(), beta.double(), g.double(), None,
                                        h0.double(), True)
            else:
                with torch.no_grad():
                    o, s = kernels.linear_attention(q, k, v, g, chunk_size=16, initial_state=h0,
                                                    output_final_state=True, backend="triton", config=config)
                ro, rs = linear_attention_ref(q.double(), k.double(), v.double(), g.double(), None, h0.double(), True)
            assert _rel(o, ro) <= TOL and _rel(s, rs) <= TOL, (_rel(o, ro), _rel(s, rs))
        else:
            _compare(op, gate, T=100, chunk=16, K=16, V=32, gmin=gmin, config=config, grad_g=gate != "H", seed=41)


@pytest.mark.parametrize("fold", [0, 2, 3, 4])
@pytest.mark.parametrize("op,gate", [("linear", "H"), ("linear", "BTH"), ("delta", "BTH")])
def test_fused_scale16_plumbing(fold, op, gate):
    """FUSED_SCALE16 reaches every v-scaling form of the fused pass (exact, FOLD 2-4) and leaves fp32 inputs
    exact. Its point, the packed 16-bit multiply, needs 16-bit arithmetic that the interpreter gets wrong
    (bf16 elementwise products come out as garbage there), so the bf16 side is left to the GPU gradient check
    (benchmarks/linear_session.py, check "scale16")."""
    config = {"FUSED_FWD": 3, "FUSED_BLOCK_V": 16, "FUSED_FOLD": fold, "FUSED_SCALE16": 1, "fused_num_stages": 2}
    _compare(op, gate, T=37, chunk=16, K=16, V=32, gmin=-0.5, config=config, grad_g=gate != "H", seed=45)


@pytest.mark.parametrize("op,gate", [("linear", "H"), ("linear", "BTH"), ("delta", "BTH")])
def test_scan_scale16_plumbing(op, gate):
    """SCAN_SCALE16 with PREP_SCALAR 0 (the scans scale their rows in the loop), fused forward off: fp32 inputs
    stay exact (the 16-bit side needs the GPU gradient check, as FUSED_SCALE16's)."""
    config = {"SCAN_SCALE16": 1, "PREP_SCALAR": 0, "FUSED_FWD": 0}
    _compare(op, gate, T=37, chunk=16, K=16, V=32, gmin=-3.0, config=config, grad_g=gate != "H", seed=48)


@pytest.mark.parametrize("T,gmin", [(37, -1.0), (37, -4.0), (48, -20.0), (53, "mixed"), (48, "strong")])
@pytest.mark.parametrize("weak,one_sum", [(1, 0), (1, 1), (2, 0)])
def test_gate_grad_weak_steps(T, gmin, weak, one_sum):
    """DG_WEAK: chunks whose steps decay by at most WEAK_STEP (2) on average take fla's q.dq - k.dk form of
    Mamba-2's gate gradient, the others the exact chunk-local form (1: a branch per chunk; 2: two launches, one per
    form): all weak (-1), about half of them (-4: a mean step of 2), none (-20), a sequence with weak and strong
    chunks side by side ("mixed": steps down to -12 in its second and fourth chunk), and every step about -20
    ("strong", where fla's form is off by a factor of about 40)."""
    config = {"DG_WEAK": weak, "DG_ONE_SUM": one_sum}
    if gmin not in ("mixed", "strong"):
        _compare("linear", "BTH", T=T, chunk=16, K=16, V=32, gmin=gmin, config=config, seed=46)
        return
    gen = torch.Generator().manual_seed(47)
    B, H, K, V = 1, 2, 16, 32
    q, k = torch.randn(B, T, H, K, generator=gen), torch.randn(B, T, H, K, generator=gen)
    v, h0 = torch.randn(B, T, H, V, generator=gen), torch.randn(B, H, K, V, generator=gen)
    g = -torch.rand(B, T, H, generator=gen)
    if gmin == "strong":
        g = -20.0 + 2.0 * g
    else:
        g[:, 16:32] *= 12.0
        g[:, 48:] *= 12.0
    x = {"q": q, "k": k, "v": v, "g": g, "h0": h0}
    ours = {n: t.clone().requires_grad_(True) for n, t in x.items()}
    ref = {n: t.double().requires_grad_(True) for n, t in x.items()}
    o, s = kernels.linear_attention(ours["q"], ours["k"], ours["v"], ours["g"], chunk_size=16,
                                    initial_state=ours["h0"], output_final_state=True, backend="triton", config=config)
    ro, rs = linear_attention_ref(ref["q"], ref["k"], ref["v"], ref["g"], None, ref["h0"], True)
    wo, ws = torch.randn(ro.shape, generator=gen), torch.randn(rs.shape, generator=gen)
    ((o * wo).sum() + (s * ws).sum()).backward()
    ((ro * wo.double()).sum() + (rs * ws.double()).sum()).backward()
    for n in x:
        assert _rel(ours[n].grad, ref[n].grad) <= TOL, (n, _rel(ours[n].grad, ref[n].grad))


@pytest.mark.parametrize("T,gmin", [(37, -1.0), (48, -20.0)])
def test_gate_grad_one_sum(T, gmin):
    """DG_ONE_SUM: Mamba-2's gate gradient as one masked row sum per chunk (suffix of x, prefix of y), weak and
    strong decay, a shorter last chunk for T = 37."""
    _compare("linear", "BTH", T=T, chunk=16, K=16, V=32, gmin=gmin, config={"DG_ONE_SUM": 1}, seed=38)


@pytest.mark.parametrize("gate", ["BTH", "H"])
@pytest.mark.parametrize("T,gmin", [(37, -1.0), (48, -20.0)])
def test_bwd_kdec(gate, T, gmin):
    """BWD_KDEC: the scalar gates' keys decayed into the next state once before the per-chunk backward's V loop
    (Mamba-2's gate with its gradient, RetNet's fixed decay): weak and strong decay, a shorter last chunk."""
    _compare("linear", gate, T=T, chunk=16, K=16, V=32, gmin=gmin, config={"BWD_KDEC": 1}, grad_g=gate != "H",
             seed=40)


@pytest.mark.parametrize("T,gmin,h0", [(37, -1.0, True), (48, -20.0, True), (53, -4.0, False), (300, -0.05, True),
                                       (300, -20.0, False)])
@pytest.mark.parametrize("weak", [0, 1, 2])
def test_gate_grad_prefix_state_term(T, gmin, h0, weak):
    """DG_PREFIX: Mamba-2's state terms exp(b_last) <h_n, G_n> from the prefix sum F_n = F_{n-1} + Y_{n-1} - X_n of
    per-chunk sums, beside each DG_WEAK form: weak decay, strong (-20, where F_n is a cancellation of O(1) terms
    down to ~0), with and without an initial state, and 19 chunks of weak decay (-0.05: a long memory, large
    states) or strong decay (the error of the cancellation grows with the number of chunks summed)."""
    _compare("linear", "BTH", T=T, chunk=16, K=16, V=32, gmin=gmin, h0=h0, config={"DG_PREFIX": 1, "DG_WEAK": weak},
             seed=42)


@pytest.mark.parametrize("gate", [None, "H", "BTH", "BTHK"])
def test_heads_first_grid(gate):
    """HEADS_FIRST: the per-chunk backward and the backward's gate pass on a (B * H, NT) grid (two sequences, so
    that the batch and head indices both come from the swapped axis), a shorter last chunk, strong decay."""
    _compare("linear", gate, B=2, T=37, chunk=16, K=16, V=32, gmin=-8.0, config={"HEADS_FIRST": 1},
             grad_g=gate != "H", seed=41)


@pytest.mark.parametrize("T,gmin", [(37, -1.0), (48, -8.0), (37, -20.0)])
@pytest.mark.parametrize("config", [{"GLA_BWD_RELOAD": 1}, {"GLA_BWD_SPLIT": 1},
                                    {"GLA_BWD_SPLIT": 1, "GLA_BWD_RELOAD": 1}])
def test_gla_backward_variants(T, gmin, config):
    """GLA_BWD_RELOAD (the per-channel backward's epilogue on q, k and the gate loaded again) and GLA_BWD_SPLIT
    (safe and unsafe chunks from two launches): mild decay (every chunk safe), -8 (T = 48: safe and unsafe
    chunks in both heads) and -20 (none safe)."""
    _compare("linear", "BTHK", T=T, chunk=16, K=16, V=32, gmin=gmin, config=config, seed=39)


@pytest.mark.parametrize("fold", [3, 4])
@pytest.mark.parametrize("T,gmin", [(37, -0.5), (48, -1.0), (37, -4.0)])
def test_fused_fold3_gated_delta(fold, T, gmin):
    """FUSED_FOLD 3 / 4 on the gated delta rule's fused pass: chunks spanning at most 40 pivot at their end (-0.5,
    -1), stronger ones (-4: up to 60 per chunk) take the exact loop; a shorter last chunk for T = 37."""
    config = {"FUSED_FWD": 3, "FUSED_BLOCK_V": 16, "FUSED_FOLD": fold, "fused_num_stages": 2}
    _compare("delta", "BTH", T=T, chunk=16, K=16, V=32, gmin=gmin, config=config, seed=37)


@pytest.mark.parametrize("gate,gmin", [(None, -1.0), ("BTH", -2.0), ("BTH", -20.0)])
def test_fused_delta_inference(gate, gmin):
    gen = torch.Generator().manual_seed(43)
    B, T, H, K, V = 1, 45, 2, 32, 16
    q = torch.randn(B, T, H, K, generator=gen)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen), dim=-1)
    v, h0 = torch.randn(B, T, H, V, generator=gen), torch.randn(B, H, K, V, generator=gen)
    beta = torch.rand(B, T, H, generator=gen)
    g = _gate(gate, B, T, H, K, gmin, gen)
    with torch.no_grad():
        o, s = kernels.delta_rule(q, k, v, beta, g, chunk_size=16, initial_state=h0, output_final_state=True,
                                  backend="triton", config={"FUSED_FWD": 1, "FUSED_BLOCK_V": 16})
    ro, rs = delta_rule_ref(q.double(), k.double(), v.double(), beta.double(), None if g is None else g.double(),
                            None, h0.double(), True)
    assert _rel(o, ro) <= TOL and _rel(s, rs) <= TOL


@pytest.mark.parametrize("fold", [2, 3, 4])
@pytest.mark.parametrize("T", [37, 48])
@pytest.mark.parametrize("gmin", [-0.5, -4.0, -20.0])
def test_fused_fold_end_pivot(fold, T, gmin):
    """FUSED_FOLD 2 / 3: a fixed decay with (BT - 1)|g| <= 40 pivots at the chunk's end (gmin -0.5); stronger heads
    take the exact loop (-4, -20); the last chunk is shorter than the others for T = 37 (FOLD 3 hands it to the
    exact loop)."""
    config = {"FUSED_FWD": 3, "FUSED_BLOCK_V": 16, "FUSED_FOLD": fold, "fused_num_stages": 2}
    _compare("linear", "H", T=T, chunk=16, K=16, V=32, gmin=gmin, config=config, grad_g=False, seed=35)
    _compare("linear", "BTH", T=T, chunk=16, K=16, V=32, gmin=gmin, config=config, seed=36)


@pytest.mark.parametrize("split", [0, 1])
@pytest.mark.parametrize("K,prep", [(32, 2), (48, 0), (64, 2)])
@pytest.mark.parametrize("gate", [None, "BTH"])
def test_delta_backward_scan_split_k(split, K, prep, gate):
    """SCAN_BWD_SPLIT_K: the backward scan's state gradient in two halves of K (K = 48: the second half is
    partly past K), with the gate's operands precomputed (PREP_SCALAR 2) or scaled inside the loop (0)."""
    config = {"SCAN_BWD_SPLIT_K": split, "PREP_SCALAR": prep}
    _compare("delta", gate, T=37, chunk=16, K=K, V=16, gmin=-3.0, config=config, seed=39)


@pytest.mark.parametrize("K", [32, 48])
@pytest.mark.parametrize("gate,gmin,fold", [(None, -1.0, 1), ("H", -1.0, 1), ("H", -1.0, 2), ("H", -1.0, 3),
                                            ("H", -20.0, 1),
                                            ("BTH", -1.0, 1), ("BTH", -8.0, 1), ("BTH", -3.0, 0),
                                            ("BTH", -1.0, 3), ("BTH", -5.0, 3), ("H", -1.0, 4), ("BTH", -1.0, 4)])
def test_fused_split_k(K, gate, gmin, fold):
    """FUSED_SPLIT_K: the fused pass holds the state as two halves of K (K = 48: the second half partly past K)
    on every loop form (no gate, fixed decay folded about the middle or the end, exact, data-dependent gate
    folded, mixed, exact), for linear attention and the delta rule, training forward and backward."""
    config = {"FUSED_FWD": 3, "FUSED_BLOCK_V": 16, "FUSED_SPLIT_K": 1, "FUSED_FOLD": fold, "fused_num_stages": 2,
              "FUSED_PREFETCH": 1}
    _compare("linear", gate, T=37, chunk=16, K=K, V=16, gmin=gmin, config=config, grad_g=gate != "H", seed=40)
    if gate != "H":
        _compare("delta", gate, T=37, chunk=16, K=K, V=16, gmin=gmin, config=config, seed=41)


@pytest.mark.parametrize("save", [0, 1])
@pytest.mark.parametrize("fused,prep", [(3, 2), (0, 2), (0, 0), (3, 1)])
@pytest.mark.parametrize("gate", [None, "BTH"])
def test_delta_saved_tm(save, fused, prep, gate):
    """SAVE_TM: the backward forms w and u from the forward's Tm (fused forward or the scan + output path, the
    gate's operands precomputed or not) and must equal the float64 recurrence as when it inverts again."""
    config = {"SAVE_TM": save, "FUSED_FWD": fused, "PREP_SCALAR": prep, "FUSED_BLOCK_V": 16,
              "fused_num_stages": 2}
    _compare("delta", gate, T=37, chunk=16, K=16, V=32, gmin=-3.0, config=config, seed=42)


def test_delta_saved_tm_is_used(interpreter, monkeypatch):
    """With SAVE_TM the backward's UT transform takes the saved Tm (no diagonal inverses); without it it forms Tm."""
    seen = []
    real = interpreter._wy
    monkeypatch.setattr(interpreter, "_wy",
                        lambda *a, **kw: seen.append(kw.get("tm_in") is not None) or real(*a, **kw))
    for save in (1, 0):
        _compare("delta", None, T=20, chunk=16, K=16, V=16, config={"SAVE_TM": save}, seed=43)
    assert seen == [False, True, False, False]  # forward, backward (saved Tm); forward, backward (formed again)


@pytest.mark.parametrize("T", [37, 48])
@pytest.mark.parametrize("gmin", [-1.0, -8.0, -20.0])
def test_fused_prefetch(T, gmin):
    """FUSED_PREFETCH 1: a data-dependent scalar gate's b, b_0 and b_last are loaded one chunk ahead; the last
    chunk (shorter than the others for T = 37) must not read past its own rows; folded, mixed and exact sequences."""
    config = {"FUSED_FWD": 3, "FUSED_BLOCK_V": 16, "FUSED_PREFETCH": 1, "fused_num_stages": 2}
    _compare("linear", "BTH", T=T, chunk=16, K=16, V=32, gmin=gmin, config=config, seed=37)
    _compare("delta", "BTH", T=T, chunk=16, K=16, V=32, gmin=gmin, config=config, seed=38)


@pytest.mark.parametrize("fixed", [False, True])
def test_fused_fp16_inputs_stay_finite(fixed):
    """fp16 inputs take the exact loop: folding exp(r - b_j) (up to exp(15) here) onto v would overflow fp16."""
    gen = torch.Generator().manual_seed(47)
    B, T, H, K, V = 1, 48, 2, 16, 16
    q, k, v = (torch.randn(B, T, H, D, generator=gen).half() for D in (K, K, V))
    g = torch.tensor([-2.0, -1.0]) if fixed else -2.4 * torch.rand(B, T, H, generator=gen)
    with torch.no_grad():
        o, _ = kernels.linear_attention(q, k, v, g, chunk_size=16, backend="triton",
                                        config={"FUSED_FWD": 1, "FUSED_BLOCK_V": 16, "fused_num_stages": 2})
    ro = linear_attention_ref(q.double(), k.double(), v.double(), g.double(), None, None, False)[0]
    assert torch.isfinite(o).all() and _rel(o, ro) <= 2e-3


def _wide_chunk_gate(T, seed):
    """[1, T, 2]: steps of about -4.4 (a chunk of 16 spans about 66 after its first step, within FOLD 5's 72, so
    the pending decay crosses exp(-72) every chunk); the second head also takes a first step of -60 in chunks 1 and
    3 (a reset: the span does not count it, the state's decay must)."""
    gen = torch.Generator().manual_seed(seed)
    g = -(4.3 + 0.2 * torch.rand(1, T, 2, generator=gen))
    g[0, 16, 1] = g[0, 48, 1] = -60.0
    return g


@pytest.mark.parametrize("op,mode", [("linear", 1), ("linear", 3), ("delta", 3)])
def test_fused_fold5_takes_wide_chunks_and_resets(interpreter, op, mode):
    """FUSED_FOLD 5 folds chunks spanning up to 72 (FOLD 3 / 4 stop at 40) and multiplies the pending decay back
    into the state before each chunk that would take it below exp(-72), the chunk's first step included, whatever
    its size: forward (and, training, every gradient) equal the float64 recurrence."""
    g = _wide_chunk_gate(70, seed=53)
    assert interpreter._chunk_cumsum(g, 16, flags=True, levels=True, top=72.0)[1].tolist() == [2, 2]
    config = {"FUSED_FWD": mode, "FUSED_BLOCK_V": 16, "FUSED_FOLD": 5, "fused_num_stages": 2}
    if mode == 3:
        _compare(op, "BTH", T=70, chunk=16, K=16, V=32, config=config, seed=54, g=g)
        return
    _inference_matches(g, config, seed=55)


@pytest.mark.parametrize("fold", [2, 3, 4, 5])
@pytest.mark.parametrize("op,mode", [("linear", 1), ("linear", 3), ("delta", 3)])
def test_fused_fold_strong_first_step(interpreter, fold, op, mode):
    """A chunk whose first step is a reset (-100: the span does not count it, so the sequence still folds) with
    weak steps after it: FOLD 4 once multiplied that step into its pending decay c, which underflowed to 0 and made
    v's factors exp(-b_j) / c infinite (NaN out); now c goes back into the state with the step before the chunk."""
    gen = torch.Generator().manual_seed(56)
    g = -0.5 * torch.rand(1, 70, 2, generator=gen)
    g[0, 16, :] = -100.0
    g[0, 48, 1] = -100.0
    assert interpreter._chunk_cumsum(g, 16, flags=True, levels=True)[1].tolist() == [2, 2]
    config = {"FUSED_FWD": mode, "FUSED_BLOCK_V": 16, "FUSED_FOLD": fold, "fused_num_stages": 2}
    if mode == 3:
        _compare(op, "BTH", T=70, chunk=16, K=16, V=32, config=config, seed=57, g=g)
        return
    _inference_matches(g, config, seed=57)
