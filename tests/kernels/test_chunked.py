"""Chunkwise torch backend == token-by-token reference (float64), outputs, states and gradients."""
import pytest
import torch

from attnsearch import kernels
from attnsearch.kernels import chunked, delta_rule_ref, linear_attention_ref

F64 = torch.float64


def make_inputs(B, T, H, K, V, *, seed, dtype=F64, normalise_k=False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=F64)
    k = torch.randn(B, T, H, K, generator=gen, dtype=F64)
    if normalise_k:  # the delta rule is only stable for |k| = 1 and beta in (0, 1)
        k = torch.nn.functional.normalize(k, dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=F64)
    return [x.to(dtype) for x in (q, k, v)], gen


def make_gate(kind, B, T, H, K, gen, strength=1.0):
    """A log-decay <= 0 of the given kind (None, 'fixed' [H], 'scalar' [B,T,H], 'channel' [B,T,H,K])."""
    shape = {"none": None, "fixed": (H,), "scalar": (B, T, H), "channel": (B, T, H, K)}[kind]
    if shape is None:
        return None
    return -strength * torch.rand(*shape, generator=gen, dtype=F64)


def _grads(out_and_state, inputs, gen_seed):
    """Gradients of a random projection of (o, final state) w.r.t. inputs (None entries skipped)."""
    o, state = out_and_state
    gen = torch.Generator().manual_seed(gen_seed)
    loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum()
    if state is not None:
        loss = loss + (state * torch.randn(state.shape, generator=gen, dtype=state.dtype)).sum()
    live = [x for x in inputs if x is not None]
    return torch.autograd.grad(loss, live)


def _leaf(x):
    return None if x is None else x.detach().clone().requires_grad_(True)


GATES = ["none", "fixed", "scalar", "channel"]
SHAPES = [  # (T, chunk): T not a multiple of the chunk, T shorter than the chunk, exact multiple
    (100, 32), (20, 32), (64, 16),
]


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("T,chunk", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_linear_attention_matches_reference(gate, T, chunk, with_state):
    B, H, K, V = 2, 3, 16, 8
    (q, k, v), gen = make_inputs(B, T, H, K, V, seed=T * 7 + chunk + with_state)
    g = make_gate(gate, B, T, H, K, gen)
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=F64) if with_state else None

    o, s = kernels.linear_attention(q, k, v, g, chunk_size=chunk, initial_state=s0,
                                    output_final_state=True, backend="torch")
    o_ref, s_ref = linear_attention_ref(q, k, v, g, None, s0, True)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gate", GATES)
def test_linear_attention_gradients_match_reference(gate):
    B, T, H, K, V = 1, 45, 2, 16, 8
    (q, k, v), gen = make_inputs(B, T, H, K, V, seed=11)
    g = make_gate(gate, B, T, H, K, gen)
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=F64)
    inputs = [_leaf(x) for x in (q, k, v, g, s0)]
    got = _grads(kernels.linear_attention(*inputs[:4], chunk_size=16, initial_state=inputs[4],
                                          output_final_state=True, backend="torch"), inputs, 5)
    ref_inputs = [_leaf(x) for x in (q, k, v, g, s0)]
    want = _grads(linear_attention_ref(*ref_inputs[:4], None, ref_inputs[4], True), ref_inputs, 5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("gate", ["none", "fixed", "scalar"])
@pytest.mark.parametrize("T,chunk", SHAPES)
@pytest.mark.parametrize("with_state", [False, True])
def test_delta_rule_matches_reference(gate, T, chunk, with_state):
    B, H, K, V = 2, 3, 16, 8
    (q, k, v), gen = make_inputs(B, T, H, K, V, seed=T * 5 + chunk + with_state, normalise_k=True)
    beta = torch.rand(B, T, H, generator=gen, dtype=F64)
    g = make_gate(gate, B, T, H, K, gen)
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=F64) if with_state else None

    o, s = kernels.delta_rule(q, k, v, beta, g, chunk_size=chunk, initial_state=s0,
                              output_final_state=True, backend="torch")
    o_ref, s_ref = delta_rule_ref(q, k, v, beta, g, None, s0, True)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gate", ["none", "scalar"])
def test_delta_rule_gradients_match_reference(gate):
    B, T, H, K, V = 1, 45, 2, 16, 8
    (q, k, v), gen = make_inputs(B, T, H, K, V, seed=12, normalise_k=True)
    beta = torch.rand(B, T, H, generator=gen, dtype=F64)
    g = make_gate(gate, B, T, H, K, gen)
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=F64)
    inputs = [_leaf(x) for x in (q, k, v, beta, g, s0)]
    got = _grads(kernels.delta_rule(*inputs[:5], chunk_size=16, initial_state=inputs[5],
                                    output_final_state=True, backend="torch"), inputs, 6)
    ref_inputs = [_leaf(x) for x in (q, k, v, beta, g, s0)]
    want = _grads(delta_rule_ref(*ref_inputs[:5], None, ref_inputs[5], True), ref_inputs, 6)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_channel_gate_gradcheck_tiny():
    """Independent of the reference: finite differences w.r.t. k and the per-channel gate, on a
    tiny problem that still spans two chunks and two sub-chunks per chunk (the factorised path)."""
    (q, k, v), gen = make_inputs(1, 20, 1, 2, 2, seed=3)
    g = make_gate("channel", 1, 20, 1, 2, gen, strength=3.0)
    fn = lambda k, g: kernels.linear_attention(q, k, v, g, chunk_size=16, backend="torch")[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (k.requires_grad_(True), g.requires_grad_(True)))


