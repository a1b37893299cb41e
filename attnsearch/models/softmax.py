"""Softmax-attention mixers: full, sliding window and the block-sparse patterns.

All share q/k/v/o projections and RoPE; they differ only in which keys a query sees
(`pattern` for the whole-sequence op, `visible` for one decoding query) and in which past keys
the decode cache must keep (`kept_positions`). Whole sequences run on
`kernels.softmax_attention`; one decoding query is a masked softmax over the cached keys, with
exactly the mask the whole-sequence op would apply to that row.

Decode cache of one layer: {"k": [B, n, H, K], "v": [B, n, H, V]} with post-RoPE keys at the
positions `kept_positions(L)`; block_topk adds "qsum" and "route" [B, H, K] (its router).
"""
from __future__ import annotations

import torch
from torch import nn

from attnsearch import kernels

from .common import rope


class SoftmaxMixer(nn.Module):
    """Full causal attention; subclasses narrow the visible keys."""

    def __init__(self, arch, layer, backend: str = "auto"):
        super().__init__()
        d, H, K, V = arch.d_model, arch.n_heads, arch.head_dim, arch.v_head_dim
        self.n_heads, self.head_dim, self.v_head_dim = H, K, V
        self.q_proj = nn.Linear(d, H * K, bias=False)
        self.k_proj = nn.Linear(d, H * K, bias=False)
        self.v_proj = nn.Linear(d, H * V, bias=False)
        self.o_proj = nn.Linear(H * V, d, bias=False)
        self.params = dict(layer.params)
        self.block_size = self.params.get("block_size", 64)
        self.window = self.params.get("window")
        self.rope_theta = arch.rope_theta
        self.max_seq_len = arch.max_seq_len
        self.backend = backend
        self.kernel_config = dict(layer.kernel_config) if layer.kernel_config else None

    # ------------------------------------------------------------------ shared pieces
    def _qkv(self, x, positions):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_heads, self.v_head_dim)
        return rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta), v

    def pattern(self, q, k) -> dict:
        """window / block_indices / block_size for the whole-sequence op."""
        return {}

    def visible(self, pos: int, key_pos: torch.Tensor, cache) -> torch.Tensor:
        """Bool [B or 1, H or 1, n]: which cached keys (at key_pos) query `pos` sees."""
        return (key_pos <= pos)[None, None]

    def kept_positions(self, L: int, device=None) -> torch.Tensor:
        """Positions of the keys the cache must keep after L tokens (sorted)."""
        return torch.arange(L, device=device)

    def _check_len(self, T):
        if T > self.max_seq_len:
            raise ValueError(f"sequence length {T} exceeds the config's max_seq_len={self.max_seq_len}")

    # ------------------------------------------------------------------ whole sequence
    def forward(self, x, cache=None):
        B, T, _ = x.shape
        self._check_len(T)
        q, k, v = self._qkv(x, torch.arange(T, device=x.device))
        o = kernels.softmax_attention(q, k, v, **self.pattern(q, k), backend=self.backend,
                                      config=self.kernel_config)
        if cache is not None:
            self.fill_cache(cache, q, k, v)
        return self.o_proj(o.reshape(B, T, -1))

    # ------------------------------------------------------------------ decoding
    def init_cache(self, batch: int, device=None, dtype=torch.float32) -> dict:
        H, K, V = self.n_heads, self.head_dim, self.v_head_dim
        return {"k": torch.zeros(batch, 0, H, K, device=device, dtype=dtype),
                "v": torch.zeros(batch, 0, H, V, device=device, dtype=dtype)}

    def fill_cache(self, cache, q, k, v):
        """After a whole-sequence forward from an empty cache: keep what decoding needs."""
        keep = self.kept_positions(k.shape[1], device=k.device)
        cache["k"], cache["v"] = k[:, keep].contiguous(), v[:, keep].contiguous()

    def step(self, x, cache, pos: int):
        """One token x [B, d] at position `pos` -> [B, d]; updates the cache in place."""
        self._check_len(pos + 1)
        here = torch.full((1,), pos, dtype=torch.long, device=x.device)   # no host-to-device copy: no sync
        q, k, v = self._qkv(x[:, None], here)
        self._before_step(cache, q[:, 0], pos)
        key_pos = torch.cat([self.kept_positions(pos, device=x.device), here])
        keys = torch.cat([cache["k"], k], dim=1)
        values = torch.cat([cache["v"], v], dim=1)
        scores = torch.einsum("bhk,bnhk->bhn", q[:, 0], keys) * self.head_dim ** -0.5
        mask = self.visible(pos, key_pos, {**cache, "k": keys})
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        o = torch.einsum("bhn,bnhv->bhv", probs, values)
        kept = self.kept_positions(pos + 1, device=x.device)
        if kept.numel() == key_pos.numel():        # nothing drops out (full attention): no gather copy
            cache["k"], cache["v"] = keys, values
        else:
            keep = torch.searchsorted(key_pos, kept)
            cache["k"], cache["v"] = keys[:, keep].contiguous(), values[:, keep].contiguous()
        return self.o_proj(o.reshape(x.shape[0], -1))

    def _before_step(self, cache, q, pos):
        """Hook for mixers with extra decode state (block_topk's router)."""


