"""Literature layouts as named presets, each built at whatever model dims you give.

A preset is a rule "layer i of n -> (mechanism, params)". Interleaved hybrids put the odd layer
out (the global/full one) last in each group, so a group of 6 is 'SSSSSF'.

    >>> preset("gemma3", d_model=512, n_layers=12, n_heads=8, head_dim=64).layout_string()
    'SSSSSFSSSSSF'
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .arch import ArchConfig, LayerSpec
from .catalogue import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    layer: Callable[[int, int], tuple[str, dict]]     # (index, n_layers) -> (mechanism, params)

    def build(self, **dims) -> ArchConfig:
        n = dims.get("n_layers")
        if not isinstance(n, int) or n <= 0:
            raise ConfigError(f"n_layers: preset {self.name!r} needs a positive n_layers, got {n!r}")
        layers = [LayerSpec(mechanism=m, params=p) for m, p in (self.layer(i, n) for i in range(n))]
        return ArchConfig(name=dims.pop("name", self.name), layers=layers, **dims)


def _uniform(mech: str, params: dict | None = None):
    return lambda i, n: (mech, dict(params or {}))


def _interleave(local: str, local_params: dict, every: int, global_mech: str = "full",
                global_params: dict | None = None):
    """`every - 1` local layers then one global layer, repeated."""
    def layer(i, n):
        if (i + 1) % every == 0:
            return global_mech, dict(global_params or {})
        return local, dict(local_params)
    return layer


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("transformer", "every layer full causal attention (GPT/Llama)", _uniform("full")),
    Preset("gemma3", "Gemma 3: 5 sliding-window (1024) layers : 1 full",
           _interleave("sliding_window", {"window": 1024}, 6)),
    Preset("command_a", "Command A: 3 sliding-window (4096) layers : 1 full",
           _interleave("sliding_window", {"window": 4096}, 4)),
    Preset("mistral_swa", "Mistral 7B: every layer sliding window 4096",
           _uniform("sliding_window", {"window": 4096})),
    Preset("jamba", "Jamba: 7 Mamba(-2) layers : 1 full attention", _interleave("mamba2", {}, 8)),
    Preset("qwen3_next", "Qwen3-Next: 3 Gated DeltaNet layers : 1 full (gated) attention",
           _interleave("gated_deltanet", {}, 4)),
    Preset("minimax01", "MiniMax-01: 7 linear (lightning) attention layers : 1 full",
           _interleave("linear", {}, 8)),
    Preset("longformer", "Longformer: window 512 + global first block, every layer",
           _uniform("longformer")),
    Preset("bigbird", "BigBird: window + global + random blocks, every layer", _uniform("bigbird")),
    Preset("moba", "MoBA-style block top-k sparse attention, every layer", _uniform("block_topk")),
    Preset("linear", "pure Linear Transformer (ELU+1 with normaliser)", _uniform("linear")),
    Preset("performer", "pure Performer", _uniform("performer")),
    Preset("cosformer", "pure cosFormer", _uniform("cosformer")),
    Preset("retnet", "pure RetNet", _uniform("retnet")),
    Preset("mamba2", "pure Mamba-2", _uniform("mamba2")),
    Preset("gla", "pure Gated Linear Attention", _uniform("gla")),
    Preset("deltanet", "pure DeltaNet", _uniform("deltanet")),
    Preset("gated_deltanet", "pure Gated DeltaNet", _uniform("gated_deltanet")),
]}


def preset(name: str, **dims) -> ArchConfig:
    """A literature layout at the given dims (d_model=, n_layers=, n_heads=, head_dim=, ...)."""
    try:
        p = PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset: unknown preset {name!r} (valid: {', '.join(PRESETS)})") from None
    return p.build(**dims)
