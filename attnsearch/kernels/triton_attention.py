"""Triton backend of kernels.softmax_attention: block-sparse causal flash attention with backward.

Host side: tunables (CONFIG_SPACE / default_config / validate_config), the per-query-block and
per-key-block lists built on the GPU with torch ops, and the autograd Function that launches the
kernels of triton_attention_kernels.py. Only O(T) statistics (base-2 log-sum-exp, fp32) are kept
for the backward; nothing of size T x T is ever allocated.
"""
from __future__ import annotations

import contextlib
import os
from collections import OrderedDict

import torch
import triton

from .triton_attention_kernels import (attn_bwd_delta_kernel, attn_bwd_dkdv_kernel,
                                       attn_bwd_dq_kernel, attn_fwd_kernel)

LOG2E = 1.4426950408889634
HEAD_DIMS = (16, 32, 64, 128, 256)
_TILES = (16, 32, 64, 128, 256)
_WARPS = (1, 2, 4, 8, 16)
_STAGES = (1, 2, 3, 4, 5)
_HEAD_GROUPS = (0, 2, 4, 8, 16)
# largest tile product one program may hold (scores tile in registers); beyond it spills
_MAX_TILE_AREA = 128 * 256
# beyond this many [B, H, NB, NB] int32 entries the transposed lists are sized exactly (one sync)
_MAX_DENSE_TRANSPOSED = 1 << 22

CONFIG_SPACE = {"softmax_attention": {
    "BLOCK_M": _TILES, "BLOCK_N": _TILES, "num_warps": _WARPS, "num_stages": _STAGES,
    # backward: dK/dV kernel (key tile BLOCK_N_DKV, walks query tiles of BLOCK_M_DKV) and
    # dQ kernel (query tile BLOCK_M_DQ, walks key tiles of BLOCK_N_DQ)
    "BLOCK_M_DKV": _TILES, "BLOCK_N_DKV": _TILES, "BLOCK_M_DQ": _TILES, "BLOCK_N_DQ": _TILES,
    "num_warps_dkv": _WARPS, "num_stages_dkv": _STAGES, "num_warps_dq": _WARPS,
    "num_stages_dq": _STAGES,
    # program order of the forward kernel (heads_inner) and of the two backward kernels
    # (heads_inner_bwd): 1 = the same tile of all heads together (the heaviest tiles of every
    # head first), 0 = all tiles of one head together (that head's K/V stay in L2)
    "heads_inner": (0, 1), "heads_inner_bwd": (0, 1),
    # backward: 2 runs the dQ kernel on a side CUDA stream beside the dK/dV kernel, so each fills
    # the other's tail of idle multiprocessors; 1 runs them one after the other
    "bwd_streams": (1, 2),
    # backward: 1 adds dQ from the dK/dV kernel with fp32 atomics (5 matrix products, no dQ
    # kernel; summation order, hence rounding, varies run to run); 0 runs the dQ kernel
    "dq_atomic": (0, 1),
    # program order by groups (0 = off): heads inner within groups of this many heads, groups
    # one after the other; needs heads_inner (forward) / heads_inner_bwd (backward) = 1. Keeps
    # heavy tiles early (load balance) with fewer heads' tensors competing for L2 at a time
    "head_group": _HEAD_GROUPS, "head_group_bwd": _HEAD_GROUPS,
    # block-list flat loops: 1 reads each listed block id from memory (prefetched by the
    # pipeliner), 0 picks it out of a register copy of the list (a reduction per tile)
    "list_load": (0, 1), "list_load_dq": (0, 1), "list_load_dkv": (0, 1),
    # backward: 1 computes delta = rowsum(O * dO) inside the dQ kernel, which then runs before
    # the dK/dV kernel (one launch and one pass over dO fewer); 0 runs a separate pre-pass
    "fuse_delta": (0, 1),
    # dK/dV kernel without block lists: 1 gives window-edge tiles only the window test and
    # diagonal tiles only the causal test when the window spans both tiles (the forward and dQ
    # kernels always do: fewer instructions, no spills); 0 tests both (sm_90: fewer
    # instructions with 1, but more spill traffic in those loops)
    "wide_mask_dkv": (0, 1),
}}
_NEW_PATHS_OFF = {"head_group": 0, "head_group_bwd": 0, "list_load": 0, "list_load_dq": 0,
                  "list_load_dkv": 0, "fuse_delta": 0, "wide_mask_dkv": 0}

