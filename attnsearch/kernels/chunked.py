"""Chunkwise-parallel PyTorch backend for the linear family and the delta rule (the CPU path).

The sequence is cut into chunks of C steps. Everything inside a chunk is computed for all
chunks at once with batched matmuls; only the [K, V] state is carried across chunks in a
short Python loop (T / C steps of a few small matmuls).

Gates are log-decays (g <= 0). Within a chunk they are summed cumulatively (G_i), and only
differences that are <= 0 are ever exponentiated: exp(G_i - G_j) for j <= i, exp(G_i) and
exp(G_last - G_j). So a decay of -20 per step underflows towards 0 (float32 decays are floored
at exp(-28), see FLOAT32_LOG_DECAY_FLOOR) instead of producing inf * 0 = NaN, in the forward and
in the backward. Causal masks are applied to the exponent (-inf) before exp, never to exp's
result, so the backward of the masked entries is 0, not NaN.

Inputs arrive already normalised by ops.py: g is None, [B, T, H] or [B, T, H, K].
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

# Per-channel (GLA) gates need exp(G_i - G_j) per channel; within sub-chunks of this many steps
# it is formed explicitly ([c, c, K] per sub-chunk), between sub-chunks it factorises safely.
# The explicit part costs ~ 4 passes over T * c * K, the factorised part ~ 2 over T * (C / c) * K;
# c = 8 keeps both small at the usual C = 32..64 (chosen from that count: CPU timings on the
# shared development machine were too noisy to separate 4 from 8; 16 was clearly slower).
SUB_CHUNK = 8


def _to_chunks(x: torch.Tensor, C: int) -> torch.Tensor:
    """[B, T, H, ...] -> [B, H, N, C, ...], zero-padding T up to a multiple of C.

    Zero padding is harmless for every op here: a padded step has k = 0, v = 0, beta = 0 (it
    writes nothing into the state) and g = 0 (it does not decay the state).
    """
    B, T, H = x.shape[:3]
    N = -(-T // C)
    if N * C != T:
        pad = [0, 0] * (x.dim() - 2) + [0, N * C - T]
        x = F.pad(x, pad)
    x = x.reshape(B, N, C, H, *x.shape[3:])
    return x.transpose(1, 3).transpose(2, 3)  # [B, H, N, C, ...]


def _from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    """[B, H, N, C, V] -> [B, T, H, V]."""
    B, H, N, C, V = x.shape
    return x.permute(0, 2, 3, 1, 4).reshape(B, N * C, H, V)[:, :T]


def _causal(C: int, device, strict: bool = False) -> torch.Tensor:
    """Lower-triangular bool mask (read-only: shared between calls)."""
    return _causal_cached(C, torch.device(device), strict)


@functools.lru_cache(maxsize=64)
def _causal_cached(C: int, device: torch.device, strict: bool) -> torch.Tensor:
    # Cached because tril on a tiny matrix can cost milliseconds on a busy machine (it opens a
    # parallel region), which dominated small calls.
    return torch.ones(C, C, dtype=torch.bool, device=device).tril(-1 if strict else 0)


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


def _masked_decay(log_decay: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """exp where keep, exactly 0 elsewhere (masked before exp: overflow there never reaches autograd)."""
    return _floored(log_decay).masked_fill(~keep, float("-inf")).exp()


def _pairwise_decay(G: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """exp(G_i - G_j) for j <= i (j < i when strict), 0 elsewhere. G: [..., C] -> [..., C, C]."""
    C = G.shape[-1]
    return _masked_decay(G.unsqueeze(-1) - G.unsqueeze(-2), _causal(C, G.device, strict))


def _intra_scores_channel_gate(q, k, G):
    """A[i, j] = sum_c q_ic k_jc exp(G_ic - G_jc) for j <= i, per chunk. q, k, G: [B, H, N, C, K].

    The chunk is cut into sub-chunks of c steps. For i in sub-chunk a and j in an earlier
    sub-chunk b, the decay splits into three factors, each an exp of a difference <= 0:
        exp(G_i - P_{a-1}) * exp(P_{a-1} - P_b) * exp(P_b - G_j),   P_s = G at the end of sub-chunk s
    so nothing overflows, and a term that matters (product not tiny) has no tiny factor.
    Inside a sub-chunk the [c, c, K] tensor of differences is formed explicitly.
    """
    B, H, N, C, K = q.shape
    c = min(SUB_CHUNK, C)
    m = C // c
    qs, ks, Gs = (x.reshape(B, H, N, m, c, K) for x in (q, k, G))

    # Diagonal sub-chunks: explicit per-channel decays. Not floored: this is the largest tensor
    # (T * c * K) and spans only c steps, so it reaches subnormals only for g < -11 per step.
    diff = Gs.unsqueeze(-2) - Gs.unsqueeze(-3)                          # [..., m, c(i), c(j), K]
    diff = diff.masked_fill(~_causal(c, q.device).unsqueeze(-1), float("-inf"))
    decayed_k = ks.unsqueeze(-3) * diff.exp()                          # [..., m, c(i), c(j), K]
    diag = (decayed_k @ qs.unsqueeze(-1)).squeeze(-1)                   # [B, H, N, m, c, c]
    if m == 1:
        return diag.reshape(B, H, N, C, C)

    # Off-diagonal sub-chunks (query sub-chunk a > key sub-chunk b).
    P = Gs[..., -1, :]                                                   # [B, H, N, m, K]
    P_before = F.pad(P[..., :-1, :], (0, 0, 1, 0))                       # G just before sub-chunk a (0 for a = 0)
    q_hat = qs * _decay(Gs - P_before.unsqueeze(-2))
    k_hat = ks * _decay(P.unsqueeze(-2) - Gs)
    between = _masked_decay(P_before.unsqueeze(4) - P.unsqueeze(3),     # [B, H, N, m(a), m(b), K]
                            _causal(m, q.device, strict=True).unsqueeze(-1))
    q_between = q_hat.unsqueeze(4) * between.unsqueeze(-2)              # [B, H, N, m(a), m(b), c, K]
    full = torch.einsum("bhnaxik,bhnxjk->bhnaixj", q_between, k_hat)     # [B, H, N, a, c, b, c]
    full.diagonal(dim1=3, dim2=5).copy_(diag.permute(0, 1, 2, 4, 5, 3))  # a == b blocks (were 0)
    return full.reshape(B, H, N, C, C)


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
    G = None if g is None else chunk(g.to(dtype)).cumsum(dim=3)          # [B,H,N,C] or [B,H,N,C,K]

    # Intra-chunk scores, and the decayed queries / keys for the inter-chunk terms.
    if G is None:
        scores = (qc @ kc.transpose(-1, -2)).masked_fill(~_causal(C, q.device), 0.0)
        q_in, k_out, chunk_decay = qc, kc, None
    elif G.dim() == 4:  # scalar gate per step and head
        scores = (qc @ kc.transpose(-1, -2)) * _pairwise_decay(G)
        G_last = G[..., -1:]
        q_in = qc * _decay(G).unsqueeze(-1)
        k_out = kc * _decay(G_last - G).unsqueeze(-1)
        chunk_decay = _decay(G_last).unsqueeze(-1)                       # [B, H, N, 1, 1]
    else:  # per-channel gate
        scores = _intra_scores_channel_gate(qc, kc, G)
        G_last = G[..., -1:, :]
        q_in = qc * _decay(G)
        k_out = kc * _decay(G_last - G)
        chunk_decay = _decay(G_last).transpose(-1, -2)                   # [B, H, N, K, 1]
    o = scores @ vc                                                      # [B, H, N, C, V]

    # What each chunk adds to the state, then the short recurrence over chunks.
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

    kk = kc @ kc.transpose(-1, -2)                                       # [B, H, N, C, C]
    qk = qc @ kc.transpose(-1, -2)
    if g is None:
        L = (bc * kk).masked_fill(~_causal(C, q.device, strict=True), 0.0)
        scores = qk.masked_fill(~_causal(C, q.device), 0.0)
        rhs_k, q_in, k_out, chunk_decay = bc * kc, qc, kc, None
    else:
        G = chunk(g.to(dtype)).cumsum(dim=3)                             # [B, H, N, C]
        gamma = _decay(G).unsqueeze(-1)
        G_last = G[..., -1:]
        L = bc * kk * _pairwise_decay(G, strict=True)
        scores = qk * _pairwise_decay(G)
        rhs_k, q_in = bc * gamma * kc, qc * gamma
        k_out = kc * _decay(G_last - G).unsqueeze(-1)
        chunk_decay = _decay(G_last).unsqueeze(-1)                       # [B, H, N, 1, 1]

    eye = torch.eye(C, dtype=dtype, device=q.device)
    solved = torch.linalg.solve_triangular(eye + L, torch.cat([bc * vc, rhs_k], dim=-1),
                                           upper=False, unitriangular=True)
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
