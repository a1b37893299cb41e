"""Block-sparse PyTorch backend for softmax_attention: only visible key blocks are computed.

Queries are cut into tiles of `block_m` rows; each tile attends only to the key blocks it can
see, so the work is T * (visible keys per tile), not T^2:
- full causal (no window, no block list, or a window covering the sequence): torch's
  scaled_dot_product_attention(is_causal=True);
- window only: every tile sees the same key span relative to itself, taken as a strided view
  (unfold) with one additive mask shared by all batch rows and heads;
- block list (with or without window): a small block-level bitmap says which key blocks each
  tile sees (causality, window, listed blocks, own block); visible blocks are packed to the
  front (argsort of the bitmap), gathered, and masked exactly per token.
Key blocks are `block_size` long with a block list (the op's block grid). bf16 / fp16 inputs
are computed in float32.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .reference import compute_dtype

CONFIG_SPACE = {"softmax_attention": {"block_m": (16, 32, 64, 128, 256)}}
DEFAULT_BLOCK_M = 64


def default_config(op: str, device=None) -> dict:
    return {"block_m": DEFAULT_BLOCK_M}


def validate_config(op: str, config: dict, **ctx) -> None:
    block_m = config.get("block_m")
    if not isinstance(block_m, int) or block_m < 16 or block_m & (block_m - 1):
        raise ValueError(f"softmax_attention torch config block_m must be a power of two >= 16, got {block_m!r}")


def _full_causal(q, k, v, scale):
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))                # [B, H, T, D]
    o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale)
    return o.transpose(1, 2)


def listed_blocks(block_indices: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Bool [B, H, num_blocks, num_blocks]: key block kb listed for query block qb, own block included.

    Rows past block_indices' own query blocks (padding) see only themselves. Slots that are -1
    or out of range are ignored, as in the reference.
    """
    B, H, NB, _ = block_indices.shape
    idx = block_indices.long()
    idx = torch.where((idx < 0) | (idx >= NB), num_blocks, idx)
    if num_blocks > NB:
        idx = F.pad(idx, (0, 0, 0, num_blocks - NB), value=num_blocks)
    listed = torch.zeros(B, H, num_blocks, num_blocks + 1, dtype=torch.bool, device=idx.device)
    listed.scatter_(3, idx, True)
    listed = listed[..., :num_blocks]
    return listed | torch.eye(num_blocks, dtype=torch.bool, device=idx.device)


def visible_key_blocks(B, H, Tp, M, kb_len, window, listed, block_size, device):
    """Which key blocks each query tile of M rows can see, packed to the front.

    Returns order [B, H, nT, S] (key block ids, S = most visible blocks of any tile), slot_ok
    (False for padding slots) and, with a block list, listed_groups [B, H, nT, G, NBk]: the
    listing for each group of rows of a tile that share a query block.
    """
    num_tiles, num_kblocks = Tp // M, Tp // kb_len
    tile_start = torch.arange(num_tiles, device=device) * M
    kb_start = torch.arange(num_kblocks, device=device) * kb_len
    block_vis = (kb_start[None, :] <= tile_start[:, None] + M - 1)[None, None]   # causal
    reach = None
    if window is not None:
        reach = block_vis & (kb_start[None, :] + kb_len - 1 >= tile_start[:, None] - window + 1)
    listed_groups = None
    if listed is not None:
        rows_per_group = min(M, block_size)
        groups = M // rows_per_group
        group_qblock = (tile_start[:, None] + torch.arange(groups, device=device) * rows_per_group) // block_size
        listed_groups = listed[:, :, group_qblock]                     # [B, H, nT, groups, NBk]
        tile_listed = listed_groups.any(dim=3)
        block_vis = block_vis & (tile_listed if reach is None else tile_listed | reach)
    else:
        block_vis = reach
    block_vis = block_vis.expand(B, H, num_tiles, num_kblocks)
    S = int(block_vis.sum(-1).max())
    order = torch.argsort((~block_vis).to(torch.int8), dim=-1, stable=True)[..., :S]
    return order, block_vis.gather(-1, order), listed_groups


