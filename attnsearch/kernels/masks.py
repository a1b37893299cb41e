"""Sparsity patterns for softmax_attention, built as `window` and/or `block_indices`.

`block_indices` is a LongTensor [B, H, ceil(T / block_size), S]: row qb lists key blocks that
query block qb may see besides its own block (implicit in the op); -1 marks an unused slot.
Listing a block twice, or a future block, is harmless (the op takes the union and is causal).

The *_pattern builders return a dict to splat into the op:
    o = kernels.softmax_attention(q, k, v, **kernels.longformer_pattern(T, 64, window=256, n_global=4))
Static patterns are the same for every sequence in the batch (`batch` only expands the view);
random ones differ per head and are fixed by `seed` (a CPU torch.Generator, so the pattern does
not depend on the device). topk_block_indices is dynamic: it reads q and k.
"""
from __future__ import annotations

import torch


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_block_size(block_size) -> int:
    _check_int("block_size", block_size, 16)
    if block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size}")
    return block_size


def num_blocks(T: int, block_size: int) -> int:
    return -(-T // block_size)


def _finish(idx: torch.Tensor, batch: int, heads: int, device) -> torch.Tensor:
    """[NB, S] or [heads, NB, S] -> LongTensor [batch, heads, NB, S] on device."""
    _check_int("batch", batch, 1)
    _check_int("heads", heads, 1)
    if idx.dim() == 2:
        idx = idx.unsqueeze(0).expand(heads, *idx.shape)
    return idx.to(device=device, dtype=torch.long).unsqueeze(0).expand(batch, *idx.shape).contiguous()


def merge_block_indices(*parts: torch.Tensor | None) -> torch.Tensor:
    """Union of several block lists with equal [B, H, NB] (concatenated slots; None is skipped)."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("merge_block_indices needs at least one block_indices tensor")
    lead = parts[0].shape[:3]
    if any(p.dim() != 4 or p.shape[:3] != lead for p in parts):
        raise ValueError(f"block_indices to merge must all be [B, H, NB, S] with [B, H, NB] = {tuple(lead)}")
    return torch.cat(parts, dim=-1)


def dilated_block_indices(T: int, block_size: int, dilation: int, num_back: int | None = None, *,
                          batch: int = 1, heads: int = 1, device=None) -> torch.Tensor:
    """Query block qb sees blocks qb - d, qb - 2d, ... (num_back of them; all the way back if None)."""
    _check_int("T", T, 1)
    _check_block_size(block_size)
    _check_int("dilation", dilation, 1)
    nb = num_blocks(T, block_size)
    S = max(1, (nb - 1) // dilation) if num_back is None else _check_int("num_back", num_back, 1)
    qb = torch.arange(nb).unsqueeze(1)
    idx = qb - dilation * torch.arange(1, S + 1).unsqueeze(0)             # [NB, S]
    return _finish(idx.masked_fill(idx < 0, -1), batch, heads, device)


def _random_earlier_blocks(nb: int, num_random: int, heads: int, seed: int, skip_first: int = 0):
    """[heads, NB, S]: per head and query block, num_random distinct blocks drawn uniformly from
    the earlier blocks skip_first .. qb - 1 (fewer when not enough exist; -1 pads)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(heads, nb, nb, generator=gen)                      # [heads, qb, kb]
    kb = torch.arange(nb)
    allowed = (kb[None, :] < kb[:, None]) & (kb[None, :] >= skip_first)  # [qb, kb]
    noise = noise.masked_fill(~allowed, -1.0)
    S = max(1, min(num_random, nb))
    score, idx = noise.topk(S, dim=-1)
    return idx.masked_fill(score < 0, -1)


def random_block_indices(T: int, block_size: int, num_random: int, *, seed: int,
                         batch: int = 1, heads: int = 1, device=None) -> torch.Tensor:
    """Each query block sees num_random distinct random earlier blocks (per head, fixed by seed)."""
    _check_int("T", T, 1)
    _check_block_size(block_size)
    _check_int("num_random", num_random, 1)
    _check_int("seed", seed, 0)
    idx = _random_earlier_blocks(num_blocks(T, block_size), num_random, heads, seed)
    return _finish(idx, batch, heads, device)


def global_block_indices(T: int, block_size: int, n_global: int, *, batch: int = 1, heads: int = 1,
                         device=None) -> torch.Tensor:
    """Every query block sees the blocks holding the first n_global tokens (causal global keys)."""
    _check_int("T", T, 1)
    _check_block_size(block_size)
    _check_int("n_global", n_global, 1)
    nb = num_blocks(T, block_size)
    g = min(num_blocks(n_global, block_size), nb)
    idx = torch.arange(g).unsqueeze(0).expand(nb, g)
    idx = idx.masked_fill(idx >= torch.arange(nb).unsqueeze(1), -1)      # own/future blocks: implicit/invisible
    return _finish(idx, batch, heads, device)


def _pattern(window, block_indices, block_size) -> dict:
    return {"window": window, "block_indices": block_indices, "block_size": block_size}


def sliding_window_pattern(T: int, window: int, block_size: int = 64) -> dict:
    _check_int("window", window, 1)
    return _pattern(window, None, _check_block_size(block_size))


def dilated_pattern(T: int, block_size: int, dilation: int, num_back: int | None = None, *,
                    window: int | None = None, batch: int = 1, heads: int = 1, device=None) -> dict:
    """Dilated blocks (qb - d, qb - 2d, ...), optionally with a local window."""
    if window is not None:
        _check_int("window", window, 1)
    idx = dilated_block_indices(T, block_size, dilation, num_back, batch=batch, heads=heads, device=device)
    return _pattern(window, idx, block_size)


def random_pattern(T: int, block_size: int, num_random: int, *, seed: int, window: int | None = None,
                   batch: int = 1, heads: int = 1, device=None) -> dict:
    """Random earlier blocks per query block and head, optionally with a local window."""
    if window is not None:
        _check_int("window", window, 1)
    idx = random_block_indices(T, block_size, num_random, seed=seed, batch=batch, heads=heads, device=device)
    return _pattern(window, idx, block_size)


def longformer_pattern(T: int, block_size: int, window: int, n_global: int, *, batch: int = 1,
                       heads: int = 1, device=None) -> dict:
    """Sliding window plus the blocks of the first n_global tokens as global keys."""
    _check_int("window", window, 1)
    idx = global_block_indices(T, block_size, n_global, batch=batch, heads=heads, device=device)
    return _pattern(window, idx, block_size)


def bigbird_pattern(T: int, block_size: int, window: int, num_random: int, n_global: int, *, seed: int,
                    batch: int = 1, heads: int = 1, device=None) -> dict:
    """Sliding window + num_random random earlier blocks + the blocks of the first n_global tokens.

    Random blocks are drawn from outside the global blocks, so they add coverage.
    """
    _check_int("window", window, 1)
    _check_int("num_random", num_random, 1)
    _check_int("seed", seed, 0)
    glob = global_block_indices(T, block_size, n_global, batch=batch, heads=heads, device=device)
    nb = num_blocks(T, block_size)
    rand = _random_earlier_blocks(nb, num_random, heads, seed, skip_first=num_blocks(n_global, block_size))
    return _pattern(window, merge_block_indices(glob, _finish(rand, batch, heads, device)), block_size)


@torch.no_grad()
def topk_block_indices(q: torch.Tensor, k: torch.Tensor, block_size: int, topk: int) -> torch.Tensor:
    """Dynamic block selection (MoBA / NSA style) from q, k [B, T, H, K].

    Mean-pool q and k per block (the last block over its real tokens only), score each strictly
    earlier key block by pooled_q . pooled_k, and keep the topk best; the query's own block is
    implicit in the op. Returns LongTensor [B, H, NB, min(topk, NB - 1) or 1], -1 = unused.

    Causality is the caller's business: pooling the query block's own queries lets queries
    after position i influence which blocks i sees. A causal layer passes routing queries that
    only summarise the past (e.g. q shifted by one block, as models/softmax.py does).
    """
    if q.dim() != 4 or q.shape != k.shape:
        raise ValueError(f"q and k must both be [B, T, H, K], got {tuple(q.shape)} and {tuple(k.shape)}")
    _check_block_size(block_size)
    _check_int("topk", topk, 1)
    B, T, H, K = q.shape
    nb = num_blocks(T, block_size)
    pad = nb * block_size - T

    def pooled(x):  # [B, T, H, K] -> [B, H, NB, K], mean over the real tokens of each block
        x = torch.nn.functional.pad(x.float() if x.dtype != torch.float64 else x, (0, 0, 0, 0, 0, pad))
        sums = x.reshape(B, nb, block_size, H, K).sum(dim=2).transpose(1, 2)
        counts = torch.full((nb,), float(block_size), dtype=sums.dtype, device=x.device)
        counts[-1] = block_size - pad
        return sums / counts[:, None]

    scores = pooled(q) @ pooled(k).transpose(-1, -2)                     # [B, H, qb, kb]
    blk = torch.arange(nb, device=q.device)
    scores = scores.masked_fill(blk[None, :] >= blk[:, None], float("-inf"))
    S = max(1, min(topk, nb - 1))
    best, idx = scores.topk(S, dim=-1)
    return idx.masked_fill(best == float("-inf"), -1)
