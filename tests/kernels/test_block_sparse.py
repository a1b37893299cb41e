"""Block-sparse torch softmax path == dense masked reference (float64), for every pattern."""
import pytest
import torch

from attnsearch import kernels
from attnsearch.kernels import masks, softmax_attention_ref
from attnsearch.kernels.block_sparse import listed_blocks, visible_key_blocks, window_tiles_back

F64 = torch.float64
B, T, H, D, DV = 2, 100, 3, 16, 8  # T = 100 is not a multiple of any block or tile size


def qkv(seed, T=T, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, D, generator=gen, dtype=F64)
    k = torch.randn(B, T, H, D, generator=gen, dtype=F64)
    v = torch.randn(B, T, H, DV, generator=gen, dtype=F64)
    return [x.to(dtype) for x in (q, k, v)]


def _raw_indices(bs=16):
    nb = masks.num_blocks(T, bs)
    return torch.randint(-1, nb, (B, H, nb, 4), generator=torch.Generator().manual_seed(9))


PATTERNS = {  # every builder (and raw combinations) as kwargs for softmax_attention, from (q, k)
    "full": lambda q, k: {},
    "window": lambda q, k: masks.sliding_window_pattern(T, window=21, block_size=16),
    "window_covers_all": lambda q, k: {"window": 1000},
    "dilated": lambda q, k: masks.dilated_pattern(T, 16, dilation=2, num_back=3, batch=B, heads=H),
    "dilated_all_back_with_window": lambda q, k: masks.dilated_pattern(T, 32, dilation=3, window=9,
                                                                       batch=B, heads=H),
    "random": lambda q, k: masks.random_pattern(T, 16, num_random=2, seed=5, batch=B, heads=H),
    "longformer": lambda q, k: masks.longformer_pattern(T, 16, window=17, n_global=3, batch=B, heads=H),
    "bigbird": lambda q, k: masks.bigbird_pattern(T, 16, window=24, num_random=2, n_global=20, seed=1,
                                                  batch=B, heads=H),
    "topk": lambda q, k: {"block_indices": masks.topk_block_indices(q, k, 16, topk=2), "block_size": 16},
    "topk_with_window": lambda q, k: {"block_indices": masks.topk_block_indices(q, k, 32, topk=1),
                                      "block_size": 32, "window": 5},
    "raw_with_duplicates_and_unused": lambda q, k: {"block_indices": _raw_indices(), "block_size": 16},
    "raw_int32_with_window": lambda q, k: {"block_indices": _raw_indices().int(), "block_size": 16, "window": 3},
}
PATTERN_NAMES = list(PATTERNS)


def patterns(q, k):
    return {name: build(q, k) for name, build in PATTERNS.items()}


@pytest.mark.parametrize("name", PATTERN_NAMES)
@pytest.mark.parametrize("block_m", [16, 64, 128])
def test_matches_dense_reference(name, block_m):
    q, k, v = qkv(seed=len(name) + block_m)
    pattern = PATTERNS[name](q, k)
    o = kernels.softmax_attention(q, k, v, backend="torch", config={"block_m": block_m}, **pattern)
    o_ref = softmax_attention_ref(q, k, v, pattern.get("window"), pattern.get("block_indices"),
                                  pattern.get("block_size", 64))
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["full", "window", "bigbird", "topk_with_window", "raw_with_duplicates_and_unused"])
def test_gradients_match_dense_reference(name):
    q, k, v = qkv(seed=3)
    pattern = PATTERNS[name](q, k)
    w = torch.randn(B, T, H, DV, dtype=F64, generator=torch.Generator().manual_seed(4))

    def grads(fn):
        leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
        return torch.autograd.grad((fn(*leaves) * w).sum(), leaves)

    got = grads(lambda q, k, v: kernels.softmax_attention(q, k, v, backend="torch",
                                                          config={"block_m": 32}, **pattern))
    want = grads(lambda q, k, v: softmax_attention_ref(q, k, v, pattern.get("window"),
                                                       pattern.get("block_indices"),
                                                       pattern.get("block_size", 64)))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_work_grows_with_visible_blocks_not_length():
    """The keys each query tile touches are bounded by the pattern, not by T."""
    # Window 64, tiles of 64: one tile back plus its own, whatever T is.
    assert window_tiles_back(64, 64) == 1 and window_tiles_back(65, 64) == 1 and window_tiles_back(66, 64) == 2
    # A block list of 3 per query block (+ own) visits at most 4 key blocks at T = 4096.
    Tp, M = 4096, 64
    idx = masks.random_block_indices(Tp, 64, 3, seed=0)
    order, slot_ok, _ = visible_key_blocks(1, 1, Tp, M, 64, None, listed_blocks(idx, Tp // 64), 64, "cpu")
    assert order.shape[-1] <= 4
    # Window plus blocks: the union, still bounded (2 window blocks + 3 listed + own).
    order, _, _ = visible_key_blocks(1, 1, Tp, M, 64, 64, listed_blocks(idx, Tp // 64), 64, "cpu")
    assert order.shape[-1] <= 6


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_low_precision_inputs_keep_their_dtype(dtype):
    q, k, v = qkv(seed=8, dtype=dtype)
    pattern = masks.longformer_pattern(T, 16, window=17, n_global=3, batch=B, heads=H)
    o = kernels.softmax_attention(q, k, v, backend="torch", **pattern)
    assert o.dtype == dtype
    o_ref = softmax_attention_ref(q.double(), k.double(), v.double(), pattern["window"],
                                  pattern["block_indices"], 16)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(o.double(), o_ref, rtol=tol, atol=tol)


def test_single_token_and_tiny_sequences():
    for T_small in (1, 2, 17):
        q, k, v = qkv(seed=T_small, T=T_small)
        for pattern in ({}, {"window": 1}, masks.random_pattern(T_small, 16, 1, seed=0, batch=B, heads=H)):
            o = kernels.softmax_attention(q, k, v, backend="torch", **pattern)
            o_ref = softmax_attention_ref(q, k, v, pattern.get("window"), pattern.get("block_indices"),
                                          pattern.get("block_size", 64))
            torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("window", [1, 2, 16, 17, 63, 64, 65, 99])
@pytest.mark.parametrize("block_m", [16, 64])
def test_sliding_window_edges(window, block_m):
    """Windows just below / at / above a tile, and one short of the whole sequence."""
    q, k, v = qkv(seed=window)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    o = kernels.softmax_attention(*leaves, window=window, backend="torch", config={"block_m": block_m})
    ref_leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    o_ref = softmax_attention_ref(*ref_leaves, window)
    torch.testing.assert_close(o, o_ref, rtol=1e-12, atol=1e-12)
    o.sum().backward()
    o_ref.sum().backward()
    for a, b in zip(leaves, ref_leaves):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)
