"""Scale a target ArchConfig down to proxy size while keeping its per-layer mechanism choices.

Two things change between the target and the proxy:
- depth: a shallower proxy keeps each distinct layer kind in proportion (every kind present keeps
  at least one layer), in the target's order. `ArchConfig.scaled` tiles the pattern instead,
  which would drop the one full layer of a 'SSSSSF' group at depth 4;
- context: windows, blocks and other token extents are scaled by proxy_seq_len / target
  max_seq_len, so a layer sees the same fraction of its context as it would at full size
  (a window of 1024 in an 8192 context becomes 16 in a 128-token proxy).
Kernel tunables are dropped: they never change quality, and the proxy runs the auto backend.
Initialisation follows the proxy's own width (fan-in std 1/sqrt(d_model)), not the target's
init_std: GPT-2's 0.02 is a fan-in init for d_model ~ 2500 and at proxy widths (32-64) it leaves
attention logits nearly flat and q.k gradients tiny, so a 2-layer full-attention proxy never
learned MQAR's key->value binding in 2000 steps (accuracy 0.44, the same as pure linear), while
at 1/sqrt(64) = 0.125 it learns it at step ~500 (issue 3).
"""
from __future__ import annotations

import json
import math

from attnsearch.space.arch import ArchConfig, LayerSpec
from attnsearch.space.catalogue import mechanism

MIN_WINDOW = 4
MIN_BLOCK = 16        # the kernels' smallest sparse block


def _signature(layer: LayerSpec) -> str:
    return json.dumps([layer.mechanism, layer.params], sort_keys=True)


def pick_layers(layers: list[LayerSpec], depth: int) -> list[LayerSpec]:
    """`depth` layers keeping each distinct layer kind's share, ordered as in the target."""
    n = len(layers)
    if depth >= n:
        return [layers[i % n] for i in range(depth)]
    positions: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        positions.setdefault(_signature(layer), []).append(i)
    kinds = sorted(positions, key=lambda s: (-len(positions[s]), positions[s][0]))
    kinds = kinds[:depth]                                  # more kinds than slots: the commonest
    slots = {s: 1 for s in kinds}
    total = sum(len(positions[s]) for s in kinds)
    # largest remainder for the slots left after the one-each guarantee
    want = {s: depth * len(positions[s]) / total for s in kinds}
    for _ in range(depth - len(kinds)):
        best = max(kinds, key=lambda s: (want[s] - slots[s], -positions[s][0]))
        slots[best] += 1
    chosen = []
    for s in kinds:
        idx = positions[s]
        for j in range(slots[s]):   # evenly spread quantiles of this kind's own positions
            chosen.append(idx[min(len(idx) - 1, int((j + 0.5) * len(idx) / slots[s]))])
    return [layers[i] for i in sorted(chosen)]


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(1.0, x)))))


def scale_params(mechanism: str, params: dict, ratio: float, seq_len: int) -> dict:
    """Token extents of one layer's params scaled by `ratio` and fitted to `seq_len`."""
    p = dict(params)
    old_block = p.get("block_size")
    if old_block is not None:
        cap = max(MIN_BLOCK, _pow2_floor(seq_len / 4))      # keep at least ~4 blocks
        p["block_size"] = min(cap, max(MIN_BLOCK, _pow2_floor(old_block * ratio)))
    if "window" in p:
        p["window"] = int(min(seq_len, max(MIN_WINDOW, round(p["window"] * ratio))))
    if old_block is not None:
        new_block = p["block_size"]
        # block counts are fractions of the context (top_k, random) or token extents (global):
        # both scale like tokens, measured in the new block size
        for key in ("top_k", "num_random_blocks", "num_global_blocks"):
            if key in p:
                p[key] = max(1, round(p[key] * old_block * ratio / new_block))
    if "max_len" in p:
        p["max_len"] = max(16, round(p["max_len"] * ratio))
    return p


def proxy_arch(arch: ArchConfig, *, d_model: int, n_layers: int | None, n_heads: int, head_dim: int,
               seq_len: int, vocab_size: int) -> ArchConfig:
    """The proxy model's config: picked layers, scaled params, proxy dims, no kernel tunables."""
    depth = arch.n_layers if n_layers is None else n_layers
    ratio = seq_len / arch.max_seq_len
    layers = [LayerSpec(mechanism=layer.mechanism,
                        params=scale_params(layer.mechanism, layer.params, ratio, seq_len))
              for layer in pick_layers(list(arch.layers), depth)]
    return arch.with_layers(layers).scaled(d_model=d_model, n_heads=n_heads, head_dim=head_dim,
                                           v_head_dim=head_dim, vocab_size=vocab_size,
                                           max_seq_len=seq_len, init_std=proxy_init_std(d_model))


def proxy_init_std(d_model: int) -> float:
    """Fan-in init of the proxy's width (see module doc: the target's init_std is too small here)."""
    return d_model ** -0.5


def fit_chunks(arch: ArchConfig, seq_lens) -> ArchConfig:
    """The linear-family layers' chunk size fitted to the proxy's shortest sequences, for the CPU
    path: the chunked kernels zero-pad T up to a multiple of the chunk (64 by default), so a
    32-token recall batch did twice and a 16-token one four times the work it needed. A chunk size
    changes nothing but rounding (a quality-neutral tunable, see DESIGN); on a GPU the Triton
    kernels keep their own defaults."""
    chunk = min(64, max(16, 1 << (min(seq_lens) - 1).bit_length()))
    layers = [layer if mechanism(layer.mechanism).family == "softmax" else
              LayerSpec(mechanism=layer.mechanism, params=layer.params, kernel_config={"chunk_size": chunk})
              for layer in arch.layers]
    return arch.with_layers(layers)
