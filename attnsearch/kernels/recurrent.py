"""One decoding step of the linear family and the delta rule, from a recurrent state.

Same recurrences as the ops (DESIGN.md), one token at a time, for the models' decode cache:
  linear:  S' = diag(exp(g)) S + k vᵀ,                   o = scale * S'ᵀ q
  delta:   S' = a S + beta k (v - a Sᵀ k)ᵀ, a = exp(g),  o = scale * S'ᵀ q
Shapes: q, k [B, H, K], v [B, H, V], state [B, H, K, V] (None = zeros), beta [B, H],
g None, [H] (fixed per head), [B, H] (scalar) or [B, H, K] (per channel; linear only).
Half inputs are computed in float32; o comes back in q's dtype, the new state in the state's
dtype (float32 when starting from None with half inputs, like the chunked ops' final state).
"""
from __future__ import annotations

import torch

from .reference import compute_dtype


def _check_step(q, k, v, state):
    if q.dim() != 3 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, H, K], got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.dim() != 3 or v.shape[:2] != q.shape[:2]:
        raise ValueError(f"v must be [B, H, V] matching q's [B, H], got {tuple(v.shape)}")
    B, H, K = q.shape
    expected = (B, H, K, v.shape[-1])
    if state is not None and tuple(state.shape) != expected:
        raise ValueError(f"state must be [B, H, K, V] = {expected}, got {tuple(state.shape)}")


def _log_decay(g, q, allow_vector: bool):
    """g -> log-decay broadcastable to [B, H, K, 1], or None."""
    if g is None:
        return None
    B, H, K = q.shape
    if g.dim() == 1 and g.shape[0] == H:
        return g.view(1, H, 1, 1)
    if g.dim() == 2 and tuple(g.shape) == (B, H):
        return g.view(B, H, 1, 1)
    if allow_vector and g.dim() == 3 and tuple(g.shape) == (B, H, K):
        return g.unsqueeze(-1)
    allowed = "[H], [B, H]" + (" or [B, H, K]" if allow_vector else "")
    raise ValueError(f"g must be None, {allowed} for q of shape {tuple(q.shape)}, got {tuple(g.shape)}")


def _start(q, v, state, dtype):
    if state is None:
        B, H, K = q.shape
        return torch.zeros(B, H, K, v.shape[-1], dtype=dtype, device=q.device), dtype
    return state.to(dtype), state.dtype


def linear_attention_step(q, k, v, g, state, scale=None):
    """-> (o [B, H, V], new_state [B, H, K, V])."""
    _check_step(q, k, v, state)
    dtype = compute_dtype(q.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    S, state_dtype = _start(q, v, state, dtype)
    decay = _log_decay(g, q, allow_vector=True)
    if decay is not None:
        S = decay.to(dtype).exp() * S
    S = S + k.to(dtype).unsqueeze(-1) * v.to(dtype).unsqueeze(-2)
    o = scale * torch.einsum("bhkv,bhk->bhv", S, q.to(dtype))
    return o.to(q.dtype), S.to(state_dtype)


def delta_rule_step(q, k, v, beta, g, state, scale=None):
    """-> (o [B, H, V], new_state [B, H, K, V])."""
    _check_step(q, k, v, state)
    if tuple(beta.shape) != tuple(q.shape[:2]):
        raise ValueError(f"beta must be [B, H] = {tuple(q.shape[:2])}, got {tuple(beta.shape)}")
    dtype = compute_dtype(q.dtype)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    S, state_dtype = _start(q, v, state, dtype)
    decay = _log_decay(g, q, allow_vector=False)
    if decay is not None:
        S = decay.to(dtype).exp() * S
    k_, v_ = k.to(dtype), v.to(dtype)
    predicted = torch.einsum("bhkv,bhk->bhv", S, k_)
    S = S + k_.unsqueeze(-1) * (beta.to(dtype).unsqueeze(-1) * (v_ - predicted)).unsqueeze(-2)
    o = scale * torch.einsum("bhkv,bhk->bhv", S, q.to(dtype))
    return o.to(q.dtype), S.to(state_dtype)
