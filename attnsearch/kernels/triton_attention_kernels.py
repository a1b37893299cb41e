"""Triton kernels of block-sparse causal flash attention: forward, delta preprocess, dK/dV, dQ.

Visibility (DESIGN.md): key j is visible to query i when j <= i and (i - j < WINDOW, or j is in
i's own block, or j's block is listed for i's block; the last two only with HAS_BLOCKS). The host
side (triton_attention.py) passes WINDOW = T + 1 for full causal attention and WINDOW = 0 for
blocks without a window, so one arithmetic rule covers every pattern.

Each program walks only the tiles it can see:
  * the contiguous range: keys from the row's lower bound lower(i) = i - WINDOW + 1 (or its own
    block start, whichever is smaller) up to the diagonal. Edge tiles (window edge, diagonal,
    T tail) are masked, each with only the tests it can fail (_visible); the tiles between
    them run a mask-free loop;
  * the listed blocks (HAS_BLOCKS), clipped where the contiguous range begins so no tile is
    visited twice; listed tiles lie wholly below the diagonal, so they need no mask either.
    Lists are sorted, so the few blocks that reach into the contiguous range (window + blocks)
    come first and get a clipped loop; the rest run as one flat loop over their tiles.
The dK/dV kernel does the same in the transposed direction, from a per-key-block list of the
query blocks that list it (built on the GPU by the host). The row correction delta =
rowsum(O * dO) comes from a pre-pass kernel, or (FUSE_DELTA) from the dQ kernel, which then
runs first. Program order (which tiles of which heads start together) is _tile_and_head's.

Softmax runs in base 2 with scale * log2(e) folded into one multiply; the saved statistic is
the base-2 log-sum-exp per row (fp32, O(T)). Pointer arithmetic only (no block pointers).
Tiles lie inside one sparse block (the host caps BLOCK_M, BLOCK_N at block_size), so a query
tile has one list of blocks and a key tile one transposed list.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _is_listed(lst, blk):
    """Whether block id `blk` occurs in the list vector `lst` (-1 pads)."""
    return tl.sum((lst == blk).to(tl.int32), axis=0) > 0


@triton.jit
def _pick(vec, offs, j):
    """vec[j] of a register vector without a memory load: a load in the tile loop would feed the
    next tile's K/V addresses and stop the software pipeline from prefetching them."""
    return tl.sum(tl.where(offs == j, vec, 0), axis=0)


@triton.jit
def _log2_int(x):
    """log2 of a power-of-two int32 scalar, in integers, once per program: the flat loops then
    split their counter with a shift and a mask instead of a division by a runtime value."""
    return tl.sum(((x >> tl.arange(0, 32)) > 1).to(tl.int32), axis=0)


@triton.jit
def _tile_start(lst, offs, lst_base, first, t, BS, shift, TILE: tl.constexpr,
                LIST_MEM: tl.constexpr):
    """Start row of flat tile t over listed blocks lst[first:]: tile t % per_block of block
    lst[first + t // per_block], per_block = BS // TILE = 1 << shift. LIST_MEM reads the block
    id from memory (lst_base, an L1 hit; Triton's pipeliner prefetches such index loads one
    stage ahead of the tiles they address) instead of picking it out of the register copy."""
    if LIST_MEM:
        blk = tl.load(lst_base + first + (t >> shift))
    else:
        blk = _pick(lst, offs, first + (t >> shift))
    return tl.multiple_of(blk * BS + (t & ((1 << shift) - 1)) * TILE, TILE)