# from benchmarks/attention.py --sweep on an H200 (bf16, B=2, H=16, D=128, T=8192; full causal,
# window 1024 and random 12.5% block-sparse; 2026-11-28): a 64x64 forward with 4 warps, 3 stages
# was the fastest forward on all three (full 1.134 ms vs 1.219 for 128x64/8/3); heads-inner order
# cut forward+backward by 7% (full) / 4% (window) / 2% (random), but a heads-inner forward was
# slower on full causal (64x64: 1.348 ms at T=8192, 20.68 at T=32768, vs 18.26 for the
# heads-outer 128x64 forward), hence heads-inner for the backward kernels only. dQ by atomics
# was 1.1-1.6x slower at D=128; a side stream for dQ gained 3% heads-outer, none heads-inner.
_HOPPER = {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3,
           "BLOCK_M_DKV": 64, "BLOCK_N_DKV": 128, "BLOCK_M_DQ": 128, "BLOCK_N_DQ": 64,
           "num_warps_dkv": 8, "num_stages_dkv": 3, "num_warps_dq": 8, "num_stages_dq": 3,
           "heads_inner": 0, "heads_inner_bwd": 1, "bwd_streams": 1, "dq_atomic": 0,
           **_NEW_PATHS_OFF}
_OTHER_GPU = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 2,
              "BLOCK_M_DKV": 32, "BLOCK_N_DKV": 64, "BLOCK_M_DQ": 64, "BLOCK_N_DQ": 32,
              "num_warps_dkv": 4, "num_stages_dkv": 2, "num_warps_dq": 4, "num_stages_dq": 2,
              "heads_inner": 0, "heads_inner_bwd": 0, "bwd_streams": 1,
              "dq_atomic": 0, **_NEW_PATHS_OFF}
# the interpreter runs tiles as numpy arrays: small tiles keep tests quick
_INTERPRETER = {"BLOCK_M": 32, "BLOCK_N": 16, "num_warps": 4, "num_stages": 1,
                "BLOCK_M_DKV": 16, "BLOCK_N_DKV": 32, "BLOCK_M_DQ": 32, "BLOCK_N_DQ": 16,
                "num_warps_dkv": 4, "num_stages_dkv": 1, "num_warps_dq": 4, "num_stages_dq": 1,
                "heads_inner": 0, "heads_inner_bwd": 0, "bwd_streams": 1, "dq_atomic": 0,
                **_NEW_PATHS_OFF}


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def default_config(op: str, device=None) -> dict:
    """Defaults per GPU generation: Hopper (sm90+), other CUDA GPUs, or the CPU interpreter."""
    if op != "softmax_attention":
        return {}
    if _interpreting() or not torch.cuda.is_available():
        return dict(_INTERPRETER)
    dev = torch.device(device) if device is not None else torch.device("cuda")
    major, _ = torch.cuda.get_device_capability(dev)
    return dict(_HOPPER if major >= 9 else _OTHER_GPU)


