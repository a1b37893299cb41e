"""Throughput of an architecture: training tokens per second (forward + backward).

Modes (the result always says which one produced the number):

- ``estimated``: an analytic roofline for a named GPU. Each piece of one training step (every
  layer's mixer from the catalogue's FLOPs and bytes, the SwiGLU MLP, the norms, the embedding
  and the LM head) takes max(FLOPs / achievable FLOP/s, bytes / achievable bandwidth); the
  backward pass is counted as twice the forward. Cheap (milliseconds), deterministic, and
  labelled ``estimated``: it ranks layouts, it does not promise a wall-clock figure.
- ``measured-cpu``: builds the model (``attnsearch.models.build_model``) and times
  forward + backward on the CPU (median of a few steps after a warm-up).
- ``measured``: GPU kernel microbenchmarks at the target shape, cached in the database
  (``attnsearch.evaluators.microbench``, plugged in through ``register_mode``).
"""
from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Callable

from attnsearch.space.catalogue import mechanism

from .memory import dtype_bytes


@dataclass(frozen=True)
class GPU:
    """Peak dense tensor-core throughput and memory bandwidth (vendor data sheets)."""
    name: str
    bf16_flops: float          # dense, no sparsity
    tf32_flops: float          # dense; used for fp32 models (tensor cores in TF32 mode)
    bandwidth: float           # HBM/GDDR bytes per second
    memory_bytes: float


# Peak figures from NVIDIA's data sheets (SXM parts unless named otherwise).
GPUS: dict[str, GPU] = {g.name: g for g in [
    GPU("H100", 989e12, 494.7e12, 3.35e12, 80e9),
    GPU("H100-PCIe", 756e12, 378e12, 2.0e12, 80e9),
    GPU("H200", 989e12, 494.7e12, 4.8e12, 141e9),
    GPU("A100", 312e12, 156e12, 2.039e12, 80e9),
    GPU("A100-40GB", 312e12, 156e12, 1.555e12, 40e9),
    GPU("L40S", 362.05e12, 183e12, 0.864e12, 48e9),
    GPU("L4", 121e12, 60e12, 0.3e12, 24e9),
    GPU("B200", 2250e12, 1100e12, 8.0e12, 180e9),
]}

# Fractions of peak that well-tuned kernels reach; one pair for every GPU so that the estimate
# ranks layouts by their arithmetic and traffic rather than by guessed per-kernel efficiencies.
MATMUL_EFFICIENCY = 0.7
BANDWIDTH_EFFICIENCY = 0.8
BACKWARD_FACTOR = 2.0        # backward ~ 2x forward in FLOPs and traffic


def gpu(name: str) -> GPU:
    try:
        return GPUS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown GPU {name!r} (allowed: {', '.join(GPUS)})") from None


@dataclass(frozen=True)
class ThroughputResult:
    tokens_per_s: float
    mode: str                          # "estimated" | "measured-cpu" | "measured"
    step_time_s: float
    batch: int
    seq_len: int
    detail: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _roofline_s(flops: float, nbytes: float, hw: GPU, dtype: str) -> float:
    peak = hw.tf32_flops if dtype == "fp32" else hw.bf16_flops
    return max(flops / (peak * MATMUL_EFFICIENCY), nbytes / (hw.bandwidth * BANDWIDTH_EFFICIENCY))


def _dense_cost(arch, tokens: int, nbytes: int) -> dict[str, tuple[float, float]]:
    """(FLOPs, bytes) of one forward of the non-mixer parts for ``tokens`` tokens."""
    d, h, V = arch.d_model, arch.mlp_hidden_dim, arch.vocab_size
    mlp_w = 3 * d * h
    mlp = (2.0 * tokens * mlp_w, (mlp_w + tokens * (2 * d + 2 * h + h)) * nbytes)
    norms = (2 * 5.0 * tokens * d, 2 * 2 * tokens * d * nbytes)          # two RMSNorms per layer
    embed = (0.0, 2.0 * tokens * d * nbytes)
    head = (2.0 * tokens * d * V, (d * V + tokens * (d + V)) * nbytes)
    return {"mlp": mlp, "norms": norms, "embed": embed, "head": head}


def _frozen(params: dict) -> tuple:
    return tuple(sorted(params.items()))


@functools.lru_cache(maxsize=4096)
def _mixer_s(dims: tuple, mech: str, params: tuple, chunk: int, seq_len: int, batch: int,
             gpu_name: str, dtype: str) -> float:
    """Forward time of one mixer (cached: a search asks for the same few layers again and again)."""
    d, H, K, V = dims
    arch = SimpleNamespace(d_model=d, n_heads=H, head_dim=K, v_head_dim=V)
    c = mechanism(mech).cost(arch, dict(params), seq_len, batch, dtype_bytes=dtype_bytes(dtype), chunk_size=chunk)
    return _roofline_s(c.flops, c.bytes, GPUS[gpu_name], dtype)


