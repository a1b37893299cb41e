"""Kernel tunables: which config keys each (op, backend) accepts, their allowed values, defaults.

Each backend module owns its space as
  CONFIG_SPACE: {op: {key: tuple of allowed values}}
  default_config(op, device=None) -> dict       a sensible default (per GPU generation for Triton)
  validate_config(op, config, **ctx) -> None    cross-key checks; raises ValueError
so that the auto-tuner (evaluators/throughput) can enumerate spaces without knowing kernels.
"""
from __future__ import annotations

import importlib

_MODULES = {
    ("softmax_attention", "torch"): "block_sparse",
    ("softmax_attention", "triton"): "triton_attention",
    ("linear_attention", "torch"): "chunked",
    ("linear_attention", "triton"): "triton_linear",
    ("delta_rule", "torch"): "chunked",
    ("delta_rule", "triton"): "triton_linear",
}
OPS = ("softmax_attention", "linear_attention", "delta_rule")


def backend_module(op: str, backend: str):
    try:
        name = _MODULES[(op, backend)]
    except KeyError:
        raise ValueError(f"no backend {backend!r} for op {op!r}") from None
    return importlib.import_module(f"{__package__}.{name}")


def config_space(op: str, backend: str) -> dict:
    mod = backend_module(op, backend)
    return dict(getattr(mod, "CONFIG_SPACE", {}).get(op, {}))


def default_config(op: str, backend: str, device=None) -> dict:
    mod = backend_module(op, backend)
    fn = getattr(mod, "default_config", None)
    return dict(fn(op, device) if fn else {})


def validate(op: str, backend: str, config, **ctx) -> dict:
    """Merge config over the defaults and check it; returns the full config used."""
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"config must be a dict of kernel tunables, got {type(config).__name__}")
    space = config_space(op, backend)
    for key, value in (config or {}).items():
        if key not in space:
            allowed = ", ".join(sorted(space)) or "none"
            raise ValueError(f"unknown {backend} config key {key!r} for {op} (allowed: {allowed})")
        if value not in space[key]:
            raise ValueError(f"{op} {backend} config {key}={value!r} not in {list(space[key])}")
    full = {**default_config(op, backend), **(config or {})}
    mod = backend_module(op, backend)
    check = getattr(mod, "validate_config", None)
    if check:
        check(op, full, **ctx)
    return full
