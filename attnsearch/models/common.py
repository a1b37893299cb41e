"""Small building blocks shared by the mixers: RMSNorm, RoPE, short causal conv, SwiGLU."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """RMSNorm over the last dim (pre-norm blocks, per-head output norms, Mamba-2's gated norm)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding (rotate-half form) of x [B, T, H, K] at integer positions [T]."""
    K = x.shape[-1]
    half = K // 2
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = theta ** (-torch.arange(0, half, device=x.device, dtype=work) * 2 / K)
    angles = positions.to(work)[:, None] * inv_freq[None, :]              # [T, K/2]
    cos, sin = angles.cos()[None, :, None, :], angles.sin()[None, :, None, :]
    x1, x2 = x[..., :half].to(work), x[..., half:2 * half].to(work)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, x[..., 2 * half:].to(work)], dim=-1)
    return out.to(x.dtype)


class ShortConv(nn.Module):
    """Causal depthwise convolution over time, width `size`, followed by SiLU.

    forward(x [B, T, C]) for whole sequences; step(x [B, C], tail [B, C, size-1]) for decoding,
    where `tail` holds the previous size-1 inputs (zeros before the sequence start).
    """

    def __init__(self, channels: int, size: int, bias: bool = False):
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.randn(channels, size) / math.sqrt(size))
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None

    def forward(self, x):
        # a sum of shifted copies: exact, and far faster than conv1d in float64 on CPU
        T = x.shape[1]
        padded = F.pad(x, (0, 0, self.size - 1, 0))
        y = sum(padded[:, i:i + T] * self.weight[:, i] for i in range(self.size))
        if self.bias is not None:
            y = y + self.bias
        return F.silu(y)

    def tail_of(self, x):
        """The last size-1 inputs of x [B, T, C] as a decode tail [B, C, size-1]."""
        xt = x.transpose(1, 2)
        need = self.size - 1
        if xt.shape[-1] < need:
            xt = F.pad(xt, (need - xt.shape[-1], 0))
        return xt[..., xt.shape[-1] - need:].contiguous()

    def step(self, x, tail):
        window = torch.cat([tail, x.unsqueeze(-1)], dim=-1)                # [B, C, size]
        y = (window * self.weight).sum(-1)
        if self.bias is not None:
            y = y + self.bias
        return F.silu(y), window[..., 1:].contiguous()


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


def split_kernel_config(kernel_config: dict | None, default_chunk: int = 64) -> tuple[int, dict | None]:
    """LayerSpec.kernel_config -> (chunk_size, the op's backend config or None)."""
    config = dict(kernel_config or {})
    chunk = config.pop("chunk_size", default_chunk)
    return chunk, (config or None)
