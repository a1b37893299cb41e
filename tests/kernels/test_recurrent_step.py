"""Single-step decoding reproduces the recurrences and continues a chunked prefill."""
import pytest
import torch

from attnsearch import kernels
from attnsearch.kernels import delta_rule_ref, linear_attention_ref

F64 = torch.float64
B, T, H, K, V = 2, 23, 3, 16, 8


def inputs(seed):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, K, generator=gen, dtype=F64)
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K, generator=gen, dtype=F64), dim=-1)
    v = torch.randn(B, T, H, V, generator=gen, dtype=F64)
    beta = torch.rand(B, T, H, generator=gen, dtype=F64)
    gates = {"none": None, "fixed": -torch.rand(H, generator=gen, dtype=F64),
             "scalar": -torch.rand(B, T, H, generator=gen, dtype=F64),
             "channel": -torch.rand(B, T, H, K, generator=gen, dtype=F64)}
    return q, k, v, beta, gates


def gate_at(g, t):
    """The op's gate for step t in the step functions' layout ([H] stays [H])."""
    return g if g is None or g.dim() == 1 else g[:, t]


@pytest.mark.parametrize("gate", ["none", "fixed", "scalar", "channel"])
def test_linear_steps_continue_a_chunked_prefill(gate):
    q, k, v, _, gates = inputs(1)
    g = gates[gate]
    o_ref, s_ref = linear_attention_ref(q, k, v, g, None, None, True)
    split = 13
    g_prefix = g if g is None or g.dim() == 1 else g[:, :split]
    o_pre, state = kernels.linear_attention(q[:, :split], k[:, :split], v[:, :split], g_prefix,
                                            chunk_size=8, output_final_state=True, backend="torch")
    outs = [o_pre]
    for t in range(split, T):
        o_t, state = kernels.linear_attention_step(q[:, t], k[:, t], v[:, t], gate_at(g, t), state)
        outs.append(o_t.unsqueeze(1))
    torch.testing.assert_close(torch.cat(outs, 1), o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, s_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gate", ["none", "fixed", "scalar"])
def test_delta_steps_from_scratch_match_reference(gate):
    q, k, v, beta, gates = inputs(2)
    g = gates[gate]
    o_ref, s_ref = delta_rule_ref(q, k, v, beta, g, None, None, True)
    state, outs = None, []
    for t in range(T):
        o_t, state = kernels.delta_rule_step(q[:, t], k[:, t], v[:, t], beta[:, t], gate_at(g, t), state)
        outs.append(o_t)
    torch.testing.assert_close(torch.stack(outs, 1), o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state, s_ref, rtol=1e-10, atol=1e-10)


def test_step_dtypes():
    q, k, v, beta, _ = inputs(3)
    state = torch.zeros(B, H, K, V)
    o, s = kernels.linear_attention_step(q[:, 0].bfloat16(), k[:, 0].bfloat16(), v[:, 0].bfloat16(), None, state)
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32
    o, s = kernels.delta_rule_step(q[:, 0].half(), k[:, 0].half(), v[:, 0].half(), beta[:, 0].half(), None, None)
    assert o.dtype == torch.float16 and s.dtype == torch.float32


@pytest.mark.parametrize("call", [
    lambda q, k, v, b, s: kernels.linear_attention_step(q, k, v[:, :, :2, None], None, s),   # v not 3-D
    lambda q, k, v, b, s: kernels.linear_attention_step(q, k[:, :2], v, None, s),            # k != q shape
    lambda q, k, v, b, s: kernels.linear_attention_step(q, k, v, torch.zeros(B, H, K, 1), s),  # bad gate
    lambda q, k, v, b, s: kernels.linear_attention_step(q, k, v, None, s[..., :3]),            # bad state
    lambda q, k, v, b, s: kernels.delta_rule_step(q, k, v, b[:, :1], None, s),                # bad beta
    lambda q, k, v, b, s: kernels.delta_rule_step(q, k, v, b, torch.zeros(B, H, K), s),       # vector gate
])
def test_step_validation(call):
    q, k, v, beta, _ = inputs(4)
    with pytest.raises(ValueError):
        call(q[:, 0], k[:, 0], v[:, 0], beta[:, 0], torch.zeros(B, H, K, V, dtype=F64))