@pytest.mark.parametrize("gate", ["scalar", "channel"])
def test_linear_attention_strong_decay_is_finite_and_exact(gate):
    """g down to -20 per step: cumulative gates reach -1000s, nothing may overflow into NaN/inf."""
    B, T, H, K, V = 1, 70, 2, 16, 8
    (q, k, v), gen = make_inputs(B, T, H, K, V, seed=21)
    g = make_gate(gate, B, T, H, K, gen, strength=20.0)
    g[..., :5] = -20.0  # exactly the floor on some entries
    o_ref, s_ref = linear_attention_ref(q, k, v, g, None, None, True)
    o64, s64 = kernels.linear_attention(q, k, v, g, chunk_size=64, output_final_state=True, backend="torch")
    torch.testing.assert_close(o64, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s64, s_ref, rtol=1e-10, atol=1e-10)

    inputs = [x.float().requires_grad_(True) for x in (q, k, v, g)]
    o, s = kernels.linear_attention(*inputs, chunk_size=64, output_final_state=True, backend="torch")
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    (o.sum() + s.sum()).backward()
    for x in inputs:
        assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(o.double(), o_ref, rtol=1e-4, atol=1e-4)


def test_delta_rule_strong_decay_is_finite_and_exact():
    B, T, H, K, V = 1, 70, 2, 16, 8
    (q, k, v), gen = make_inputs(B, T, H, K, V, seed=22, normalise_k=True)
    beta = torch.rand(B, T, H, generator=gen, dtype=F64)
    g = make_gate("scalar", B, T, H, K, gen, strength=20.0)
    o_ref, _ = delta_rule_ref(q, k, v, beta, g)
    o64, _ = kernels.delta_rule(q, k, v, beta, g, chunk_size=64, backend="torch")
    torch.testing.assert_close(o64, o_ref, rtol=1e-10, atol=1e-10)

    inputs = [x.float().requires_grad_(True) for x in (q, k, v, beta, g)]
    o, s = kernels.delta_rule(*inputs, chunk_size=64, output_final_state=True, backend="torch")
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    (o.sum() + s.sum()).backward()
    for x in inputs:
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_inputs_keep_their_dtype(dtype):
    B, T, H, K, V = 1, 40, 2, 16, 16
    (q, k, v), gen = make_inputs(B, T, H, K, V, seed=31, normalise_k=True)
    g = make_gate("scalar", B, T, H, K, gen)
    beta = torch.rand(B, T, H, generator=gen, dtype=F64)
    tol = {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float32: 1e-5}[dtype]
    # The reference sees exactly the rounded inputs, so only the computation's error remains.
    q, k, v, g, beta = (x.to(dtype).double() for x in (q, k, v, g, beta))

    o, s = kernels.linear_attention(q.to(dtype), k.to(dtype), v.to(dtype), g.to(dtype), chunk_size=16,
                                    output_final_state=True, backend="torch")
    assert o.dtype == dtype and s.dtype == torch.float32
    o_ref, _ = linear_attention_ref(q, k, v, g)
    torch.testing.assert_close(o.double(), o_ref, rtol=tol, atol=tol)

    o, _ = kernels.delta_rule(q.to(dtype), k.to(dtype), v.to(dtype), beta.to(dtype), g.to(dtype),
                              chunk_size=16, backend="torch")
    assert o.dtype == dtype
    o_ref, _ = delta_rule_ref(q, k, v, beta, g)
    torch.testing.assert_close(o.double(), o_ref, rtol=tol, atol=tol)


def test_auto_backend_on_cpu_is_the_chunked_path():
    (q, k, v), _ = make_inputs(1, 33, 2, 16, 16, seed=41)
    o_auto, _ = kernels.linear_attention(q, k, v, chunk_size=16)
    o_ref, _ = linear_attention_ref(q, k, v)
    torch.testing.assert_close(o_auto, o_ref, rtol=1e-10, atol=1e-10)


# --- the factorised paths (chunked.FACTORISED_SPREAD) and their halving / explicit fallbacks ---