def validate_config(op: str, config: dict, block_size=None, head_dim=None, **_ctx) -> None:
    """Cross-key checks of a full config (single keys are checked against CONFIG_SPACE)."""
    for m, n in (("BLOCK_M", "BLOCK_N"), ("BLOCK_M_DKV", "BLOCK_N_DKV"), ("BLOCK_M_DQ", "BLOCK_N_DQ")):
        area = config[m] * config[n]
        if area > _MAX_TILE_AREA:
            raise ValueError(f"softmax_attention triton config {m} x {n} = {config[m]} x {config[n]} "
                             f"exceeds {_MAX_TILE_AREA} elements per tile")
    if block_size is not None:
        # tiles are capped at block_size; a smaller tile must divide it so tiles never straddle
        # two sparse blocks (every tile size and block size here is a power of two, so they do)
        for key in ("BLOCK_M", "BLOCK_N", "BLOCK_M_DKV", "BLOCK_N_DKV", "BLOCK_M_DQ", "BLOCK_N_DQ"):
            tile = min(config[key], block_size)
            if block_size % tile:
                raise ValueError(f"softmax_attention triton config {key}={config[key]} must divide "
                                 f"block_size={block_size}")
    for group, inner in (("head_group", "heads_inner"), ("head_group_bwd", "heads_inner_bwd")):
        if config[group] and not config[inner]:
            raise ValueError(f"softmax_attention triton config {group}={config[group]} needs "
                             f"{inner}=1 (heads inner within each group)")
    if config["fuse_delta"] and (config["dq_atomic"] or config["bwd_streams"] == 2):
        raise ValueError("softmax_attention triton config fuse_delta=1 needs dq_atomic=0 and "
                         "bwd_streams=1 (the dQ kernel computes delta before the dK/dV kernel)")
    if head_dim is not None and head_dim >= 256 and config["BLOCK_M"] * config["BLOCK_N"] > 64 * 64:
        raise ValueError("softmax_attention triton config: head dim 256 needs BLOCK_M x BLOCK_N "
                         "<= 64 x 64 (shared memory)")


def _full_config(config, block_size, head_dim) -> dict:
    full = {**default_config("softmax_attention"), **(config or {})}
    missing = set(CONFIG_SPACE["softmax_attention"]) - set(full)
    if missing:
        raise ValueError(f"softmax_attention triton config lacks {sorted(missing)}")
    validate_config("softmax_attention", full, block_size=block_size, head_dim=head_dim)
    return full


# ------------------------------------------------------------------------------ block lists

def forward_block_lists(block_indices: torch.Tensor):
    """Clean listed blocks per query block: keep 0 <= kb < qb (own and later blocks are covered
    or invisible), drop duplicates, pack valid ids first. Returns (lists int32 [B, H, NB, S],
    counts int32 [B, H, NB]). All on the input's device, no host sync."""
    B, H, NB, S = block_indices.shape
    idx = block_indices.long()
    qb = torch.arange(NB, device=idx.device).view(1, 1, NB, 1)
    idx = torch.where((idx >= 0) & (idx < qb), idx, torch.full_like(idx, -1))
    if S == 0:
        idx = torch.full((B, H, NB, 1), -1, dtype=torch.long, device=idx.device)
    idx = idx.sort(dim=-1, descending=True).values
    dup = torch.zeros_like(idx, dtype=torch.bool)
    dup[..., 1:] = idx[..., 1:] == idx[..., :-1]
    idx = torch.where(dup, torch.full_like(idx, -1), idx).sort(dim=-1, descending=True).values
    counts = (idx >= 0).sum(-1).to(torch.int32)
    return idx.to(torch.int32).contiguous(), counts.contiguous()