def estimate_throughput(arch, seq_len: int, batch_tokens: int | None = None, gpu_name: str = "H100",
                        dtype: str = "bf16") -> ThroughputResult:
    """Roofline training throughput (tokens/s) of ``arch`` on ``gpu_name`` at ``seq_len``.

    ``batch_tokens`` tokens per step are split into sequences of ``seq_len`` (at least one).
    """
    hw = gpu(gpu_name)
    nbytes = dtype_bytes(dtype)
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    batch = max(1, (batch_tokens or seq_len) // seq_len)
    tokens = batch * seq_len
    scale = 1.0 + BACKWARD_FACTOR
    dims = (arch.d_model, arch.n_heads, arch.head_dim, arch.v_head_dim)
    layer_s = [scale * _mixer_s(dims, layer.mechanism, _frozen(layer.params),
                                (layer.kernel_config or {}).get("chunk_size", 64), seq_len, batch, hw.name, dtype)
               for layer in arch.layers]
    dense = _dense_cost(arch, tokens, nbytes)
    per_layer_dense = {k: scale * _roofline_s(f, b, hw, dtype) for k, (f, b) in dense.items()
                       if k in ("mlp", "norms")}
    once = {k: scale * _roofline_s(f, b, hw, dtype) for k, (f, b) in dense.items() if k in ("embed", "head")}
    step = sum(layer_s) + arch.n_layers * sum(per_layer_dense.values()) + sum(once.values())
    return ThroughputResult(
        tokens_per_s=tokens / step, mode="estimated", step_time_s=step, batch=batch, seq_len=seq_len,
        detail={"gpu": hw.name, "dtype": dtype, "mixer_s": layer_s,
                "mlp_s": arch.n_layers * per_layer_dense["mlp"],
                "norms_s": arch.n_layers * per_layer_dense["norms"],
                "embed_head_s": sum(once.values()),
                "matmul_efficiency": MATMUL_EFFICIENCY, "bandwidth_efficiency": BANDWIDTH_EFFICIENCY})


def measure_cpu_throughput(arch, seq_len: int, batch: int = 1, steps: int = 3, warmup: int = 1,
                           seed: int = 0) -> ThroughputResult:
    """Time forward + backward of the real model on the CPU (median step, float32)."""
    import torch

    from attnsearch.models import build_model

    if steps < 1 or warmup < 0:
        raise ValueError(f"steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    torch.manual_seed(seed)
    model = build_model(arch)
    model.train()
    tokens = torch.randint(0, arch.vocab_size, (batch, seq_len))
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = model(tokens)
        logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", out[0])
        logits.float().mean().backward()
        model.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    return ThroughputResult(tokens_per_s=batch * seq_len / step, mode="measured-cpu", step_time_s=step,
                            batch=batch, seq_len=seq_len,
                            detail={"steps": steps, "threads": torch.get_num_threads(),
                                    "step_times_s": times})


def _measured_gpu(arch, seq_len, batch_tokens=None, gpu_name="H100", dtype="bf16", **kwargs):
    from .microbench import measured_throughput   # imported on use: it needs torch and a GPU

    return measured_throughput(arch, seq_len, batch_tokens, gpu_name, dtype, **kwargs)


_MODES: dict[str, Callable[..., ThroughputResult]] = {"measured": _measured_gpu}


def register_mode(name: str, fn: Callable[..., ThroughputResult]) -> None:
    """Plug in a throughput mode (the GPU microbenchmark issue registers ``measured``).

    ``fn(arch, seq_len, batch_tokens=..., gpu_name=..., dtype=...) -> ThroughputResult``.
    """
    _MODES[name] = fn


def evaluate_throughput(arch, mode: str = "estimated", *, seq_len: int, batch_tokens: int | None = None,
                        gpu_name: str = "H100", dtype: str = "bf16", cpu_batch: int = 1) -> ThroughputResult:
    """Throughput in the named mode (see the module docstring)."""
    if mode == "estimated":
        return estimate_throughput(arch, seq_len, batch_tokens, gpu_name, dtype)
    if mode == "measured-cpu":
        return measure_cpu_throughput(arch, seq_len, batch=cpu_batch)
    if mode in _MODES:
        return _MODES[mode](arch, seq_len, batch_tokens=batch_tokens, gpu_name=gpu_name, dtype=dtype)
    raise ValueError(f"throughput mode {mode!r} not allowed (allowed: estimated, measured-cpu, "
                     f"{', '.join(_MODES)})")
