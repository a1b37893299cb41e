"""Naive references for the kernel ops: the definitions every fast path is tested against.

They follow DESIGN.md's contract literally (quadratic masked softmax, token-by-token
recurrences) and work in whatever dtype they are given, so tests run them in float64.
"""
from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the PyTorch paths: float64 stays exact, everything else runs in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def visibility_mask(T: int, window=None, block_indices=None, block_size: int = 64,
                    device=None) -> torch.Tensor:
    """Boolean [B or 1, H or 1, T, T] mask: entry (i, j) says whether key j is visible to query i."""
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    causal = j <= i
    if window is None and block_indices is None:
        return causal[None, None]
    visible = torch.zeros(T, T, dtype=torch.bool, device=device)[None, None]
    if window is not None:
        visible = visible | ((i - j) < window)[None, None]
    if block_indices is not None:
        B, H, NB, S = block_indices.shape
        qblock = (torch.arange(T, device=device) // block_size)            # [T]
        kblock = qblock                                                      # same grid
        own = (qblock[:, None] == kblock[None, :])[None, None]             # [1,1,T,T]
        # listed[b,h,qb,kb] = kb is listed for query block qb
        listed = torch.zeros(B, H, NB, NB + 1, dtype=torch.bool, device=device)
        idx = block_indices.clone().long()
        idx[idx < 0] = NB  # park unused slots in a dummy column
        listed.scatter_(3, idx.clamp(max=NB), True)
        listed = listed[..., :NB]
        per_token = listed[:, :, qblock][:, :, :, kblock]                    # [B,H,T,T]
        visible = visible | own | per_token
    return visible & causal[None, None]


def softmax_attention_ref(q, k, v, window=None, block_indices=None, block_size=64, scale=None):
    B, T, H, K = q.shape
    scale = K ** -0.5 if scale is None else scale
    scores = torch.einsum("bihk,bjhk->bhij", q, k) * scale
    mask = visibility_mask(T, window, block_indices, block_size, device=q.device)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhij,bjhv->bihv", probs, v)


def _expand_gate(g, B, T, H, K, dtype, device):
    """Any accepted gate shape -> per-channel log-decay [B, T, H, K] (zeros when g is None)."""
    if g is None:
        return torch.zeros(B, T, H, K, dtype=dtype, device=device)
    if g.dim() == 1:
        return g.to(dtype).view(1, 1, H, 1).expand(B, T, H, K)
    if g.dim() == 3:
        return g.to(dtype).unsqueeze(-1).expand(B, T, H, K)
    return g.to(dtype)


def linear_attention_ref(q, k, v, g=None, scale=None, initial_state=None, output_final_state=False):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    gate = _expand_gate(g, B, T, H, K, q.dtype, q.device)
    S = (torch.zeros(B, H, K, V, dtype=q.dtype, device=q.device) if initial_state is None
         else initial_state.to(q.dtype))
    outs = []
    # Steps come from unbind(1), not x[:, t]: the backward of T selects would allocate T
    # full-size zero gradients (quadratic in T); unbind's backward is one stack.
    for q_t, k_t, v_t, g_t in zip(q.unbind(1), k.unbind(1), v.unbind(1), gate.unbind(1)):
        S = torch.exp(g_t).unsqueeze(-1) * S + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, q_t))
    o = torch.stack(outs, dim=1)
    return o, (S if output_final_state else None)


def delta_rule_ref(q, k, v, beta, g=None, scale=None, initial_state=None, output_final_state=False):
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else scale
    if g is None:
        alpha = torch.ones(B, T, H, dtype=q.dtype, device=q.device)
    elif g.dim() == 1:
        alpha = torch.exp(g.to(q.dtype)).view(1, 1, H).expand(B, T, H)
    else:
        alpha = torch.exp(g.to(q.dtype))
    S = (torch.zeros(B, H, K, V, dtype=q.dtype, device=q.device) if initial_state is None
         else initial_state.to(q.dtype))
    outs = []
    steps = zip(q.unbind(1), k.unbind(1), v.unbind(1), beta.unbind(1), alpha.unbind(1))
    for qt, kt, vt, bt, at in steps:
        S = at[:, :, None, None] * S
        predicted = torch.einsum("bhkv,bhk->bhv", S, kt)
        S = S + kt.unsqueeze(-1) * (bt[:, :, None] * (vt - predicted)).unsqueeze(-2)
        outs.append(scale * torch.einsum("bhkv,bhk->bhv", S, qt))
    o = torch.stack(outs, dim=1)
    return o, (S if output_final_state else None)