def window_tiles_back(window: int, M: int) -> int:
    """How many key tiles behind its own a query tile of M rows reaches with this window."""
    return -(-(window - 1) // M)


@functools.lru_cache(maxsize=8)
def _window_bias(num_tiles: int, M: int, window: int, dtype: torch.dtype, device: torch.device):
    """Additive mask [nT, M, (back + 1) * M]: 0 where key j is visible to query i, else -inf.

    Key column c of tile t is position j = (t - back) * M + c. Visibility depends on i - j only,
    except that columns before position 0 (front padding) are hidden in the first tiles.
    """
    back = window_tiles_back(window, M)
    r = torch.arange(M, device=device)[:, None]
    col = torch.arange((back + 1) * M, device=device)[None, :]
    dist = r - col + back * M                                          # i - j
    ok = (dist >= 0) & (dist < window)
    j0 = (torch.arange(num_tiles, device=device) - back) * M
    ok = ok[None] & ((j0[:, None] + col) >= 0)[:, None, :]
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(ok, zero, torch.full((), float("-inf"), dtype=dtype, device=device))


def _sliding_window(qh, kh, vh, window, M, scale):
    """Window-only attention. Every tile sees the same span of keys relative to itself, so the
    keys come from a strided view (unfold) and one mask serves every batch row and head."""
    B, H, T, D = qh.shape
    back = window_tiles_back(window, M)
    num_tiles = -(-T // M)
    end_pad = num_tiles * M - T
    qt = F.pad(qh, (0, 0, 0, end_pad)).reshape(B, H, num_tiles, M, D)
    kw = F.pad(kh, (0, 0, back * M, end_pad)).unfold(2, (back + 1) * M, M)                 # [B,H,nT,D,span]
    vw = F.pad(vh, (0, 0, back * M, end_pad)).unfold(2, (back + 1) * M, M).transpose(-1, -2)  # [B,H,nT,span,V]
    scores = (qt @ kw) * scale + _window_bias(num_tiles, M, window, qh.dtype, qh.device)
    o = torch.softmax(scores, dim=-1) @ vw
    return o.reshape(B, H, num_tiles * M, -1)[:, :, :T]


def softmax_attention_torch(q, k, v, *, window, block_indices, block_size, scale, config):
    B, T, H, D = q.shape
    scale = D ** -0.5 if scale is None else scale
    dtype = compute_dtype(q.dtype)
    if block_indices is None and (window is None or window >= T):
        return _full_causal(q.to(dtype), k.to(dtype), v.to(dtype), scale).to(q.dtype)

    M = config["block_m"]
    if block_indices is None:
        heads_first = lambda x: x.to(dtype).transpose(1, 2)  # noqa: E731
        o = _sliding_window(heads_first(q), heads_first(k), heads_first(v), window, M, scale)
        return o.transpose(1, 2).to(q.dtype)

    kb_len = block_size if block_indices is not None else M
    Tp = -(-T // max(M, kb_len)) * max(M, kb_len)
    num_tiles, num_kblocks = Tp // M, Tp // kb_len
    dev = q.device

    def heads_first(x):  # [B, T, H, D] -> [B, H, Tp, D] in the compute dtype, zero padded
        return F.pad(x.to(dtype), (0, 0, 0, 0, 0, Tp - T)).transpose(1, 2)
    qh, kh, vh = heads_first(q), heads_first(k), heads_first(v)

    listed = None if block_indices is None else listed_blocks(block_indices, num_kblocks)  # [B, H, NBk, NBk]
    order, slot_ok, listed_groups = visible_key_blocks(B, H, Tp, M, kb_len, window, listed, block_size, dev)
    S = order.shape[-1]
    tile_start = torch.arange(num_tiles, device=dev) * M

    bi = torch.arange(B, device=dev).view(B, 1, 1, 1)
    hi = torch.arange(H, device=dev).view(1, H, 1, 1)
    kg = kh.reshape(B, H, num_kblocks, kb_len, D)[bi, hi, order].reshape(B, H, num_tiles, S * kb_len, D)
    vg = vh.reshape(B, H, num_kblocks, kb_len, -1)[bi, hi, order].reshape(B, H, num_tiles, S * kb_len, -1)
    qt = qh.reshape(B, H, num_tiles, M, D)

    # Token level: exact visibility inside the gathered blocks.
    i = (tile_start[:, None] + torch.arange(M, device=dev))[None, None, :, :, None]        # [1,1,nT,M,1]
    j = (order[..., None] * kb_len + torch.arange(kb_len, device=dev)).reshape(B, H, num_tiles, 1, S * kb_len)
    ok = (j <= i) & slot_ok.repeat_interleave(kb_len, dim=-1)[..., None, :]
    in_window = None if window is None else (i - j) < window
    if block_indices is not None:
        groups = listed_groups.shape[3]
        rows_per_group = M // groups
        slot_listed = listed_groups.gather(-1, order[:, :, :, None, :].expand(B, H, num_tiles, groups, S))
        slot_listed = slot_listed.repeat_interleave(rows_per_group, dim=3).repeat_interleave(kb_len, dim=-1)
        ok = ok & (slot_listed if in_window is None else slot_listed | in_window)
    else:
        ok = ok & in_window

    scores = (qt @ kg.transpose(-1, -2)) * scale
    probs = torch.softmax(scores.masked_fill(~ok, float("-inf")), dim=-1)
    o = (probs @ vg).reshape(B, H, Tp, -1)[:, :, :T]
    return o.transpose(1, 2).to(q.dtype)
