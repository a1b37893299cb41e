"""Memory cost of an architecture: inference state per sequence (exact) and parameter count.

State bytes come straight from the mechanism catalogue (K/V cache for softmax kinds, bounded by
the window for windowed kinds, constant recurrent state for linear kinds), summed over layers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from attnsearch.space.catalogue import mechanism

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


def dtype_bytes(dtype: str | int) -> int:
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        if dtype <= 0:
            raise ValueError(f"dtype_bytes must be positive, got {dtype}")
        return dtype
    try:
        return DTYPE_BYTES[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"dtype {dtype!r} not allowed (allowed: {', '.join(DTYPE_BYTES)})") from None


def state_bytes_per_layer(arch, context_len: int, dtype: str | int = "bf16") -> list[int]:
    nbytes = dtype_bytes(dtype)
    return [mechanism(l.mechanism).state_bytes(arch, l.params, context_len, nbytes) for l in arch.layers]


def state_bytes(arch, context_len: int, dtype: str | int = "bf16") -> int:
    """Inference state of the whole model per sequence after ``context_len`` tokens."""
    return sum(state_bytes_per_layer(arch, context_len, dtype))


def param_count(arch) -> int:
    """Trainable parameters: mixers (catalogue), SwiGLU MLPs, RMSNorms, embeddings (+ untied head)."""
    d, h = arch.d_model, arch.mlp_hidden_dim
    mixers = sum(mechanism(l.mechanism).param_count(arch, l.params) for l in arch.layers)
    per_layer_rest = 3 * d * h + 2 * d               # gate, up, down; two pre-norms
    embed = arch.vocab_size * d * (1 if arch.tie_embeddings else 2)
    return mixers + arch.n_layers * per_layer_rest + embed + d   # + final norm


@dataclass(frozen=True)
class MemoryResult:
    state_bytes: int
    state_bytes_per_layer: list[int]
    context_len: int
    param_count: int
    weight_bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_memory(arch, context_len: int, dtype: str | int = "bf16") -> MemoryResult:
    per_layer = state_bytes_per_layer(arch, context_len, dtype)
    params = param_count(arch)
    return MemoryResult(state_bytes=sum(per_layer), state_bytes_per_layer=per_layer,
                        context_len=int(context_len), param_count=params,
                        weight_bytes=params * dtype_bytes(dtype))
