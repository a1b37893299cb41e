"""Chunkwise-parallel PyTorch backend for the linear family and the delta rule (the CPU path).

The sequence is cut into chunks of C steps. Everything inside a chunk is computed for all
chunks at once with batched matmuls; only the [K, V] state is carried across chunks in a
short Python loop (T / C steps of a few small matmuls).

Gates are log-decays (g <= 0). Within a chunk they are summed cumulatively (G_i), and a decay
is only exponentiated where that cannot overflow: differences that are <= 0 (exp(G_i - G_j) for
j <= i, exp(G_i), exp(G_last - G_j)), or G - r of either sign about a midpoint r where G spreads
little (FACTORISED_SPREAD, BLOCK_SPREAD). So a decay of -20 per step underflows towards 0
(float32 decays are floored at exp(-28), see FLOAT32_LOG_DECAY_FLOOR) instead of producing
inf * 0 = NaN, in the forward and in the backward. Causal masks are applied to the exponent
(-inf) before exp, or zero a product that is finite (tril, or a decay of exactly 0 between
blocks), so the backward of the masked entries is 0, not NaN.

Inputs arrive already normalised by ops.py: g is None, [B, T, H] or [B, T, H, K]; here a scalar
gate is carried as [..., C, 1], a per-channel gate broadcast over the K channels.
bf16 / fp16 inputs are computed in float32; float64 stays float64. The output has the input
dtype; the final state is returned in the compute dtype (float32 for half inputs), because a
decode cache kept in half precision drifts.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .reference import compute_dtype

CONFIG_SPACE = {"linear_attention": {}, "delta_rule": {}}

# A block of steps whose cumulative log-gate G spreads (max - min, per channel) by at most this
# much is factorised about its midpoint r: e^(G_i - G_j) = e^(G_i - r) e^(r - G_j), so its scores
# are one matmul, (q e^(G - r)) (k e^(r - G))ᵀ. Both factors lie in [e^(-s/2), e^(s/2)]: normal
# floats (no subnormal slowdown, no factor underflowing while its partner is large, so every
# product keeps full relative precision), and even the masked-out products (j > i, at most
# e^s |q| |k| before masking) stay far from overflow.
# float32: e^30 ~ 1e13, e^60 ~ 1e26 (max ~ e^88); float64: e^300 ~ 1e130 (max ~ e^709).
FACTORISED_SPREAD = {torch.float32: 60.0, torch.float64: 600.0}

# A scalar gate whose chunk spreads more than that is cut into blocks, each factorised about its
# own midpoint r_a and joined by one decay per pair of blocks (see _scalar_gate_factors):
#     e^(G_i - G_j) = e^(G_i - r_a) e^(r_a - r_b) e^(r_b - G_j),   i in block a >= b, j in block b.
# Blocks spread by at most this much, so the outer factors multiply to at most e^s; the middle
# one (<= 1) is floored in float32 at e^(FLOAT32_LOG_DECAY_FLOOR - s) = e^-56: a floored term
# stays below e^-28 (as everywhere here) and every product above e^-84, clear of float32
# subnormals (< e^-87). float64: not floored (exact); the outer factors stay within e^±150.
BLOCK_SPREAD = {torch.float32: 28.0, torch.float64: 300.0}


def _to_chunks(x: torch.Tensor, C: int, cumulative: bool = False) -> torch.Tensor:
    """[B, T, H, ...] -> contiguous [B, H, N, C, ...], zero-padding T up to a multiple of C;
    cumulative: summed over the steps of each chunk (a gate's G).

    Zero padding is harmless for every op here: a padded step has k = 0, v = 0, beta = 0 (it
    writes nothing into the state) and g = 0 (it does not decay the state).
    Contiguous because every later op (elementwise and matmul alike) reads it: a transposed view
    costs a strided copy in each of them, forward and backward.
    """
    B, T, H = x.shape[:3]
    N = -(-T // C)
    if N * C != T:
        pad = [0, 0] * (x.dim() - 2) + [0, N * C - T]
        x = F.pad(x, pad)
    x = x.reshape(B, N, C, H, *x.shape[3:])
    if cumulative:  # here, where the summed dim is outer to contiguous [H, ...] rows
        x = x.cumsum(dim=2)
    return x.transpose(1, 3).transpose(2, 3).contiguous()  # [B, H, N, C, ...]


def _from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    """[B, H, N, C, V] -> [B, T, H, V]."""
    B, H, N, C, V = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]


def _causal(C: int, device) -> torch.Tensor:
    """Lower-triangular bool mask (read-only: shared between calls)."""
    return _causal_cached(C, torch.device(device))


@functools.lru_cache(maxsize=64)
def _causal_cached(C: int, device: torch.device) -> torch.Tensor:
    # Cached because tril on a tiny matrix can cost milliseconds on a busy machine (it opens a
    # parallel region), which dominated small calls.
    return torch.ones(C, C, dtype=torch.bool, device=device).tril()


# float32 decays are floored at exp(-28) ~ 7e-13 before use: a float32 sum of O(1) terms cannot
# see the difference, but products of up to three decays then stay clear of subnormal floats,
# whose arithmetic is ~20x slower on x86 (measured: exp over [-200, 0] took 1.35 s vs 30-60 ms
# for 4.2M values). float64 is left exact (it is the reference precision).
FLOAT32_LOG_DECAY_FLOOR = -28.0


def _floored(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(min=FLOAT32_LOG_DECAY_FLOOR) if x.dtype == torch.float32 else x


def _decay(log_decay: torch.Tensor) -> torch.Tensor:
    """exp of a log-decay that is <= 0 by construction."""
    return _floored(log_decay).exp()


def _spread_fits(G: torch.Tensor, w: int, limit: float) -> bool:
    """Whether G spreads by at most limit within every block of w steps (every chunk, head and
    channel). g <= 0, so a block's spread is its first G minus its last."""
    blocks = G.detach().unflatten(-2, (-1, w))
    return bool((blocks[..., 0, :] - blocks[..., -1, :] <= limit).all())


def _leaf_block(G: torch.Tensor, limit: float | None = None) -> int:
    """Largest block of steps (the chunk, halved as often as needed) in which G spreads by at most
    limit (FACTORISED_SPREAD by default). One size for the whole call: a few strongly decaying
    channels cost one more halving level for all, not a second code path.
    G: [..., C, K], C a power of two (ops checks chunk_size)."""
    limit = FACTORISED_SPREAD[G.dtype] if limit is None else limit
    w = G.shape[-2]
    while w > 1 and not _spread_fits(G, w, limit):
        w //= 2
    return w


def _centred(G: torch.Tensor) -> torch.Tensor:
    """G minus the midpoint r of its range over the steps (dim -2; g <= 0: its first and last).
    r is detached: a product e^(G_i - r) e^(r - G_j) does not depend on it, nor does its gradient."""
    return G - (G[..., :1, :] + G[..., -1:, :]).detach() / 2


def _leaf_outputs(q, k, v, G, w: int) -> torch.Tensor:
    """Causal output within blocks of w steps: sum_{j<=i} (q_i e^(G_i - G_j) · k_j) v_j, factorised
    about each block's midpoint r (safe by _leaf_block's choice of w). [..., C, K|V] -> [..., C, V]."""
    qb, kb, vb, Gb = (x.unflatten(-2, (-1, w)) for x in (q, k, v, G))
    rel = _centred(Gb)
    scores = (qb * rel.exp()) @ (kb * (-rel).exp()).transpose(-1, -2)   # [..., C / w, w, w]
    # tril zeroes, it does not multiply: the masked entries may be large, their gradient is exactly 0
    return (scores.tril() @ vb).flatten(-3, -2)


def _add_first_halves(o, q, k, v, G, w: int) -> torch.Tensor:
    """Adds, within each block of 2w steps, what its first half contributes to its second half.
    Split at the last step b of the first half, e^(G_i - G_j) = e^(G_i - G_b) e^(G_b - G_j): both
    exponents <= 0, so each factor is <= 1 and at least as large as the product (a term that
    matters has no tiny factor). The first half enters as a [K, V] state, as between chunks."""
    # unbind, not indexing: its backward is one stack, where each select would zero a full gradient
    (_, q2), (k1, _), (v1, _), (G1, G2), (o1, o2) = (x.unflatten(-2, (-1, 2, w)).unbind(-3)
                                                     for x in (q, k, v, G, o))
    G_b = G1[..., -1:, :]                                               # [..., C / 2w, 1, K]
    added = (q2 * _decay(G2 - G_b)) @ ((k1 * _decay(G_b - G1)).transpose(-1, -2) @ v1)
    return torch.stack([o1, o2 + added], dim=-3).flatten(-4, -2)


def _intra_chunk(q, k, v, G):
    """o_i = sum_{j<=i} (sum_c q_ic k_jc e^(G_ic - G_jc)) v_j within each chunk. q, k: [..., C, K],
    v: [..., C, V], G: [..., C, K] per channel or None (no gate).

    Blocks whose G spreads little (the whole chunk, for the usual gates) are factorised about
    their midpoint; the chunk is halved until its blocks are such blocks (down to single steps,
    spread 0), and each halving level adds first half -> second half with factors <= 1. Nothing
    of size [C, C, K] (a decay per channel and pair of steps) is ever formed.
    """
    if G is None:
        return (q @ k.transpose(-1, -2)).tril() @ v
    C, w = q.shape[-2], _leaf_block(G)
    o = _leaf_outputs(q, k, v, G, w)
    while w < C:
        o = _add_first_halves(o, q, k, v, G, w)
        w *= 2
    return o


def _scalar_gate_factors(G: torch.Tensor):
    """(ρ, κ, E) with e^(G_i - G_j) = ρ_i E_ab κ_j (i in block a, j in block b <= a) for a scalar
    gate G [..., C, 1]: ρ = e^(G - r), κ = e^(r - G) about each block's midpoint r, and
    E_ab = e^(r_a - r_b) for a >= b, 0 above ([..., m, m]; None when the chunk is one block).

    The chunk is one block where it spreads by at most FACTORISED_SPREAD, else blocks spread by at
    most BLOCK_SPREAD (down to single steps, spread 0: always possible). r is detached and so E
    is a constant: the products do not depend on r, nor do their gradients.
    """
    C = G.shape[-2]
    w = C if _spread_fits(G, C, FACTORISED_SPREAD[G.dtype]) else _leaf_block(G, BLOCK_SPREAD[G.dtype])
    blocks = G.unflatten(-2, (-1, w))                                    # [..., m, w, 1]
    r = (blocks[..., :1, :] + blocks[..., -1:, :]).detach() / 2          # [..., m, 1, 1]
    rel = (blocks - r).flatten(-3, -2)                                   # [..., C, 1]
    if w == C:
        return rel.exp(), (-rel).exp(), None
    r = r.flatten(-3, -2)                                                # [..., m, 1]
    between = r - r.transpose(-1, -2)                                    # r_a - r_b, <= 0 for a >= b
    if G.dtype == torch.float32:
        between = between.clamp(min=FLOAT32_LOG_DECAY_FLOOR - BLOCK_SPREAD[G.dtype])
    E = between.masked_fill(~_causal(C // w, G.device), float("-inf")).exp()
    return rel.exp(), (-rel).exp(), E


def _decayed_scores(x, k, factors) -> torch.Tensor:
    """sum_c x_ic k_jc e^(G_i - G_j), [..., C, C], for a scalar gate given as _scalar_gate_factors.
    Exact for j <= i; above the diagonal finite (the outer factors are bounded) but meaningless:
    callers zero it (tril) or never read it (the unitriangular solve)."""
    rho, kappa, E = factors
    scores = (x * rho) @ (k * kappa).transpose(-1, -2)
    if E is None:
        return scores
    m = E.shape[-1]
    blocks = scores.unflatten(-1, (m, -1)).unflatten(-3, (m, -1))        # [..., m(a), w, m(b), w]
    return (blocks * E[..., :, None, :, None]).flatten(-2).flatten(-3, -2)


def _decayed_for_state(qc, kc, G):
    """Queries decayed from their chunk's start, keys decayed to its end, and the chunk's total
    decay ([B, H, N, K or 1, 1], None without a gate): what the recurrence over chunks needs."""
    if G is None:
        return qc, kc, None
    G_last = G[..., -1:, :]
    return qc * _decay(G), kc * _decay(G_last - G), _decay(G_last).transpose(-1, -2)


def _chunked_gate(g, C: int, dtype):
    """Cumulative log-gate per chunk: [B, H, N, C, K] per channel, [B, H, N, C, 1] scalar."""
    if g is None:
        return None
    return _to_chunks((g if g.dim() == 4 else g.unsqueeze(-1)).to(dtype), C, cumulative=True)


def linear_attention_chunked(q, k, v, g, *, scale, chunk_size, initial_state, output_final_state, config):
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    dtype = compute_dtype(q.dtype)
    scale = K ** -0.5 if scale is None else scale
    chunk = lambda x: _to_chunks(x, C)  # noqa: E731
    qc = chunk(q.to(dtype)) * scale
    kc, vc = chunk(k.to(dtype)), chunk(v.to(dtype))                      # [B, H, N, C, K|V]
    N = qc.shape[2]
    G = _chunked_gate(g, C, dtype)                                       # [B, H, N, C, K|1]
    if G is not None and g.dim() == 3:  # scalar gate
        o = _decayed_scores(qc, kc, _scalar_gate_factors(G)).tril() @ vc
    else:
        o = _intra_chunk(qc, kc, vc, G)                                  # [B, H, N, C, V]
    if N == 1 and initial_state is None and not output_final_state:
        return _from_chunks(o, T).to(q.dtype), None  # one chunk from a zero state: nothing to add

    # What each chunk adds to the state, then the short recurrence over chunks.
    q_in, k_out, chunk_decay = _decayed_for_state(qc, kc, G)
    added = k_out.transpose(-1, -2) @ vc                                 # [B, H, N, K, V]
    S = (torch.zeros(B, H, K, V, dtype=dtype, device=q.device) if initial_state is None
         else initial_state.to(dtype))
    # unbind (not added[:, :, n]): its backward is one stack, where N selects would each
    # allocate and zero a full-size gradient.
    decays = [None] * N if chunk_decay is None else chunk_decay.unbind(2)
    states_before = []
    for added_n, decay_n in zip(added.unbind(2), decays):
        states_before.append(S)
        S = (S if decay_n is None else decay_n * S) + added_n
    o = o + q_in @ torch.stack(states_before, dim=2)
    out = _from_chunks(o, T).to(q.dtype)
    return out, (S if output_final_state else None)


def delta_rule_chunked(q, k, v, beta, g, *, scale, chunk_size, initial_state, output_final_state, config):
    """Delta rule in the WY / UT form.

    Within a chunk starting from state S0 (G: cumulative log-gate, Γ = exp(G)), the state is
    S_t = Γ_t S0 + sum_{j<=t} exp(G_t - G_j) k_j w_jᵀ with pseudo-values
    w_t = β_t (v_t - Γ_t S0ᵀ k_t - sum_{j<t} exp(G_t - G_j) (k_t·k_j) w_j), i.e.
    (I + L) W = diag(β) V - diag(β Γ) K S0 with L strictly lower triangular. Solving the
    triangular system once per chunk (batched over all chunks) gives W = U - Wk S0, so the loop
    over chunks only does W_n = U_n - Wk_n S and S <- Γ_C S + (decayed K_n)ᵀ W_n.

    With a gate, L and the scores are each one matmul of decayed keys / queries, times a
    block-constant decay where the chunk spreads too much (_scalar_gate_factors).
    """
    B, T, H, K = q.shape
    V = v.shape[-1]
    C = chunk_size
    dtype = compute_dtype(q.dtype)
    scale = K ** -0.5 if scale is None else scale
    chunk = lambda x: _to_chunks(x, C)  # noqa: E731
    qc = chunk(q.to(dtype)) * scale
    kc, vc = chunk(k.to(dtype)), chunk(v.to(dtype))                      # [B, H, N, C, K|V]
    bc = chunk(beta.to(dtype)).unsqueeze(-1)                             # [B, H, N, C, 1]
    N = qc.shape[2]
    G = _chunked_gate(g, C, dtype)                                       # [B, H, N, C, 1]

    # L is passed unmasked: the unitriangular solve reads (and differentiates) only its strict
    # lower triangle.
    if G is None:
        L, scores = (bc * kc) @ kc.transpose(-1, -2), (qc @ kc.transpose(-1, -2)).tril()
    else:
        factors = _scalar_gate_factors(G)
        L, scores = _decayed_scores(bc * kc, kc, factors), _decayed_scores(qc, kc, factors).tril()
    solve = functools.partial(torch.linalg.solve_triangular, L, upper=False, unitriangular=True)
    if N == 1 and initial_state is None and not output_final_state:
        # one chunk from a zero state: W = U, and nothing else to add
        return _from_chunks(scores @ solve(bc * vc), T).to(q.dtype), None

    q_in, k_out, chunk_decay = _decayed_for_state(qc, kc, G)
    rhs_k = bc * kc if G is None else bc * _decay(G) * kc
    solved = solve(torch.cat([bc * vc, rhs_k], dim=-1))
    U, Wk = solved[..., :V], solved[..., V:]                             # [B, H, N, C, V|K]

    S = (torch.zeros(B, H, K, V, dtype=dtype, device=q.device) if initial_state is None
         else initial_state.to(dtype))
    decays = [None] * N if chunk_decay is None else chunk_decay.unbind(2)
    states_before, pseudo_values = [], []
    for U_n, Wk_n, k_n, decay_n in zip(U.unbind(2), Wk.unbind(2), k_out.transpose(-1, -2).unbind(2), decays):
        states_before.append(S)
        W = U_n - Wk_n @ S
        pseudo_values.append(W)
        S = (S if decay_n is None else decay_n * S) + k_n @ W
    o = q_in @ torch.stack(states_before, dim=2) + scores @ torch.stack(pseudo_values, dim=2)
    out = _from_chunks(o, T).to(q.dtype)
    return out, (S if output_final_state else None)
