"""Bad arguments to the public ops raise one clear ValueError before any work is done."""
import pytest
import torch

from attnsearch import kernels
from attnsearch.kernels import tunables

B, T, H, K, V = 1, 20, 2, 16, 8


def qkv():
    return torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)


def beta():
    return torch.rand(B, T, H)


CASES = {
    # shapes
    "q not 4-D": lambda q, k, v: kernels.softmax_attention(q[0], k[0], v[0]),
    "k differs from q": lambda q, k, v: kernels.linear_attention(q, k[:, :5], v),
    "v batch/time/head mismatch": lambda q, k, v: kernels.delta_rule(q, k, v[:, :5], beta()),
    "empty sequence": lambda q, k, v: kernels.linear_attention(q[:, :0], k[:, :0], v[:, :0]),
    "dtype mismatch": lambda q, k, v: kernels.linear_attention(q, k.double(), v),
    "integer inputs": lambda q, k, v: kernels.linear_attention(q.int(), k.int(), v.int()),
    # gates
    "gate [B, T]": lambda q, k, v: kernels.linear_attention(q, k, v, torch.zeros(B, T)),
    "gate wrong heads": lambda q, k, v: kernels.linear_attention(q, k, v, torch.zeros(H + 1)),
    "gate [B, T, H, K+1]": lambda q, k, v: kernels.linear_attention(q, k, v, torch.zeros(B, T, H, K + 1)),
    "delta per-channel gate": lambda q, k, v: kernels.delta_rule(q, k, v, beta(), torch.zeros(B, T, H, K)),
    "beta shape": lambda q, k, v: kernels.delta_rule(q, k, v, beta()[:, :3]),
    "initial_state shape": lambda q, k, v: kernels.linear_attention(q, k, v, initial_state=torch.zeros(B, H, V, K)),
    # chunk size
    "chunk 48": lambda q, k, v: kernels.linear_attention(q, k, v, chunk_size=48),
    "chunk 0": lambda q, k, v: kernels.delta_rule(q, k, v, beta(), chunk_size=0),
    "chunk float": lambda q, k, v: kernels.linear_attention(q, k, v, chunk_size=32.0),
    # sparsity
    "window 0": lambda q, k, v: kernels.softmax_attention(q, k, v, window=0),
    "window -3": lambda q, k, v: kernels.softmax_attention(q, k, v, window=-3),
    "window float": lambda q, k, v: kernels.softmax_attention(q, k, v, window=4.5),
    "block_size 24": lambda q, k, v: kernels.softmax_attention(q, k, v, block_size=24),
    "block_indices wrong blocks": lambda q, k, v: kernels.softmax_attention(
        q, k, v, block_indices=torch.zeros(B, H, 5, 1, dtype=torch.long), block_size=16),
    "block_indices float": lambda q, k, v: kernels.softmax_attention(
        q, k, v, block_indices=torch.zeros(B, H, 2, 1), block_size=16),
    # config / backend
    "unknown config key (softmax)": lambda q, k, v: kernels.softmax_attention(q, k, v, config={"BLOCK_M": 64}),
    "block_m not allowed": lambda q, k, v: kernels.softmax_attention(q, k, v, config={"block_m": 48}),
    "unknown config key (linear)": lambda q, k, v: kernels.linear_attention(q, k, v, config={"chunk": 64}),
    "config not a dict": lambda q, k, v: kernels.delta_rule(q, k, v, beta(), config=[("a", 1)]),
    "unknown backend": lambda q, k, v: kernels.softmax_attention(q, k, v, backend="cuda"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_invalid_arguments_raise_value_error(name):
    with pytest.raises(ValueError):
        CASES[name](*qkv())


def test_torch_tunables_are_enumerable():
    assert tunables.config_space("softmax_attention", "torch") == {"block_m": (16, 32, 64, 128, 256)}
    assert tunables.default_config("softmax_attention", "torch") == {"block_m": 64}
    assert tunables.config_space("linear_attention", "torch") == {}
    for block_m in (16, 32, 64, 128, 256):
        assert tunables.validate("softmax_attention", "torch", {"block_m": block_m})["block_m"] == block_m
