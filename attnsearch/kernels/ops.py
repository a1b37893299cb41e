"""The public kernel ops (DESIGN.md contract): argument checks, then dispatch to a backend.

Backends live in their own modules and share one signature per op:
  torch  -> block_sparse.softmax_attention_torch, chunked.linear_attention_chunked,
            chunked.delta_rule_chunked
  triton -> triton_attention.softmax_attention_triton, triton_linear.linear_attention_triton,
            triton_linear.delta_rule_triton
Each backend module exposes CONFIG_SPACE / default_config / validate_config for its tunables
(see tunables.py); an invalid config raises ValueError before any work is done.
"""
from __future__ import annotations

import operator
import os

import torch

from . import tunables

BACKENDS = ("auto", "torch", "triton")
HEAD_DIMS_HINT = "K, V in {16, 32, 64, 128, 256}"


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve_backend(backend: str, tensor: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if tensor.is_cuda else "torch"
    if backend == "triton" and not tensor.is_cuda and not _interpreting():
        raise ValueError("backend='triton' needs CUDA tensors or TRITON_INTERPRET=1")
    return backend


def _is_int(x) -> bool:
    """Python or numpy integer (not bool, not float)."""
    if isinstance(x, bool):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def _check_qkv(q, k, v):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D: q, k [B, T, H, K] and v [B, T, H, V]")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] matching q's [B, T, H], got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[1] < 1:
        raise ValueError("sequence length T (dim 1 of q, k, v) must be >= 1")
    if q.dtype not in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported dtype {q.dtype}")


def _check_state(initial_state, q, v):
    if initial_state is None:
        return
    B, _, H, K = q.shape
    expected = (B, H, K, v.shape[-1])
    if tuple(initial_state.shape) != expected:
        raise ValueError(f"initial_state must be [B, H, K, V] = {expected}, got {tuple(initial_state.shape)}")


def _normalise_gate(g, q, allow_vector: bool):
    """Return g as None, [B, T, H] (scalar per head and step) or [B, T, H, K] (per channel)."""
    if g is None:
        return None
    B, T, H, K = q.shape
    if g.dim() == 1 and g.shape[0] == H:
        return g.view(1, 1, H).expand(B, T, H)
    if g.dim() == 3 and tuple(g.shape) == (B, T, H):
        return g
    if allow_vector and g.dim() == 4 and tuple(g.shape) == (B, T, H, K):
        return g
    allowed = "[H], [B, T, H]" + (" or [B, T, H, K]" if allow_vector else "")
    raise ValueError(f"g must be {allowed} for q of shape {tuple(q.shape)}, got {tuple(g.shape)}")


def softmax_attention(q, k, v, *, window=None, block_indices=None, block_size=64, scale=None,
                      backend="auto", config=None):
    """Causal softmax attention, optionally restricted to a window and/or listed key blocks."""
    _check_qkv(q, k, v)
    B, T, H, _ = q.shape
    if window is not None and (not _is_int(window) or window <= 0):
        raise ValueError(f"window must be a positive integer, got {window!r}")
    window = None if window is None else int(window)
    if not _is_int(block_size) or block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two >= 16, got {block_size!r}")
    if block_indices is not None:
        nb = -(-T // block_size)
        if block_indices.dim() != 4 or tuple(block_indices.shape[:3]) != (B, H, nb):
            raise ValueError(f"block_indices must be [B, H, ceil(T / block_size), S] = [{B}, {H}, {nb}, S], "
                             f"got {tuple(block_indices.shape)}")
        if block_indices.dtype not in (torch.int64, torch.int32):
            raise ValueError("block_indices must be an integer tensor (-1 marks an unused slot)")
    be = resolve_backend(backend, q)
    config = tunables.validate("softmax_attention", be, config)
    if be == "torch":
        from .block_sparse import softmax_attention_torch as impl
    else:
        from .triton_attention import softmax_attention_triton as impl
    return impl(q, k, v, window=window, block_indices=block_indices, block_size=block_size,
                scale=scale, config=config)


def _check_chunk(chunk_size):
    if not _is_int(chunk_size) or chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size!r}")


def linear_attention(q, k, v, g=None, *, scale=None, chunk_size=64, initial_state=None,
                     output_final_state=False, backend="auto", config=None):
    """S_t = diag(exp(g_t)) S_{t-1} + k_t v_t^T,  o_t = scale * S_t^T q_t."""
    _check_qkv(q, k, v)
    _check_state(initial_state, q, v)
    _check_chunk(chunk_size)
    be = resolve_backend(backend, q)
    # a fixed per-head decay that needs no gradient (RetNet's) stays [H] for the triton kernels, which
    # form its cumulative decay from the row index; otherwise [H] is expanded and autograd sums dg over it
    fixed = (be == "triton" and g is not None and g.dim() == 1 and g.shape[0] == q.shape[2]
             and not (g.requires_grad and torch.is_grad_enabled()))
    g = g if fixed else _normalise_gate(g, q, allow_vector=True)
    config = tunables.validate("linear_attention", be, config, chunk_size=chunk_size)
    if be == "torch":
        from .chunked import linear_attention_chunked as impl
    else:
        from .triton_linear import linear_attention_triton as impl
    return impl(q, k, v, g, scale=scale, chunk_size=chunk_size, initial_state=initial_state,
                output_final_state=output_final_state, config=config)


def delta_rule(q, k, v, beta, g=None, *, scale=None, chunk_size=64, initial_state=None,
               output_final_state=False, backend="auto", config=None):
    """S_t = a_t S_{t-1} + b_t k_t (v_t - a_t S_{t-1}^T k_t)^T,  o_t = scale * S_t^T q_t."""
    _check_qkv(q, k, v)
    _check_state(initial_state, q, v)
    _check_chunk(chunk_size)
    if tuple(beta.shape) != tuple(q.shape[:3]):
        raise ValueError(f"beta must be [B, T, H] = {tuple(q.shape[:3])}, got {tuple(beta.shape)}")
    g = _normalise_gate(g, q, allow_vector=False)
    be = resolve_backend(backend, q)
    config = tunables.validate("delta_rule", be, config, chunk_size=chunk_size)
    if be == "torch":
        from .chunked import delta_rule_chunked as impl
    else:
        from .triton_linear import delta_rule_triton as impl
    return impl(q, k, v, beta, g, scale=scale, chunk_size=chunk_size, initial_state=initial_state,
                output_final_state=output_final_state, config=config)
