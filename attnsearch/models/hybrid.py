"""HybridLM: token embedding, pre-norm blocks (RMSNorm -> mixer, RMSNorm -> SwiGLU), tied head.

    model = build_model("arch.json")            # or an ArchConfig, or a dict
    logits = model(tokens)                      # [B, T] -> [B, T, vocab]
    cache = model.init_cache(batch)
    logits = model.step(tokens[:, 0], cache)    # [B] -> [B, vocab], one token at a time
    out = model.generate(prompt, n)             # greedy (or sampled) continuation

Mixer contract (every mixer in MIXERS): `forward(x [B, T, d], cache=None)`, where a fresh cache
from `init_cache(batch, device, dtype)` gets filled for decoding (prefill); `step(x [B, d],
cache, pos)` for one token at position `pos`. A step *replaces* the tensors in the cache dict
and never writes into them, so stepping on `dict(cache)` leaves `cache` as it was.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from attnsearch.space import ArchConfig, ConfigError

from .common import RMSNorm, SwiGLU
from .linear import LINEAR_MIXERS
from .softmax import SOFTMAX_MIXERS

MIXERS: dict[str, type[nn.Module]] = {**SOFTMAX_MIXERS, **LINEAR_MIXERS}


def build_mixer(arch: ArchConfig, layer, backend: str = "auto") -> nn.Module:
    return MIXERS[layer.mechanism](arch, layer, backend=backend)


@dataclass
class DecodeCache:
    """Per-layer decode state (dicts of tensors, see the mixers' docs) and the next position."""
    layers: list[dict] = field(default_factory=list)
    pos: int = 0


def cache_state_bytes(cache: DecodeCache, per_layer: bool = False):
    """Bytes of the tensors a decode cache holds (total, or a list with one entry per layer)."""
    sizes = [sum(t.numel() * t.element_size() for t in layer.values() if torch.is_tensor(t))
             for layer in cache.layers]
    return sizes if per_layer else sum(sizes)


class Block(nn.Module):
    def __init__(self, arch: ArchConfig, layer, backend: str):
        super().__init__()
        self.mixer_norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.mixer = build_mixer(arch, layer, backend)
        self.mlp_norm = RMSNorm(arch.d_model, arch.norm_eps)
        self.mlp = SwiGLU(arch.d_model, arch.mlp_hidden_dim)

    def forward(self, x, cache=None):
        x = x + self.mixer(self.mixer_norm(x), cache)
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x, cache, pos):
        x = x + self.mixer.step(self.mixer_norm(x), cache, pos)
        return x + self.mlp(self.mlp_norm(x))


class HybridLM(nn.Module):
    def __init__(self, config: ArchConfig, backend: str = "auto"):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, layer, backend) for layer in config.layers)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def _init_weights(self):
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)   # GPT-2: outputs into the residual
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                last = name.rsplit(".", 1)[-1]
                nn.init.normal_(module.weight, std=residual_std if last in ("o_proj", "out_proj", "down") else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)

    def num_params(self, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.embed.weight.numel() if exclude_embedding else n

    # ------------------------------------------------------------------ whole sequence
    def forward(self, tokens: torch.Tensor, cache: DecodeCache | None = None) -> torch.Tensor:
        """tokens [B, T] -> logits [B, T, vocab]. With a fresh cache, also fills it (prefill)."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        if cache is not None and cache.pos != 0:
            raise ValueError("forward(tokens, cache) prefills a fresh cache; use step() to continue one")
        x = self.embed(tokens)
        for i, block in enumerate(self.blocks):
            x = block(x, None if cache is None else cache.layers[i])
        if cache is not None:
            cache.pos = tokens.shape[1]
        return self.lm_head(self.norm(x))

    # ------------------------------------------------------------------ decoding
    def init_cache(self, batch: int, device=None, dtype=None) -> DecodeCache:
        ref = self.embed.weight
        device = ref.device if device is None else device
        dtype = ref.dtype if dtype is None else dtype
        return DecodeCache([block.mixer.init_cache(batch, device, dtype) for block in self.blocks], 0)

    def step(self, token_ids: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        """One token per sequence, token_ids [B] -> logits [B, vocab]; advances the cache."""
        if token_ids.dim() != 1:
            raise ValueError(f"token_ids must be [B], got shape {tuple(token_ids.shape)}")
        x = self.embed(token_ids)
        for block, layer_cache in zip(self.blocks, cache.layers):
            x = block.step(x, layer_cache, cache.pos)
        cache.pos += 1
        return self.lm_head(self.norm(x))

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, n: int, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue prompt [B, T] (or [T]) by n tokens: greedy at temperature 0, else sampled."""
        squeeze = prompt.dim() == 1
        tokens = prompt[None] if squeeze else prompt
        if tokens.shape[1] == 0:
            raise ValueError("generate needs a prompt of at least one token")
        cache = self.init_cache(tokens.shape[0])
        logits = self(tokens, cache)[:, -1]
        out = [tokens]
        for i in range(n):
            if temperature > 0:
                probs = torch.softmax(logits.float() / temperature, dim=-1)
                nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
            else:
                nxt = logits.argmax(-1)
            out.append(nxt[:, None])
            if i + 1 < n:
                logits = self.step(nxt, cache)
        result = torch.cat(out, dim=1)
        return result[0] if squeeze else result


def load_config(config) -> ArchConfig:
    """ArchConfig from an ArchConfig, a dict, a JSON string or a path."""
    if isinstance(config, ArchConfig):
        return config
    if isinstance(config, dict):
        return ArchConfig.from_dict(config)
    if isinstance(config, (str, Path)):
        return ArchConfig.from_json(config)
    raise ConfigError(f"config: expected an ArchConfig, dict, JSON text or path, got {type(config).__name__}")


def build_model(config, backend: str = "auto") -> HybridLM:
    """HybridLM from an ArchConfig, a dict, JSON text or a JSON file path."""
    return HybridLM(load_config(config), backend=backend)


__all__ = ["HybridLM", "DecodeCache", "build_model", "build_mixer", "cache_state_bytes", "load_config",
           "MIXERS"]
