"""Mask builders: exact contents on small cases, determinism, validation."""
import pytest
import torch

from attnsearch.kernels import masks, visibility_mask


def rows(idx):
    """Block lists of head 0 / batch 0 as sets of real (non -1) entries."""
    return [set(r.tolist()) - {-1} for r in idx[0, 0]]


def test_dilated_lists_every_dth_block_back():
    idx = masks.dilated_block_indices(T=130, block_size=16, dilation=2, num_back=2, batch=2, heads=3)
    assert idx.shape == (2, 3, 9, 2) and idx.dtype == torch.long
    assert rows(idx) == [set(), set(), {0}, {1}, {2, 0}, {3, 1}, {4, 2}, {5, 3}, {6, 4}]
    every = masks.dilated_block_indices(T=130, block_size=16, dilation=3)
    assert rows(every)[8] == {5, 2}


def test_random_is_seeded_earlier_and_distinct():
    a = masks.random_block_indices(300, 16, num_random=3, seed=7, batch=2, heads=4)
    b = masks.random_block_indices(300, 16, num_random=3, seed=7, batch=2, heads=4)
    c = masks.random_block_indices(300, 16, num_random=3, seed=8, batch=2, heads=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[0], a[1])            # same pattern for every sequence of the batch
    assert not torch.equal(a[0, 0], a[0, 1])  # but different per head
    for h in range(4):
        for qb, row in enumerate(a[0, h].tolist()):
            real = [x for x in row if x >= 0]
            assert len(real) == len(set(real)) == min(3, qb)
            assert all(x < qb for x in real)


def test_longformer_sees_window_and_first_tokens():
    T, bs = 200, 16
    p = masks.longformer_pattern(T, bs, window=10, n_global=20)
    vis = visibility_mask(T, p["window"], p["block_indices"], bs)[0, 0]
    assert p["window"] == 10 and p["block_size"] == bs
    assert vis[:, :20].tril().eq(torch.ones(T, 20, dtype=torch.bool).tril()).all()  # globals, causally
    assert vis[150, 141:151].all() and not vis[150, 40:128].any()


def test_bigbird_combines_window_random_and_global():
    T, bs = 256, 16
    p = masks.bigbird_pattern(T, bs, window=16, num_random=2, n_global=32, seed=3, heads=2)
    r = rows(p["block_indices"])
    assert p["window"] == 16
    for qb in range(2, 16):
        assert {0, 1} <= r[qb]                      # global blocks
        assert len(r[qb] - {0, 1}) == min(2, qb - 2)  # random blocks outside the globals
        assert all(x < qb for x in r[qb])


def brute_force_topk(q, k, bs, topk):
    B, T, H, _ = q.shape
    nb = -(-T // bs)
    out = torch.full((B, H, nb, max(1, min(topk, nb - 1))), -1, dtype=torch.long)
    for b in range(B):
        for h in range(H):
            pq = [q[b, i * bs:(i + 1) * bs, h].mean(0) for i in range(nb)]
            pk = [k[b, i * bs:(i + 1) * bs, h].mean(0) for i in range(nb)]
            for qb in range(nb):
                scored = sorted(range(qb), key=lambda kb: -float(pq[qb] @ pk[kb]))[:topk]
                out[b, h, qb, :len(scored)] = torch.tensor(scored, dtype=torch.long)
    return out


@pytest.mark.parametrize("T,bs,topk", [(100, 16, 2), (64, 32, 3), (10, 16, 1), (200, 16, 20)])
def test_topk_matches_brute_force(T, bs, topk):
    gen = torch.Generator().manual_seed(T + topk)
    q, k = torch.randn(2, T, 3, 8, generator=gen), torch.randn(2, T, 3, 8, generator=gen)
    got = masks.topk_block_indices(q, k, bs, topk)
    assert got.dtype == torch.long
    assert torch.equal(got, brute_force_topk(q, k, bs, topk))


def test_builders_move_to_device_and_expand():
    idx = masks.global_block_indices(100, 32, 1, batch=3, heads=2, device="cpu")
    assert idx.shape == (3, 2, 4, 1)
    assert rows(idx) == [set(), {0}, {0}, {0}]


@pytest.mark.parametrize("call", [
    lambda: masks.dilated_block_indices(100, 24, 2),          # block size not a power of two
    lambda: masks.dilated_block_indices(100, 8, 2),           # block size < 16
    lambda: masks.dilated_block_indices(100, 16, 0),
    lambda: masks.dilated_block_indices(0, 16, 1),
    lambda: masks.random_block_indices(100, 16, 0, seed=1),
    lambda: masks.random_block_indices(100, 16, 2, seed=-1),
    lambda: masks.longformer_pattern(100, 16, window=0, n_global=1),
    lambda: masks.longformer_pattern(100, 16, window=4, n_global=0),
    lambda: masks.bigbird_pattern(100, 16, window=4, num_random=1, n_global=1, seed=1, heads=0),
    lambda: masks.sliding_window_pattern(100, window=2.5),
    lambda: masks.topk_block_indices(torch.zeros(1, 8, 1, 4), torch.zeros(1, 8, 1, 4), 16, 0),
    lambda: masks.topk_block_indices(torch.zeros(1, 8, 4), torch.zeros(1, 8, 4), 16, 1),
    lambda: masks.merge_block_indices(torch.zeros(1, 1, 2, 1), torch.zeros(1, 1, 3, 1)),
])
def test_invalid_arguments_raise(call):
    with pytest.raises(ValueError):
        call()
