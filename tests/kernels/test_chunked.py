"""Chunkwise torch backend == token-by-token reference (float64), outputs, states and gradients."""
import pytest
import torch

from attnsearch import kernels
from attnsearch.kernels import delta_rule_ref, linear_attention_ref

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