def _compare_with_reference(op, gate, T, chunk, *, strength=1.0, with_state=True, final_state=True,
                            seed=0, dtype=F64, tol=1e-9):
    """Outputs, final state and all gradients of the chunked op vs the float64 reference."""
    B, H, K, V = 2, 2, 8, 4
    (q, k, v), gen = make_inputs(B, T, H, K, V, seed=seed, normalise_k=op == "delta")
    if torch.is_tensor(strength):  # per-head strengths: [H]
        g = make_gate(gate, B, T, H, K, gen)
        g = g * strength.view(1, 1, H, *([1] * (g.dim() - 3)))
    else:
        g = make_gate(gate, B, T, H, K, gen, strength)
    beta = torch.rand(B, T, H, generator=gen, dtype=F64) if op == "delta" else None
    s0 = torch.randn(B, H, K, V, generator=gen, dtype=F64) if with_state else None

    def run(fn, xs, **kw):
        q_, k_, v_, g_, b_, s_ = xs
        args = (q_, k_, v_, g_) if op == "linear" else (q_, k_, v_, b_, g_)
        return fn(*args, initial_state=s_, output_final_state=final_state, **kw)

    ref_fn = {"linear": linear_attention_ref, "delta": delta_rule_ref}[op]
    fast_fn = {"linear": kernels.linear_attention, "delta": kernels.delta_rule}[op]
    ref_in = [_leaf(x) for x in (q, k, v, g, beta, s0)]
    fast_in = [_leaf(None if x is None else x.to(dtype)) for x in (q, k, v, g, beta, s0)]
    o_ref, s_ref = run(ref_fn, ref_in)
    o, s = run(fast_fn, fast_in, chunk_size=chunk, backend="torch")
    assert torch.isfinite(o).all() and (s is None or torch.isfinite(s).all())
    torch.testing.assert_close(o.double(), o_ref, rtol=tol, atol=tol)
    if final_state:
        torch.testing.assert_close(s.double(), s_ref, rtol=tol, atol=tol)
    got = _grads((o.double(), None if s is None else s.double()), fast_in, 9)  # same projections
    want = _grads((o_ref, s_ref), ref_in, 9)
    for a, b in zip(got, want):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol)


@pytest.mark.parametrize("op,gate", [("linear", "channel"), ("linear", "scalar"), ("delta", "scalar")])
@pytest.mark.parametrize("spread", [0.0, 0.5, 2.0, 5.0, float("inf")])
def test_every_block_size_matches_reference(monkeypatch, op, gate, spread):
    """A spread limit of 0 cuts chunks down to single steps, inf factorises whole chunks: every
    block size (per-channel: halving levels; scalar: blocks joined by a block-constant decay)
    against the reference. T = 45 with chunk 16: three chunks, the last one padded."""
    monkeypatch.setitem(chunked.FACTORISED_SPREAD, F64, spread)
    monkeypatch.setitem(chunked.BLOCK_SPREAD, F64, spread)
    _compare_with_reference(op, gate, 45, 16, strength=1.0)


@pytest.mark.parametrize("op,gate", [("linear", "channel"), ("linear", "scalar"), ("delta", "scalar")])
@pytest.mark.parametrize("T", [20, 64])
def test_single_chunk_from_zero_state_matches_reference(op, gate, T):
    """The shortcut for one chunk from a zero state without final state (the proxy's case)."""
    _compare_with_reference(op, gate, T, 64, with_state=False, final_state=False, seed=T)


@pytest.mark.parametrize("op,gate", [("linear", "channel"), ("linear", "scalar"), ("delta", "scalar")])
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-9), (torch.float32, 2e-4)])
def test_mixed_decay_is_exact(op, gate, dtype, tol):
    """One head decays by up to 20 per step (small blocks for the whole call), the other barely
    decays (its chunks alone would factorise whole)."""
    strength = torch.tensor([20.0, 0.05], dtype=F64)
    _compare_with_reference(op, gate, 70, 32, strength=strength, seed=4, dtype=dtype, tol=tol)


@pytest.mark.parametrize("op,gate", [("linear", "channel"), ("linear", "scalar"), ("delta", "scalar")])
@pytest.mark.parametrize("dtype,tol", [(F64, 1e-9), (torch.float32, 2e-4)])
def test_strong_decay_gradients_are_exact(op, gate, dtype, tol):
    """g down to -20 per step: forward and every gradient finite and equal to the reference, in
    float64 and (to float32 precision) in the float32 proxy dtype."""
    _compare_with_reference(op, gate, 70, 64, strength=20.0, seed=5, dtype=dtype, tol=tol)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_leaf_block_choice(dtype):
    """Mild gates factorise whole chunks; strong ones halve until each block's spread is in range."""
    gen = torch.Generator().manual_seed(6)
    C, limit = 64, chunked.FACTORISED_SPREAD[dtype]
    mild = -(0.5 * limit / C) * torch.rand(3, 2, 1, C, 4, generator=gen, dtype=F64)
    assert chunked._leaf_block(mild.cumsum(-2).to(dtype)) == C
    # a block of w steps spreads over w - 1 of them: blocks of 4 spread exactly the limit
    strong = torch.full((3, 2, 1, C, 4), -limit / 3, dtype=F64)
    strong[1, 1, 0, :, 2] = -1e-3  # a mild channel among strong ones changes nothing
    assert chunked._leaf_block(strong.cumsum(-2).to(dtype)) == 4
    strong[2, 0, 0, 7, 1] = -limit * 2  # one step stronger than the limit: single steps
    assert chunked._leaf_block(strong.cumsum(-2).to(dtype)) == 1