def transposed_block_lists(lists: torch.Tensor, counts: torch.Tensor):
    """For every key block, the query blocks whose (clean) list names it: int32 [B, H, NB, ST]
    (-1 pads) and counts [B, H, NB]. Built with sort/scatter on the device, no loop over blocks."""
    B, H, NB, S = lists.shape
    n_groups = B * H * NB
    device = lists.device
    valid = lists >= 0
    bh = torch.arange(B * H, device=device).view(B, H, 1, 1)
    group = torch.where(valid, bh * NB + lists.long(), torch.full_like(lists, n_groups, dtype=torch.long))
    query_block = torch.arange(NB, device=device).view(1, 1, NB, 1).expand(B, H, NB, S)
    group, query_block = group.reshape(-1), query_block.reshape(-1)
    tcounts = torch.zeros(n_groups + 1, dtype=torch.long, device=device)
    tcounts.scatter_add_(0, group, torch.ones_like(group))
    tcounts = tcounts[:n_groups]
    if n_groups * NB <= _MAX_DENSE_TRANSPOSED:
        width = max(NB, 1)  # a key block is listed by at most NB query blocks: no sync needed
    else:
        width = max(int(tcounts.max().item()), 1)
    order = torch.sort(group, stable=True).indices
    group_sorted = group[order]
    starts = torch.cumsum(tcounts, 0) - tcounts
    starts = torch.cat([starts, starts.new_zeros(1)])
    slot = torch.arange(group.numel(), device=device) - starts[group_sorted]
    slot = torch.where(group_sorted < n_groups, slot, torch.zeros_like(slot))  # unused -> dummy row
    table = torch.full((n_groups + 1, width), -1, dtype=torch.int32, device=device)
    table[group_sorted, slot] = query_block[order].to(torch.int32)
    return (table[:n_groups].reshape(B, H, NB, width).contiguous(),
            tcounts.to(torch.int32).reshape(B, H, NB).contiguous())


_LIST_CACHE: "OrderedDict[tuple, dict]" = OrderedDict()
_LIST_CACHE_SIZE = 16


def cached_block_lists(block_indices: torch.Tensor) -> dict:
    """The cleaned lists of a block_indices tensor, computed once per tensor (again after an
    in-place change, seen through its version counter); the transposed lists are added on the
    first backward. A static pattern passed every step then costs no list building; a dynamic
    one (top-k) is built once per call. Entries hold the tensor itself, so its memory cannot be
    reused by another tensor (same address, different content) while the entry lives."""
    t = block_indices
    key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype, str(t.device), t._version)
    entry = _LIST_CACHE.get(key)
    if entry is None:
        lists, counts = forward_block_lists(t)
        entry = {"source": t, "lists": lists, "counts": counts}
        _LIST_CACHE[key] = entry
        while len(_LIST_CACHE) > _LIST_CACHE_SIZE:
            _LIST_CACHE.popitem(last=False)
    else:
        _LIST_CACHE.move_to_end(key)
    return entry


def _transposed_of(entry: dict):
    if "tlists" not in entry:
        entry["tlists"], entry["tcounts"] = transposed_block_lists(entry["lists"], entry["counts"])
    return entry["tlists"], entry["tcounts"]


# ------------------------------------------------------------------------------ launching

def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _precision(dtype) -> str:
    # fp32 inputs get true fp32 products (the reference semantics); 16-bit ones use tensor cores
    return "ieee" if dtype == torch.float32 else "tf32"


class _Plan:
    """Everything a launch needs besides the tensors: pattern constants and tiles."""

    def __init__(self, T, window, block_indices, block_size, config):
        self.T = T
        self.has_blocks = block_indices is not None
        if self.has_blocks:
            self.window = int(window) if window is not None else 0
            self.block_size = block_size
        else:
            # full causal: a window longer than any distance; block_size unused (1 keeps // cheap)
            self.window = int(window) if window is not None else T + 1
            self.block_size = 1
        self.window = min(self.window, T + 1)
        cap = block_size if self.has_blocks else 1 << 30
        self.tiles = {key: min(config[key], cap) for key in
                      ("BLOCK_M", "BLOCK_N", "BLOCK_M_DKV", "BLOCK_N_DKV", "BLOCK_M_DQ", "BLOCK_N_DQ")}
        self.config = config

    def wide(self, m_key, n_key) -> bool:
        """Whether masked tiles of the kernel with tiles (m_key, n_key) may skip one test: no
        block lists and a window spanning both tiles, so a window-edge tile lies wholly below
        the diagonal and a diagonal tile wholly inside the window."""
        return not self.has_blocks and self.window >= self.tiles[m_key] + self.tiles[n_key]


def _grid(n_tiles, n_heads, heads_inner, group=0):
    """Axis 0 starts fastest: heads there when heads_inner, else tiles (as the kernels read it);
    a 1-D grid when heads are grouped (the kernels split the program id)."""
    if group:
        return (n_tiles * n_heads,)
    return (n_heads, n_tiles) if heads_inner else (n_tiles, n_heads)