@triton.jit
def _tile_and_head(n_tiles, HEADS_INNER: tl.constexpr, GROUP: tl.constexpr):
    """(tile, batch*head) of this program. Programs start in grid order, axis 0 fastest; the host
    puts heads on axis 0 when HEADS_INNER (the same tile of all heads together: the heaviest
    tiles of every head first), else tiles (all tiles of one head together: its K/V stay in L2).
    GROUP > 0 (1-D grid): heads inner within groups of GROUP heads, groups one after the other,
    so the heavy tiles still start early while only GROUP heads' tensors compete for L2."""
    if GROUP > 0:
        pid = tl.program_id(0)
        BH = tl.num_programs(0) // n_tiles
        per_group = GROUP * n_tiles
        group = pid // per_group
        first = group * GROUP
        size = tl.minimum(BH - first, GROUP)  # the last group may hold fewer heads
        r = pid - group * per_group
        return r // size, first + r % size
    if HEADS_INNER:
        return tl.program_id(1), tl.program_id(0)
    return tl.program_id(0), tl.program_id(1)


@triton.jit
def _visible(rows, cols, T, WINDOW, BS, listed, HAS_BLOCKS: tl.constexpr, MASKED: tl.constexpr):
    """[len(rows), len(cols)] visibility of a tile that needs masking. MASKED 1: a window-edge
    tile; 2: a diagonal tile (also the one reaching past T), which with block lists lies inside
    one sparse block (tiles never straddle blocks), so the own-block rule makes every causal
    pair visible. 3 / 4: window edge /
    diagonal tile when the window spans two tiles (WIDE): an edge tile then lies wholly below
    the diagonal (only the window test) and a diagonal tile wholly inside the window (only the
    causal test)."""
    causal = (cols[None, :] <= rows[:, None]) & (cols[None, :] < T)
    if MASKED == 4 or (HAS_BLOCKS and MASKED == 2):
        return causal
    near = (rows[:, None] - cols[None, :]) < WINDOW
    if MASKED == 3:
        return near
    if HAS_BLOCKS:
        near = near | ((rows // BS)[:, None] == (cols // BS)[None, :]) | listed
    return causal & near


@triton.jit
def _visible_t(rows, cols, WINDOW, BS, listed, HAS_BLOCKS: tl.constexpr, MASKED: tl.constexpr):
    """[len(cols), len(rows)] (keys x queries) visibility for the dK/dV kernel (MASKED as in
    _visible). Rows >= T need no mask there: their q and dO load as zero, so they add nothing."""
    causal = cols[:, None] <= rows[None, :]
    if MASKED == 4 or (HAS_BLOCKS and MASKED == 2):
        return causal
    near = (rows[None, :] - cols[:, None]) < WINDOW
    if MASKED == 3:
        return near
    if HAS_BLOCKS:
        near = near | ((cols // BS)[:, None] == (rows // BS)[None, :]) | listed
    return causal & near


@triton.jit
def _key_ranges(m0, T, WINDOW, BS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                HAS_BLOCKS: tl.constexpr):
    """Key-tile bounds of query tile [m0, m0 + BLOCK_M): masked [lo, full_lo), clean
    [full_lo, full_hi), masked [full_hi, hi). All multiples of BLOCK_N."""
    first_lower = m0 - WINDOW + 1
    last_lower = m0 + BLOCK_M - WINDOW
    if HAS_BLOCKS:
        own = (m0 // BS) * BS
        first_lower = tl.minimum(first_lower, own)
        last_lower = tl.minimum(last_lower, own)
    hi = tl.cdiv(tl.minimum(m0 + BLOCK_M, T), BLOCK_N) * BLOCK_N
    lo = tl.minimum((tl.maximum(first_lower, 0) // BLOCK_N) * BLOCK_N, hi)
    full_lo = tl.minimum(tl.maximum(tl.cdiv(tl.maximum(last_lower, 0), BLOCK_N) * BLOCK_N, lo), hi)
    full_hi = tl.minimum(tl.maximum(((m0 + 1) // BLOCK_N) * BLOCK_N, full_lo), hi)
    return lo, full_lo, full_hi, hi


@triton.jit
def _query_ranges(n0, T, WINDOW, BS, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  HAS_BLOCKS: tl.constexpr):
    """Query-tile bounds of key tile [n0, n0 + BLOCK_N) (dK/dV): masked [first, a), clean [a, b),
    masked [b, c). All multiples of BLOCK_M."""
    first_upper = n0 + WINDOW - 1
    last_upper = n0 + BLOCK_N - 1 + WINDOW - 1
    if HAS_BLOCKS:
        own_end = (n0 // BS) * BS + BS - 1
        first_upper = tl.maximum(first_upper, own_end)
        last_upper = tl.maximum(last_upper, own_end)
    c = tl.cdiv(tl.minimum(last_upper + 1, T), BLOCK_M) * BLOCK_M
    first = tl.minimum((n0 // BLOCK_M) * BLOCK_M, c)
    a = tl.minimum(tl.maximum(tl.cdiv(n0 + BLOCK_N - 1, BLOCK_M) * BLOCK_M, first), c)
    b = tl.minimum(tl.maximum((tl.minimum(first_upper + 1, T) // BLOCK_M) * BLOCK_M, a), c)
    return first, a, b, c


@triton.jit
def _near_split(lst, lo, BS, BLOCK_N: tl.constexpr):
    """Lists are sorted descending; the first n_near blocks reach into the contiguous range
    [lo, ...) and must be clipped, the rest lie wholly below it. Also tiles per block."""
    n_far = tl.sum(((lst >= 0) & ((lst + 1) * BS <= lo)).to(tl.int32), axis=0)
    n_valid = tl.sum((lst >= 0).to(tl.int32), axis=0)
    return n_valid - n_far, BS // BLOCK_N


# ----------------------------------------------------------------------------------- forward

@triton.jit
def _fwd_tile(acc, l_i, m_i, q, k_base, v_base, n0, rows, offs_n, offs_dk, offs_dv,
              stride_kt, stride_vt, T, WINDOW, BS, lst, qk_scale,
              MASKED: tl.constexpr, HAS_BLOCKS: tl.constexpr, PREC: tl.constexpr):
    cols = n0 + offs_n
    kT_ptrs = k_base + cols[None, :] * stride_kt + offs_dk[:, None]
    v_ptrs = v_base + cols[:, None] * stride_vt + offs_dv[None, :]
    if MASKED:
        kT = tl.load(kT_ptrs, mask=cols[None, :] < T, other=0.0)
        v = tl.load(v_ptrs, mask=cols[:, None] < T, other=0.0)
    else:
        kT = tl.load(kT_ptrs)
        v = tl.load(v_ptrs)
    s = tl.dot(q, kT, input_precision=PREC)
    if MASKED:
        listed = False
        if HAS_BLOCKS and MASKED == 1:
            listed = _is_listed(lst, n0 // BS)
        s = tl.where(_visible(rows, cols, T, WINDOW, BS, listed, HAS_BLOCKS, MASKED),
                     s * qk_scale,
                     float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PREC)
    return acc, l_i, m_new


@triton.jit
def attn_fwd_kernel(Q, K, V, O, LSE, LST, LCNT,
                    sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h, so_b, so_t, so_h,
                    H, T, NQB, WINDOW, BS, qk_scale, S,
                    HAS_BLOCKS: tl.constexpr, S_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                    PREC: tl.constexpr, HEADS_INNER: tl.constexpr, GROUP: tl.constexpr,
                    LIST_MEM: tl.constexpr, WIDE: tl.constexpr):
    n_tiles = tl.cdiv(T, BLOCK_M)
    tile, bh = _tile_and_head(n_tiles, HEADS_INNER, GROUP)
    # heaviest (latest) query tiles first: causal work grows with the tile index
    pid_m = n_tiles - 1 - tile
    b = (bh // H).to(tl.int64)  # 64-bit base offsets: B * T * H * D may pass 2**31
    h = (bh % H).to(tl.int64)
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, DK)
    offs_dv = tl.arange(0, DV)
    q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_t + offs_dk[None, :],
                mask=rows[:, None] < T, other=0.0)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h

    acc = tl.zeros([BLOCK_M, DV], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # finite start: a row with nothing visible yet must not produce inf - inf
    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)

    lo, full_lo, full_hi, hi = _key_ranges(m0, T, WINDOW, BS, BLOCK_M, BLOCK_N, HAS_BLOCKS)
    lst = 0
    if HAS_BLOCKS:
        lst_base = LST + (bh * NQB + m0 // BS) * S
        offs_s = tl.arange(0, S_PAD)
        lst = tl.load(lst_base + offs_s, mask=offs_s < S, other=-1)
        count = tl.load(LCNT + bh * NQB + m0 // BS)
        n_near, per_block = _near_split(lst, lo, BS, BLOCK_N)
        for slot in range(0, n_near):  # blocks reaching into [lo, ...): clip there
            start = tl.load(lst_base + slot) * BS
            for n0 in range(start, tl.minimum(start + BS, lo), BLOCK_N):
                acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, n0, rows, offs_n,
                                          offs_dk, offs_dv, sk_t, sv_t, T, WINDOW, BS, lst,
                                          qk_scale, False, HAS_BLOCKS, PREC)
        shift = _log2_int(per_block)
        for t in range(0, (count - n_near) * per_block):  # the rest: one flat, pipelined loop
            n0 = _tile_start(lst, offs_s, lst_base, n_near, t, BS, shift, BLOCK_N, LIST_MEM)
            acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, n0, rows, offs_n,
                                      offs_dk, offs_dv, sk_t, sv_t, T, WINDOW, BS, lst,
                                      qk_scale, False, HAS_BLOCKS, PREC)
    for n0 in range(lo, full_lo, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, n0, rows, offs_n, offs_dk,
                                  offs_dv, sk_t, sv_t, T, WINDOW, BS, lst, qk_scale,
                                  1 + 2 * WIDE, HAS_BLOCKS, PREC)
    for n0 in range(full_lo, full_hi, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, n0, rows, offs_n, offs_dk,
                                  offs_dv, sk_t, sv_t, T, WINDOW, BS, lst, qk_scale, False,
                                  HAS_BLOCKS, PREC)
    for n0 in range(full_hi, hi, BLOCK_N):
        acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, k_base, v_base, n0, rows, offs_n, offs_dk,
                                  offs_dv, sk_t, sv_t, T, WINDOW, BS, lst, qk_scale,
                                  2 + 2 * WIDE, HAS_BLOCKS, PREC)

    l_safe = tl.where(l_i > 0.0, l_i, 1.0)
    acc = acc / l_safe[:, None]
    tl.store(LSE + bh * T + rows, m_i + tl.math.log2(l_safe), mask=rows < T)
    tl.store(O + b * so_b + h * so_h + rows[:, None] * so_t + offs_dv[None, :],
             acc.to(O.dtype.element_ty), mask=rows[:, None] < T)


# ---------------------------------------------------------------------------------- backward

@triton.jit
def attn_bwd_delta_kernel(O, DO, DELTA, so_b, so_t, so_h, sdo_b, sdo_t, sdo_h, H, T,
                          BLOCK_M: tl.constexpr, DV: tl.constexpr):
    """delta_i = sum_d O[i, d] * dO[i, d] in fp32 (the softmax-gradient row correction)."""
    bh = tl.program_id(1)
    b = (bh // H).to(tl.int64)  # 64-bit base offsets: B * T * H * D may pass 2**31
    h = (bh % H).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_dv = tl.arange(0, DV)
    mask = rows[:, None] < T
    o = tl.load(O + b * so_b + h * so_h + rows[:, None] * so_t + offs_dv[None, :], mask=mask,
                other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + rows[:, None] * sdo_t + offs_dv[None, :],
                 mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
    tl.store(DELTA + bh * T + rows, delta, mask=rows < T)


@triton.jit
def _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base, dqa_base, m0, cols, offs_m,
               offs_dk, offs_dv, stride_qt, stride_dot, stride_dqat, T, WINDOW, BS, lst_rows, offs_s,
               S, kb, qk_scale, MASKED: tl.constexpr, ROW_TAIL: tl.constexpr,
               HAS_BLOCKS: tl.constexpr, PREC: tl.constexpr, DQ_ATOMIC: tl.constexpr):
    """One query tile against this program's key tile; lst_rows points at the forward lists of
    this (batch, head), used only by masked tiles to ask whether the query block lists kb.
    DQ_ATOMIC: also add this tile's share of dQ (unscaled, fp32) into dqa_base with atomics, so
    no separate dQ kernel has to recompute the scores (5 matrix products instead of 7)."""
    rows = m0 + offs_m
    qT_ptrs = q_base + rows[None, :] * stride_qt + offs_dk[:, None]
    do_ptrs = do_base + rows[:, None] * stride_dot + offs_dv[None, :]
    if ROW_TAIL:
        qT = tl.load(qT_ptrs, mask=rows[None, :] < T, other=0.0)
        do = tl.load(do_ptrs, mask=rows[:, None] < T, other=0.0)
        lse = tl.load(lse_base + rows, mask=rows < T, other=0.0)
        delta = tl.load(delta_base + rows, mask=rows < T, other=0.0)
    else:
        qT = tl.load(qT_ptrs)
        do = tl.load(do_ptrs)
        lse = tl.load(lse_base + rows)
        delta = tl.load(delta_base + rows)
    # both score-sized products first: the tensor cores compute dP while exp2 runs on S
    sT = tl.dot(k, qT, input_precision=PREC)
    dpT = tl.dot(v, tl.trans(do), input_precision=PREC)
    pT = tl.math.exp2(sT * qk_scale - lse[None, :])
    if MASKED:
        listed = False
        if HAS_BLOCKS and MASKED == 1:
            lst = tl.load(lst_rows + (m0 // BS) * S + offs_s, mask=offs_s < S, other=-1)
            listed = _is_listed(lst, kb)
        pT = tl.where(_visible_t(rows, cols, WINDOW, BS, listed, HAS_BLOCKS, MASKED), pT,
                      0.0)
    dv = tl.dot(pT.to(do.dtype), do, dv, input_precision=PREC)
    dsT = pT * (dpT - delta[None, :])
    dk = tl.dot(dsT.to(qT.dtype), tl.trans(qT), dk, input_precision=PREC)
    if DQ_ATOMIC:
        dq = tl.dot(tl.trans(dsT.to(k.dtype)), k, input_precision=PREC)
        dqa_ptrs = dqa_base + rows[:, None] * stride_dqat + offs_dk[None, :]
        if ROW_TAIL:
            tl.atomic_add(dqa_ptrs, dq, mask=rows[:, None] < T, sem="relaxed")
        else:
            tl.atomic_add(dqa_ptrs, dq, sem="relaxed")
    return dk, dv


@triton.jit
def attn_bwd_dkdv_kernel(Q, K, V, DO, DK, DV, DQA, LSE, DELTA, LST, TLST, TCNT,
                         sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
                         sdo_b, sdo_t, sdo_h, sdk_b, sdk_t, sdk_h, sdv_b, sdv_t, sdv_h,
                         sdqa_b, sdqa_t, sdqa_h,
                         H, T, NB, WINDOW, BS, qk_scale, sm_scale, S, ST,
                         HAS_BLOCKS: tl.constexpr, S_PAD: tl.constexpr, ST_PAD: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DK_: tl.constexpr,
                         DV_: tl.constexpr, PREC: tl.constexpr, HEADS_INNER: tl.constexpr,
                         DQ_ATOMIC: tl.constexpr, GROUP: tl.constexpr, LIST_MEM: tl.constexpr,
                         WIDE: tl.constexpr):
    # key tile 0 first: it is seen by the most query tiles
    tile, bh = _tile_and_head(tl.cdiv(T, BLOCK_N), HEADS_INNER, GROUP)
    b = (bh // H).to(tl.int64)  # 64-bit base offsets: B * T * H * D may pass 2**31
    h = (bh % H).to(tl.int64)
    n0 = tile * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_dk = tl.arange(0, DK_)
    offs_dv = tl.arange(0, DV_)
    k = tl.load(K + b * sk_b + h * sk_h + cols[:, None] * sk_t + offs_dk[None, :],
                mask=cols[:, None] < T, other=0.0)
    v = tl.load(V + b * sv_b + h * sv_h + cols[:, None] * sv_t + offs_dv[None, :],
                mask=cols[:, None] < T, other=0.0)
    dk = tl.zeros([BLOCK_N, DK_], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, DV_], dtype=tl.float32)
    q_base = Q + b * sq_b + h * sq_h
    do_base = DO + b * sdo_b + h * sdo_h
    lse_base = LSE + bh * T
    delta_base = DELTA + bh * T
    dqa_base = DQA + b * sdqa_b + h * sdqa_h

    first, a, b_clean, c = _query_ranges(n0, T, WINDOW, BS, BLOCK_M, BLOCK_N, HAS_BLOCKS)
    kb = n0 // BS
    offs_s = tl.arange(0, S_PAD)
    lst_rows = LST + bh * NB * S
    if HAS_BLOCKS:
        tlst_base = TLST + (bh * NB + kb) * ST
        count = tl.load(TCNT + bh * NB + kb)
        m_end = tl.cdiv(T, BLOCK_M) * BLOCK_M
        # transposed lists are sorted ascending: blocks starting below c come first, get clipped
        offs_st = tl.arange(0, ST_PAD)
        tlst = tl.load(tlst_base + offs_st, mask=offs_st < ST, other=-1)
        n_near = tl.sum(((tlst >= 0) & (tlst * BS < c)).to(tl.int32), axis=0)
        per_block = BS // BLOCK_M
        for slot in range(0, n_near):
            qstart = tl.load(tlst_base + slot) * BS
            for m0 in range(tl.maximum(qstart, c), tl.minimum(qstart + BS, m_end), BLOCK_M):
                dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                                    dqa_base, m0, cols, offs_m, offs_dk, offs_dv, sq_t, sdo_t,
                                    sdqa_t, T, WINDOW, BS, lst_rows, offs_s, S, kb, qk_scale,
                                    False, True, HAS_BLOCKS, PREC, DQ_ATOMIC)
        # only the last query block can end past T: when it is listed (the last entry, lists
        # being ascending) it gets a row-masked loop of its own, so the flat loop loads whole
        # tiles without masks (fewer instructions in the hot loop)
        last_block = _pick(tlst, offs_st, count - 1)
        tail = ((count > n_near) & (last_block == NB - 1) & (T % BS != 0)).to(tl.int32)
        for t in range(0, (count - n_near - tail) * per_block):
            # a division here, not _tile_start's shift: the shift version spills (ptxas, sm_90)
            if LIST_MEM:
                qblk = tl.load(tlst_base + n_near + t // per_block)
            else:
                qblk = _pick(tlst, offs_st, n_near + t // per_block)
            m0 = qblk * BS + (t % per_block) * BLOCK_M
            m0 = tl.multiple_of(m0, BLOCK_M)  # lets the row-statistics loads vectorise
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                                dqa_base, m0, cols, offs_m, offs_dk, offs_dv, sq_t, sdo_t,
                                sdqa_t, T, WINDOW, BS, lst_rows, offs_s, S, kb, qk_scale,
                                False, False, HAS_BLOCKS, PREC, DQ_ATOMIC)
        for m0 in range((NB - 1) * BS, (NB - 1) * BS + tail * (m_end - (NB - 1) * BS), BLOCK_M):
            dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                                dqa_base, m0, cols, offs_m, offs_dk, offs_dv, sq_t, sdo_t,
                                sdqa_t, T, WINDOW, BS, lst_rows, offs_s, S, kb, qk_scale,
                                False, True, HAS_BLOCKS, PREC, DQ_ATOMIC)
    for m0 in range(first, a, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                            dqa_base, m0, cols, offs_m, offs_dk, offs_dv, sq_t, sdo_t,
                            sdqa_t, T, WINDOW, BS, lst_rows, offs_s, S, kb, qk_scale,
                            2 + 2 * WIDE, True, HAS_BLOCKS, PREC, DQ_ATOMIC)
    for m0 in range(a, b_clean, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                            dqa_base, m0, cols, offs_m, offs_dk, offs_dv, sq_t, sdo_t,
                            sdqa_t, T, WINDOW, BS, lst_rows, offs_s, S, kb, qk_scale,
                            False, False, HAS_BLOCKS, PREC, DQ_ATOMIC)
    for m0 in range(b_clean, c, BLOCK_M):
        dk, dv = _dkdv_tile(dk, dv, k, v, q_base, do_base, lse_base, delta_base,
                            dqa_base, m0, cols, offs_m, offs_dk, offs_dv, sq_t, sdo_t,
                            sdqa_t, T, WINDOW, BS, lst_rows, offs_s, S, kb, qk_scale,
                            1 + 2 * WIDE, True, HAS_BLOCKS, PREC, DQ_ATOMIC)

    dk = dk * sm_scale
    tl.store(DK + b * sdk_b + h * sdk_h + cols[:, None] * sdk_t + offs_dk[None, :],
             dk.to(DK.dtype.element_ty), mask=cols[:, None] < T)
    tl.store(DV + b * sdv_b + h * sdv_h + cols[:, None] * sdv_t + offs_dv[None, :],
             dv.to(DV.dtype.element_ty), mask=cols[:, None] < T)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, k_base, v_base, n0, rows, offs_n, offs_dk, offs_dv,
             stride_kt, stride_vt, T, WINDOW, BS, lst, qk_scale,
             MASKED: tl.constexpr, HAS_BLOCKS: tl.constexpr, PREC: tl.constexpr):
    cols = n0 + offs_n
    kT_ptrs = k_base + cols[None, :] * stride_kt + offs_dk[:, None]
    vT_ptrs = v_base + cols[None, :] * stride_vt + offs_dv[:, None]
    if MASKED:
        kT = tl.load(kT_ptrs, mask=cols[None, :] < T, other=0.0)
        vT = tl.load(vT_ptrs, mask=cols[None, :] < T, other=0.0)
    else:
        kT = tl.load(kT_ptrs)
        vT = tl.load(vT_ptrs)
    s = tl.dot(q, kT, input_precision=PREC)
    p = tl.math.exp2(s * qk_scale - lse[:, None])
    if MASKED:
        listed = False
        if HAS_BLOCKS and MASKED == 1:
            listed = _is_listed(lst, n0 // BS)
        p = tl.where(_visible(rows, cols, T, WINDOW, BS, listed, HAS_BLOCKS, MASKED), p,
                     0.0)
    dp = tl.dot(do, vT, input_precision=PREC)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(kT.dtype), tl.trans(kT), dq, input_precision=PREC)
    return dq


@triton.jit
def attn_bwd_dq_kernel(Q, K, V, O, DO, DQ, LSE, DELTA, LST, LCNT,
                       sq_b, sq_t, sq_h, sk_b, sk_t, sk_h, sv_b, sv_t, sv_h,
                       so_b, so_t, so_h, sdo_b, sdo_t, sdo_h, sdq_b, sdq_t, sdq_h,
                       H, T, NQB, WINDOW, BS, qk_scale, sm_scale, S,
                       HAS_BLOCKS: tl.constexpr, S_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, DK: tl.constexpr, DV: tl.constexpr,
                       PREC: tl.constexpr, HEADS_INNER: tl.constexpr, GROUP: tl.constexpr,
                       LIST_MEM: tl.constexpr, FUSE_DELTA: tl.constexpr, WIDE: tl.constexpr):
    """dQ of one query tile. FUSE_DELTA: this kernel runs first and computes the row
    correction delta = rowsum(O * dO) itself (it holds dO anyway; O costs one tile load) and
    stores it for the dK/dV kernel that follows, instead of a separate pre-pass over O and dO."""
    n_tiles = tl.cdiv(T, BLOCK_M)
    tile, bh = _tile_and_head(n_tiles, HEADS_INNER, GROUP)
    pid_m = n_tiles - 1 - tile
    b = (bh // H).to(tl.int64)  # 64-bit base offsets: B * T * H * D may pass 2**31
    h = (bh % H).to(tl.int64)
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_dk = tl.arange(0, DK)
    offs_dv = tl.arange(0, DV)
    row_ok = rows < T
    q = tl.load(Q + b * sq_b + h * sq_h + rows[:, None] * sq_t + offs_dk[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + rows[:, None] * sdo_t + offs_dv[None, :],
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + bh * T + rows, mask=row_ok, other=0.0)
    if FUSE_DELTA:
        o = tl.load(O + b * so_b + h * so_h + rows[:, None] * so_t + offs_dv[None, :],
                    mask=row_ok[:, None], other=0.0)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), axis=1)
        tl.store(DELTA + bh * T + rows, delta, mask=row_ok)
    else:
        delta = tl.load(DELTA + bh * T + rows, mask=row_ok, other=0.0)
    k_base = K + b * sk_b + h * sk_h
    v_base = V + b * sv_b + h * sv_h
    dq = tl.zeros([BLOCK_M, DK], dtype=tl.float32)

    lo, full_lo, full_hi, hi = _key_ranges(m0, T, WINDOW, BS, BLOCK_M, BLOCK_N, HAS_BLOCKS)
    lst = 0
    if HAS_BLOCKS:
        lst_base = LST + (bh * NQB + m0 // BS) * S
        offs_s = tl.arange(0, S_PAD)
        lst = tl.load(lst_base + offs_s, mask=offs_s < S, other=-1)
        count = tl.load(LCNT + bh * NQB + m0 // BS)
        n_near, per_block = _near_split(lst, lo, BS, BLOCK_N)
        for slot in range(0, n_near):
            start = tl.load(lst_base + slot) * BS
            for n0 in range(start, tl.minimum(start + BS, lo), BLOCK_N):
                dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, n0, rows, offs_n, offs_dk,
                              offs_dv, sk_t, sv_t, T, WINDOW, BS, lst, qk_scale, False,
                              HAS_BLOCKS, PREC)
        shift = _log2_int(per_block)
        for t in range(0, (count - n_near) * per_block):
            n0 = _tile_start(lst, offs_s, lst_base, n_near, t, BS, shift, BLOCK_N, LIST_MEM)
            dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, n0, rows, offs_n, offs_dk,
                          offs_dv, sk_t, sv_t, T, WINDOW, BS, lst, qk_scale, False,
                          HAS_BLOCKS, PREC)
    for n0 in range(lo, full_lo, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, n0, rows, offs_n, offs_dk, offs_dv,
                      sk_t, sv_t, T, WINDOW, BS, lst, qk_scale, 1 + 2 * WIDE, HAS_BLOCKS, PREC)
    for n0 in range(full_lo, full_hi, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, n0, rows, offs_n, offs_dk, offs_dv,
                      sk_t, sv_t, T, WINDOW, BS, lst, qk_scale, False, HAS_BLOCKS, PREC)
    for n0 in range(full_hi, hi, BLOCK_N):
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, n0, rows, offs_n, offs_dk, offs_dv,
                      sk_t, sv_t, T, WINDOW, BS, lst, qk_scale, 2 + 2 * WIDE, HAS_BLOCKS, PREC)

    dq = dq * sm_scale
    tl.store(DQ + b * sdq_b + h * sdq_h + rows[:, None] * sdq_t + offs_dk[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])