class FullMixer(SoftmaxMixer):
    pass


class SlidingWindowMixer(SoftmaxMixer):
    def pattern(self, q, k):
        return {"window": self.window}

    def visible(self, pos, key_pos, cache):
        return ((pos - key_pos < self.window) & (key_pos <= pos))[None, None]

    def kept_positions(self, L, device=None):
        # the next query (at L) sees L - window + 1 .. L: window - 1 of the past keys
        return torch.arange(max(0, L - self.window + 1), L, device=device)


class _BlockMixer(SoftmaxMixer):
    """Block patterns: a query sees its own block, listed earlier blocks, and maybe a window."""

    def listed_row(self, qb: int, device) -> torch.Tensor:
        """LongTensor [H, S] of key blocks listed for query block qb (-1 unused)."""
        raise NotImplementedError

    def visible(self, pos, key_pos, cache):
        bs = self.block_size
        qb, kb = pos // bs, key_pos // bs
        row = self.listed_row(qb, key_pos.device)                                 # [H, S]
        seen = (kb[None, :, None] == row[:, None, :]).any(-1) | (kb == qb)[None]  # [H, n]
        if self.window is not None:
            seen = seen | (pos - key_pos < self.window)[None]
        return (seen & (key_pos <= pos)[None])[None]


class _StaticRandomMixer(_BlockMixer):
    """Seeded random patterns are drawn once for max_seq_len and sliced, so the pattern of a
    row never depends on how long the sequence is (decoding sees what the full forward sees)."""

    def _build(self, T, device) -> dict:
        raise NotImplementedError

    def _static(self, device):
        cached = getattr(self, "_static_pattern", None)
        if cached is None or cached["block_indices"].device != torch.device(device):
            cached = self._build(self.max_seq_len, device)
            self._static_pattern = cached
        return cached

    def pattern(self, q, k):
        B, T, H, _ = q.shape
        nb = -(-T // self.block_size)
        full = self._static(q.device)
        return {**full, "block_indices": full["block_indices"][:, :, :nb].expand(B, -1, -1, -1).contiguous()}

    def listed_row(self, qb, device):
        return self._static(device)["block_indices"][0, :, qb]


class RandomSparseMixer(_StaticRandomMixer):
    def _build(self, T, device):
        p = self.params
        return kernels.random_pattern(T, p["block_size"], p["num_random_blocks"], seed=p["seed"],
                                      heads=self.n_heads, device=device)


class BigBirdMixer(_StaticRandomMixer):
    def _build(self, T, device):
        p = self.params
        return kernels.bigbird_pattern(T, p["block_size"], p["window"], p["num_random_blocks"],
                                       p["num_global_blocks"] * p["block_size"], seed=p["seed"],
                                       heads=self.n_heads, device=device)


class DilatedMixer(_BlockMixer):
    def pattern(self, q, k):
        B, T, H, _ = q.shape
        return kernels.dilated_pattern(T, self.block_size, self.params["dilation"], batch=B, heads=H,
                                       device=q.device)

    def listed_row(self, qb, device):
        d = self.params["dilation"]
        return torch.arange(qb - d, -1, -d, device=device).view(1, -1).expand(self.n_heads, -1) \
            if qb >= d else torch.full((self.n_heads, 1), -1, device=device)


class LongformerMixer(_BlockMixer):
    def _n_global_tokens(self):
        return self.params["num_global_blocks"] * self.block_size

    def pattern(self, q, k):
        B, T, H, _ = q.shape
        return kernels.longformer_pattern(T, self.block_size, self.window, self._n_global_tokens(),
                                          batch=B, heads=H, device=q.device)

    def listed_row(self, qb, device):
        g = min(self.params["num_global_blocks"], qb)
        row = torch.arange(g, device=device) if g else torch.full((1,), -1, device=device)
        return row.view(1, -1).expand(self.n_heads, -1)

    def kept_positions(self, L, device=None):
        # global keys, plus every key a later query can still reach through its window or its
        # own block (the op always shows a query its whole causal own block)
        g = min(L, self._n_global_tokens())
        tail_start = max(0, min(L - self.window + 1, (L // self.block_size) * self.block_size))
        return torch.cat([torch.arange(g, device=device), torch.arange(max(tail_start, g), L, device=device)])


class BlockTopKMixer(_BlockMixer):
    """Dynamic block top-k (MoBA/NSA style), made causal by routing query block qb with the mean
    query of block qb - 1: a block's own mean query would mix in queries after position i."""

    def pattern(self, q, k):
        B, T, H, K = q.shape
        bs = self.block_size
        padded = -(-T // bs) * bs
        # route[t] = q[t - bs]: pooled over block qb it is the full mean of block qb - 1
        route = torch.cat([q.new_zeros(B, bs, H, K), q], dim=1)[:, :padded]
        keys = torch.nn.functional.pad(k, (0, 0, 0, 0, 0, padded - T))  # last key block is never scored
        return {"block_indices": kernels.topk_block_indices(route, keys, bs, self.params["top_k"]),
                "block_size": bs}

    def init_cache(self, batch, device=None, dtype=torch.float32):
        cache = super().init_cache(batch, device, dtype)
        cache["qsum"] = torch.zeros(batch, self.n_heads, self.head_dim, device=device, dtype=dtype)
        cache["route"] = torch.zeros(batch, self.n_heads, self.head_dim, device=device, dtype=dtype)
        return cache

    def fill_cache(self, cache, q, k, v):
        super().fill_cache(cache, q, k, v)
        bs, T = self.block_size, q.shape[1]
        cur = (T - 1) // bs
        cache["qsum"] = q[:, cur * bs:T].sum(1)
        if cur >= 1:
            cache["route"] = q[:, (cur - 1) * bs:cur * bs].sum(1) / bs

    def _before_step(self, cache, q, pos):
        if pos > 0 and pos % self.block_size == 0:
            cache["route"] = cache["qsum"] / self.block_size
            cache["qsum"] = torch.zeros_like(cache["qsum"])
        cache["qsum"] = cache["qsum"] + q

    def visible(self, pos, key_pos, cache):
        bs, K = self.block_size, self.head_dim
        qb = pos // bs
        keys = cache["k"]                                    # the full cache: positions 0 .. pos
        B, _, H, _ = keys.shape
        kb = key_pos // bs
        seen = (kb == qb)[None, None].expand(B, H, -1)
        if qb > 0:
            work = torch.float64 if keys.dtype == torch.float64 else torch.float32
            means = keys[:, :qb * bs].to(work).reshape(B, qb, bs, H, K).sum(2).transpose(1, 2) / bs
            scores = torch.einsum("bhk,bhnk->bhn", cache["route"].to(work), means)   # [B, H, qb]
            chosen = scores.topk(min(self.params["top_k"], qb), dim=-1).indices      # [B, H, S]
            seen = seen | (kb[None, None, :, None] == chosen[:, :, None, :]).any(-1)
        return seen & (key_pos <= pos)[None, None]


SOFTMAX_MIXERS = {
    "full": FullMixer,
    "sliding_window": SlidingWindowMixer,
    "dilated": DilatedMixer,
    "random_sparse": RandomSparseMixer,
    "longformer": LongformerMixer,
    "bigbird": BigBirdMixer,
    "block_topk": BlockTopKMixer,
}