def _forward(q, k, v, plan, lists, counts, scale):
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    o = torch.empty((B, T, H, DV), dtype=q.dtype, device=q.device)
    lse = torch.empty((B * H, T), dtype=torch.float32, device=q.device)
    BM, BN = plan.tiles["BLOCK_M"], plan.tiles["BLOCK_N"]
    S = lists.shape[-1]
    heads_inner = bool(plan.config["heads_inner"])
    group = plan.config["head_group"]
    attn_fwd_kernel[_grid(triton.cdiv(T, BM), B * H, heads_inner, group)](
        q, k, v, o, lse, lists, counts,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
        H, T, lists.shape[2], plan.window, plan.block_size, scale * LOG2E, S,
        HAS_BLOCKS=plan.has_blocks, S_PAD=triton.next_power_of_2(max(S, 1)), BLOCK_M=BM,
        BLOCK_N=BN, DK=DK, DV=DV, PREC=_precision(q.dtype), HEADS_INNER=heads_inner,
        GROUP=group, LIST_MEM=bool(plan.config["list_load"]),
        WIDE=plan.wide("BLOCK_M", "BLOCK_N"),
        num_warps=plan.config["num_warps"], num_stages=plan.config["num_stages"])
    return o, lse


def _backward(q, k, v, o, lse, do, plan, lists, counts, tlists, tcounts, scale):
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    cfg = plan.config
    delta = torch.empty((B * H, T), dtype=torch.float32, device=q.device)
    fuse_delta = bool(cfg["fuse_delta"])
    if not fuse_delta:
        attn_bwd_delta_kernel[(triton.cdiv(T, 64), B * H)](
            o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1),
            do.stride(2), H, T, BLOCK_M=64, DV=DV, num_warps=4)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    atomic = bool(cfg["dq_atomic"])
    # fp32 dQ accumulator of the atomic path ([B, T, H, K], O(T)); a dummy otherwise
    dqa = torch.zeros((B, T, H, DK) if atomic else (1, 1, 1, 1), dtype=torch.float32,
                      device=q.device)
    S, ST = lists.shape[-1], tlists.shape[-1]
    NB = lists.shape[2]
    group = cfg["head_group_bwd"]
    common = dict(HAS_BLOCKS=plan.has_blocks, S_PAD=triton.next_power_of_2(max(S, 1)),
                  PREC=_precision(q.dtype), HEADS_INNER=bool(cfg["heads_inner_bwd"]), GROUP=group)

    # allocated on the caller's stream even when the dQ kernel runs on the side stream
    dq = torch.empty_like(q) if not atomic else None

    def launch_dq():
        BM, BN = plan.tiles["BLOCK_M_DQ"], plan.tiles["BLOCK_N_DQ"]
        attn_bwd_dq_kernel[_grid(triton.cdiv(T, BM), B * H, cfg["heads_inner_bwd"], group)](
            q, k, v, o, do, dq, lse, delta, lists, counts,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
            do.stride(0), do.stride(1), do.stride(2), dq.stride(0), dq.stride(1), dq.stride(2),
            H, T, NB, plan.window, plan.block_size, scale * LOG2E, scale, S,
            BLOCK_M=BM, BLOCK_N=BN, DK=DK, DV=DV, LIST_MEM=bool(cfg["list_load_dq"]),
            FUSE_DELTA=fuse_delta, WIDE=plan.wide("BLOCK_M_DQ", "BLOCK_N_DQ"),
            num_warps=cfg["num_warps_dq"],
            num_stages=cfg["num_stages_dq"], **common)

    def launch_dkdv():
        BM, BN = plan.tiles["BLOCK_M_DKV"], plan.tiles["BLOCK_N_DKV"]
        attn_bwd_dkdv_kernel[_grid(triton.cdiv(T, BN), B * H, cfg["heads_inner_bwd"], group)](
            q, k, v, do, dk, dv, dqa, lse, delta, lists, tlists, tcounts,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2),
            dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
            dqa.stride(0), dqa.stride(1), dqa.stride(2),
            H, T, NB, plan.window, plan.block_size, scale * LOG2E, scale, S, ST,
            ST_PAD=triton.next_power_of_2(max(ST, 1)), BLOCK_M=BM, BLOCK_N=BN, DK_=DK, DV_=DV,
            DQ_ATOMIC=atomic, LIST_MEM=bool(cfg["list_load_dkv"]),
            WIDE=bool(cfg["wide_mask_dkv"]) and plan.wide("BLOCK_M_DKV", "BLOCK_N_DKV"),
            num_warps=cfg["num_warps_dkv"], num_stages=cfg["num_stages_dkv"], **common)

    if fuse_delta:  # the dQ kernel writes delta, which the dK/dV kernel reads
        launch_dq()
        launch_dkdv()
        return dq, dk, dv
    side = _side_stream(q.device) if cfg["bwd_streams"] == 2 and not atomic else None
    if side is not None:
        side.wait_stream(torch.cuda.current_stream(q.device))  # delta (and inputs) are ready
    launch_dkdv()
    if atomic:
        return dqa.mul_(scale).to(q.dtype), dk, dv
    with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
        launch_dq()
    if side is not None:
        # join: later work on the caller's stream (and freeing dq's inputs) waits for the dQ kernel
        torch.cuda.current_stream(q.device).wait_stream(side)
    return dq, dk, dv


