"""Triton block-sparse softmax attention (under TRITON_INTERPRET=1, fp32) vs the float64 reference.

Forward output and the gradients of q, k, v on random inputs, T not a multiple of any tile, for
full causal, window, every mask builder, window + blocks, several tilings; plus the block-list
plumbing (transposed lists, cache) and config validation.
"""
from __future__ import annotations

import importlib
import os

import pytest
import torch

from attnsearch import kernels
from attnsearch.kernels import masks, softmax_attention_ref

TOL = 2e-5  # fp32 with exact fp32 products in the interpreter


@pytest.fixture(scope="module", autouse=True)
def ta():
    """Kernels are bound to the interpreter when decorated: (re)load the modules with it on."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime.interpreter import InterpretedFunction

    from attnsearch.kernels import triton_attention, triton_attention_kernels
    if not isinstance(triton_attention_kernels.attn_fwd_kernel, InterpretedFunction):
        importlib.reload(triton_attention_kernels)
        importlib.reload(triton_attention)
    yield triton_attention
    if old is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = old


def _compare(T, *, K=32, V=None, B=1, H=1, window=None, block_indices=None, block_size=16,
             config=None, seed=0, scale=None):
    V = K if V is None else V
    gen = torch.Generator().manual_seed(seed)
    x = [torch.randn(B, T, H, d, generator=gen, dtype=torch.float64) for d in (K, K, V)]
    do = torch.randn(B, T, H, V, generator=gen, dtype=torch.float64)
    ref_in = [t.clone().requires_grad_(True) for t in x]
    ref = softmax_attention_ref(*ref_in, window=window, block_indices=block_indices,
                                block_size=block_size, scale=scale)
    ref.backward(do)
    ours_in = [t.float().requires_grad_(True) for t in x]
    out = kernels.softmax_attention(*ours_in, window=window, block_indices=block_indices,
                                    block_size=block_size, scale=scale, backend="triton",
                                    config=config)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    out.backward(do.float())
    for name, a, b in (("o", out, ref), ("dq", ours_in[0].grad, ref_in[0].grad),
                       ("dk", ours_in[1].grad, ref_in[1].grad), ("dv", ours_in[2].grad, ref_in[2].grad)):
        err = (a.double() - b).abs().max().item()
        assert err < TOL, f"{name}: max abs error {err:.2e}"


def test_full_causal_t_not_multiple_of_tile():
    _compare(50, K=32, H=2)


def test_full_causal_d64_batch2():
    _compare(37, K=64, B=2)


def test_key_and_value_dims_differ_and_custom_scale():
    _compare(29, K=16, V=32, scale=0.3)


@pytest.mark.parametrize("window", [1, 5, 20, 300])
def test_sliding_window(window):
    _compare(61, window=window)


def test_window_d64():
    _compare(45, K=64, window=24)


def test_dilated_builder():
    _compare(70, **masks.dilated_pattern(70, 16, dilation=2, heads=1))


def test_random_builder_with_window():
    _compare(75, **masks.random_pattern(75, 16, 2, seed=3, window=9, heads=1))


def test_longformer_builder():
    _compare(70, **masks.longformer_pattern(70, 16, window=12, n_global=20, heads=1))


def test_bigbird_builder():
    _compare(64, **masks.bigbird_pattern(64, 16, window=20, num_random=1, n_global=8, seed=1, heads=1))


def test_topk_builder():
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(1, 70, 1, 32, generator=gen), torch.randn(1, 70, 1, 32, generator=gen)
    _compare(70, block_indices=masks.topk_block_indices(q, k, 16, 2), block_size=16)


def test_window_reaching_into_listed_blocks():
    """Listed blocks that overlap the window's range must be counted once, also past its edge."""
    T, bs = 90, 16
    nb = -(-T // bs)
    idx = torch.arange(nb).view(1, 1, nb, 1) - torch.tensor([1, 2, 3]).view(1, 1, 1, 3)  # 3 blocks back
    idx = idx.clamp(min=-1).expand(1, 1, nb, 3).contiguous()
    _compare(T, window=21, block_indices=idx, block_size=bs)


def test_partial_last_query_block_listing_a_key_block():
    """The dK/dV kernel walks a listed, partial last query block in a row-masked loop of its own."""
    T, bs = 90, 32
    idx = masks.global_block_indices(T, bs, 1, batch=1, heads=2)  # every block lists block 0
    _compare(T, H=2, block_indices=idx, block_size=bs, config={"BLOCK_M_DKV": 16, "BLOCK_N_DKV": 32})


def test_messy_block_indices():
    """Duplicates, future blocks, the own block and -1 slots are all harmless."""
    T, bs = 66, 16
    gen = torch.Generator().manual_seed(2)
    idx = torch.randint(-1, -(-T // bs), (2, 1, -(-T // bs), 5), generator=gen)
    idx[..., 1] = idx[..., 0]
    _compare(T, B=2, block_indices=idx, block_size=bs)


def test_no_listed_slots_means_own_block_only():
    T, bs = 40, 16
    _compare(T, block_indices=torch.empty(1, 1, 3, 0, dtype=torch.long), block_size=bs)


@pytest.mark.parametrize("config", [
    {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_M_DKV": 32, "BLOCK_N_DKV": 16, "BLOCK_M_DQ": 16, "BLOCK_N_DQ": 32},
    {"BLOCK_M": 64, "BLOCK_N": 16, "BLOCK_M_DKV": 16, "BLOCK_N_DKV": 64, "BLOCK_M_DQ": 64, "BLOCK_N_DQ": 16},
])
def test_tilings_window_and_blocks(config):
    """Tiles smaller than, equal to and (capped) larger than the sparse block."""
    T, bs = 80, 32
    pattern = masks.random_pattern(T, bs, 1, seed=0, window=40, heads=1)
    _compare(T, H=1, config=config, **pattern)
    _compare(T, H=1, config=config, window=7)


@pytest.mark.parametrize("config", [
    {"dq_atomic": 1},
    {"heads_inner": 1, "heads_inner_bwd": 1, "bwd_streams": 2},
])
def test_backward_variants(config):
    """dQ by atomics from the dK/dV kernel, heads-inner program order (streams: CUDA only)."""
    T, bs = 75, 16
    _compare(T, H=2, config=config, **masks.random_pattern(T, bs, 2, seed=3, window=9, heads=2))
    _compare(T, H=2, config=config)


@pytest.mark.parametrize("config", [
    {"fuse_delta": 1, "list_load": 1, "list_load_dq": 1, "list_load_dkv": 1},
    {"heads_inner": 1, "head_group": 2, "heads_inner_bwd": 1, "head_group_bwd": 2},
])
def test_list_loads_fused_delta_and_head_groups(config):
    """Block ids read from memory, delta computed inside the dQ kernel, and grouped program
    order (3 heads in groups of 2: the last group is smaller) give the reference results."""
    T, bs = 75, 16
    _compare(T, B=1, H=3, config=config,
             **masks.random_pattern(T, bs, 2, seed=4, window=9, heads=3))
    _compare(T, H=3, config=config, window=20)


@pytest.mark.parametrize("window", [47, 48, 70])
def test_wide_window_masks(window):
    """A window spanning two tiles (48 = 32 + 16 with the interpreter's tiles) lets masked
    tiles test only the window or only causality; just below that, both tests stay."""
    _compare(130, H=2, window=window, config={"wide_mask_dkv": 1})


def test_block_lists_and_transpose_match_a_direct_construction(ta):
    gen = torch.Generator().manual_seed(0)
    B, H, NB, S = 2, 3, 7, 4
    idx = torch.randint(-1, NB, (B, H, NB, S), generator=gen)
    lists, counts = ta.forward_block_lists(idx)
    tlists, tcounts = ta.transposed_block_lists(lists, counts)
    for b in range(B):
        for h in range(H):
            for qb in range(NB):
                want = sorted({int(x) for x in idx[b, h, qb] if 0 <= x < qb}, reverse=True)
                assert lists[b, h, qb, :counts[b, h, qb]].tolist() == want
                assert (lists[b, h, qb, counts[b, h, qb]:] == -1).all()
            for kb in range(NB):
                want = [qb for qb in range(NB) if kb in lists[b, h, qb, :counts[b, h, qb]].tolist()]
                assert tlists[b, h, kb, :tcounts[b, h, kb]].tolist() == want


def test_in_place_change_of_block_indices_is_seen():
    T, bs = 48, 16
    idx = torch.full((1, 2, 3, 1), -1, dtype=torch.long)
    q, k, v = (torch.randn(1, T, 2, 16) for _ in range(3))
    first = kernels.softmax_attention(q, k, v, block_indices=idx, block_size=bs, backend="triton")
    idx[:, :, 2, 0] = 0
    second = kernels.softmax_attention(q, k, v, block_indices=idx, block_size=bs, backend="triton")
    ref = softmax_attention_ref(q.double(), k.double(), v.double(), block_indices=idx, block_size=bs)
    assert (second.double() - ref).abs().max() < TOL
    assert (first - second)[:, 2 * bs:].abs().max() > 1e-3


def test_only_linear_size_tensors_are_saved_for_backward():
    T = 64
    q, k, v = (torch.randn(1, T, 2, 16, requires_grad=True) for _ in range(3))
    sizes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
        kernels.softmax_attention(q, k, v, window=8, backend="triton").sum().backward()
    assert sizes and max(sizes) <= q.numel()


def test_half_precision_output_dtype():
    q, k, v = (torch.randn(1, 20, 1, 16).half() for _ in range(3))
    out = kernels.softmax_attention(q, k, v, backend="triton")
    assert out.dtype == torch.float16
    ref = softmax_attention_ref(q.double(), k.double(), v.double())
    assert (out.double() - ref).abs().max() < 1e-2


@pytest.mark.parametrize("config, match", [
    ({"BLOCK_Q": 64}, "unknown"),
    ({"BLOCK_M": 48}, "BLOCK_M"),
    ({"num_warps": 3}, "num_warps"),
    ({"dq_atomic": 2}, "dq_atomic"),
    ({"bwd_streams": 0}, "bwd_streams"),
    ({"BLOCK_M": 256, "BLOCK_N": 256}, "exceeds"),
    ({"BLOCK_M_DQ": 256, "BLOCK_N_DQ": 256}, "exceeds"),
    ({"head_group": 3}, "head_group"),
    ({"head_group_bwd": 4, "heads_inner_bwd": 0}, "heads_inner_bwd=1"),
    ({"fuse_delta": 1, "dq_atomic": 1}, "fuse_delta"),
    ({"fuse_delta": 1, "bwd_streams": 2}, "fuse_delta"),
])
def test_invalid_config_raises(config, match):
    q = torch.randn(1, 8, 1, 16)
    with pytest.raises(ValueError, match=match):
        kernels.softmax_attention(q, q, q, backend="triton", config=config)


def test_unsupported_head_dim_and_dtype_raise():
    q = torch.randn(1, 8, 1, 48)
    with pytest.raises(ValueError, match="head dim"):
        kernels.softmax_attention(q, q, q, backend="triton")
    q = torch.randn(1, 8, 1, 16, dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        kernels.softmax_attention(q, q, q, backend="triton")


def test_config_space_and_defaults(ta):
    space = ta.CONFIG_SPACE["softmax_attention"]
    default = ta.default_config("softmax_attention")
    assert set(default) == set(space)
    assert all(default[key] in space[key] for key in space)
    ta.validate_config("softmax_attention", default, block_size=16, head_dim=128)