_SIDE_STREAMS: dict = {}


def _side_stream(device):
    """One extra CUDA stream per device for the dQ kernel; None off CUDA or under the interpreter."""
    if device.type != "cuda" or _interpreting():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _SIDE_STREAMS:
        _SIDE_STREAMS[index] = torch.cuda.Stream(device=index)
    return _SIDE_STREAMS[index]


def _empty_lists(device):
    lists = torch.full((1, 1, 1, 1), -1, dtype=torch.int32, device=device)
    return lists, torch.zeros((1, 1, 1), dtype=torch.int32, device=device)


class _BlockSparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, plan, block_indices, scale):
        q, k, v = (_last_dim_contiguous(x) for x in (q, k, v))
        entry = None
        if plan.has_blocks:
            entry = cached_block_lists(block_indices)
            lists, counts = entry["lists"], entry["counts"]
        else:
            lists, counts = _empty_lists(q.device)
        o, lse = _forward(q, k, v, plan, lists, counts, scale)
        ctx.save_for_backward(q, k, v, o, lse, lists, counts)
        ctx.plan, ctx.scale, ctx.lists_entry = plan, scale, entry
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, lists, counts = ctx.saved_tensors
        plan = ctx.plan
        if plan.has_blocks:
            tlists, tcounts = _transposed_of(ctx.lists_entry)
        else:
            tlists, tcounts = lists, counts
        dq, dk, dv = _backward(q, k, v, o, lse, _last_dim_contiguous(do), plan, lists, counts,
                               tlists, tcounts, ctx.scale)
        return dq, dk, dv, None, None, None


def softmax_attention_triton(q, k, v, *, window, block_indices, block_size, scale, config):
    """Causal softmax attention over visible key blocks only (DESIGN.md semantics)."""
    B, T, H, DK = q.shape
    DV = v.shape[-1]
    for name, dim in (("K", DK), ("V", DV)):
        if dim not in HEAD_DIMS:
            raise ValueError(f"triton softmax_attention: head dim {name}={dim} not in {HEAD_DIMS}")
    if q.dtype == torch.float64:
        raise ValueError("triton softmax_attention: float64 is not supported (use backend='torch')")
    cfg = _full_config(config, block_size if block_indices is not None else None, max(DK, DV))
    scale = DK ** -0.5 if scale is None else float(scale)
    plan = _Plan(T, window, block_indices, block_size, cfg)
    return _BlockSparseAttention.apply(q, k, v, plan, block_indices, scale)
