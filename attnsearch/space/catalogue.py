"""The mechanism catalogue: every per-layer attention choice, its parameters, state and cost.

A `Mechanism` is pure data plus formulas; it builds nothing. `arch` arguments are duck-typed:
anything with `d_model`, `n_heads`, `head_dim` and `v_head_dim` (an `ArchConfig`, usually).

Conventions shared by every mechanism (the models in `attnsearch.models` follow them, and the
tests check `param_count` and `state_bytes` against real modules and caches):

- H = n_heads, K = head_dim (query/key width per head; Mamba-2's state size N), V = v_head_dim.
  Every mixer projects d_model -> H*K for q and k, d_model -> H*V for v, and H*V -> d_model out.
- Parameters of kind "quality" change what the model computes (the sampler searches them) and
  live in `LayerSpec.params`. Parameters of kind "tunable" (the chunk size of chunkwise linear
  attention) do not, up to rounding: they live in `LayerSpec.kernel_config` beside the op's
  own backend tunables (see `attnsearch.kernels.tunables` for those, by `Mechanism.op`).
- State bytes (`state_bytes`): what one layer keeps per sequence between decoding steps after
  `context_len` tokens -- the K/V cache for softmax kinds (only the keys a future query can
  still see), the recurrent state, normaliser and short-conv tail for linear kinds. Position
  counters and integer bookkeeping are not counted.
- Cost (`cost`): one forward of the layer's mixer over [batch, seq_len] tokens: its projections
  (in, gates, out, short conv) plus the attention/recurrence core. Norms, RoPE, the MLP and
  the embedding are not counted. A multiply-add is 2 FLOPs; masked-out halves of diagonal
  tiles are counted for chunked linear kinds (the kernel computes them) and not for softmax
  (visible pairs only). Bytes moved is the HBM traffic of a fused implementation: weights
  once, every projection's input and output once, q/k/v read and o written once by the core,
  plus key/value tiles re-read once per visible (query block, key block) pair for softmax, and
  one float32 state write + read per chunk for the chunkwise linear kinds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable


class OneLineError(ValueError):
    """A user-facing error shown as one line: line breaks that came from user input are escaped."""

    def __init__(self, message="", *args):
        super().__init__(str(message).replace("\r", "\\r").replace("\n", "\\n"), *args)


class ConfigError(OneLineError):
    """An invalid architecture / layer description; the message names the offending field."""


# ----------------------------------------------------------------------------- parameters

@dataclass(frozen=True)
class ParamSpec:
    """One structural parameter: its type, default and allowed values."""
    name: str
    default: Any
    kind: str = "quality"             # "quality" (searched) or "tunable" (kernel-only)
    type: str = "int"                 # "int", "float" or "choice"
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    power_of_two: bool = False
    doc: str = ""

    def allowed(self) -> str:
        if self.type == "choice":
            return f"one of {list(self.choices)}"
        rng = f"in [{self.low}, {self.high}]"
        return f"a power of two {rng}" if self.power_of_two else f"{'an integer' if self.type == 'int' else 'a number'} {rng}"

    def check(self, value, where: str):
        """Return the value (normalised) or raise ConfigError naming `where`."""
        bad = ConfigError(f"{where}: must be {self.allowed()}, got {value!r}")
        if self.type == "choice":
            if value not in self.choices:
                raise bad
            return value
        if isinstance(value, bool):
            raise bad
        if self.type == "int":
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if not isinstance(value, int):
                raise bad
        elif not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            raise bad
        if self.power_of_two and (value < 1 or int(value) & (int(value) - 1)):
            raise bad
        return float(value) if self.type == "float" else value


def _window(default):
    return ParamSpec("window", default, low=1, high=1 << 20,
                     doc="keys visible to a query, itself included (query i sees j with i - j < window)")


def _block_size(default=64):
    return ParamSpec("block_size", default, low=16, high=1024, power_of_two=True,
                     doc="token block of the sparse pattern (a power of two >= 16)")


def _seed():
    return ParamSpec("seed", 0, low=0, high=2**31 - 1, doc="seed of the random block pattern")


def _conv(default):
    return ParamSpec("conv_size", default, low=0, high=8,
                     doc="short causal depthwise convolution width on the layer inputs (0 = off)")


CHUNK_SIZE = ParamSpec("chunk_size", 64, kind="tunable", low=16, high=256, power_of_two=True,
                       doc="chunk of the chunkwise linear-attention kernel (kernel_config key)")


# ----------------------------------------------------------------------------- cost record

@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes moved for one forward of one layer's mixer."""
    flops: float
    bytes: float
    detail: dict = field(default_factory=dict)   # {"projection_flops", "core_flops", ...}


def _dims(arch):
    H, K = int(arch.n_heads), int(arch.head_dim)
    V = int(arch.v_head_dim or K)
    return int(arch.d_model), H, K, V


# ----------------------------------------------------------------------------- mechanisms

@dataclass(frozen=True)
class Mechanism:
    """One per-layer choice. Formulas are plain functions of (arch, resolved params, ...)."""
    name: str
    code: str                                  # one letter for layout strings
    family: str                                # "softmax", "linear" or "delta"
    op: str                                    # the kernel op it runs on
    description: str
    params: dict[str, ParamSpec]
    _matrices: Callable = field(repr=False, default=None)      # (d,H,K,V,p) -> [(in, out)]
    _extra_params: Callable = field(repr=False, default=None)  # (d,H,K,V,p) -> int (non-matmul)
    _state: Callable = field(repr=False, default=None)         # (H,K,V,p,L) -> elements
    _core: Callable = field(repr=False, default=None)          # (H,K,V,p,T) -> (flops, extra_bytes_elems)

    # -- parameters
    def quality_params(self) -> dict[str, ParamSpec]:
        return {n: s for n, s in self.params.items() if s.kind == "quality"}

    def tunable_params(self) -> dict[str, ParamSpec]:
        return {n: s for n, s in self.params.items() if s.kind == "tunable"}

    def defaults(self) -> dict:
        return {n: s.default for n, s in self.quality_params().items()}

    def resolve_params(self, params: dict | None, where: str = "params") -> dict:
        """Defaults merged with `params`, each checked; tunables are refused here (kernel_config)."""
        params = dict(params or {})
        quality = self.quality_params()
        out = self.defaults()
        for key, value in params.items():
            if key in self.tunable_params():
                raise ConfigError(f"{where}.{key}: is a kernel tunable of {self.name}; "
                                  f"put it in kernel_config, not params")
            if key not in quality:
                allowed = ", ".join(quality) or "none"
                raise ConfigError(f"{where}.{key}: unknown parameter for {self.name} (allowed: {allowed})")
            out[key] = quality[key].check(value, f"{where}.{key}")
        return out

    def check_kernel_config(self, config: dict | None, where: str = "kernel_config") -> dict | None:
        """Checks the catalogue tunables (chunk_size); other keys are the op backend's to check."""
        if config is None:
            return None
        if not isinstance(config, dict):
            raise ConfigError(f"{where}: must be a dict of kernel tunables or null, got {type(config).__name__}")
        out = dict(config)
        for key, spec in self.tunable_params().items():
            if key in out:
                out[key] = spec.check(out[key], f"{where}.{key}")
        if "chunk_size" in out and self.family == "softmax":
            raise ConfigError(f"{where}.chunk_size: {self.name} is a softmax kind and has no chunk size")
        return out

    # -- formulas
    def matrices(self, arch, params=None) -> list[tuple[int, int]]:
        d, H, K, V = _dims(arch)
        return self._matrices(d, H, K, V, self.resolve_params(params))

    def param_count(self, arch, params=None) -> int:
        """Trainable parameters of the mixer (projections, conv, norms, gate biases)."""
        d, H, K, V = _dims(arch)
        p = self.resolve_params(params)
        return sum(i * o for i, o in self._matrices(d, H, K, V, p)) + self._extra_params(d, H, K, V, p)

    def state_bytes(self, arch, params, context_len: int, dtype_bytes: int = 2) -> int:
        """Inference state per sequence for one layer after `context_len` tokens."""
        if context_len < 0:
            raise ValueError(f"context_len must be >= 0, got {context_len}")
        d, H, K, V = _dims(arch)
        return int(self._state(H, K, V, self.resolve_params(params), int(context_len))) * dtype_bytes

    def cost(self, arch, params, seq_len: int, batch: int = 1, dtype_bytes: int = 2,
             chunk_size: int = 64) -> Cost:
        """FLOPs and bytes moved for one forward of this layer's mixer (see module doc)."""
        d, H, K, V = _dims(arch)
        p = self.resolve_params(params)
        T, B = int(seq_len), int(batch)
        mats = self._matrices(d, H, K, V, p)
        weights = sum(i * o for i, o in mats)
        proj_flops = 2 * B * T * weights
        proj_bytes = (weights + B * T * sum(i + o for i, o in mats)) * dtype_bytes
        conv_ch = _conv_channels(self.name, H, K, V)
        conv_flops = 2 * B * T * conv_ch * p.get("conv_size", 0)
        conv_bytes = 2 * B * T * conv_ch * dtype_bytes if p.get("conv_size", 0) else 0
        core_flops, core_elems = self._core(H, K, V, p, T, chunk_size)
        core_bytes = B * core_elems * dtype_bytes
        if self.family != "softmax":   # float32 state written and read once per chunk
            n_chunks = -(-T // chunk_size)
            core_bytes += B * H * n_chunks * _state_width(self.name, K, p) * V * 4 * 2
        flops = proj_flops + conv_flops + B * core_flops
        return Cost(flops=float(flops), bytes=float(proj_bytes + conv_bytes + core_bytes),
                    detail={"projection_flops": float(proj_flops + conv_flops),
                            "core_flops": float(B * core_flops),
                            "projection_bytes": float(proj_bytes + conv_bytes),
                            "core_bytes": float(core_bytes)})


# ----------------------------------------------------------------------------- softmax kinds

def _qkvo(d, H, K, V, p):
    return [(d, H * K), (d, H * K), (d, H * V), (H * V, d)]


def _no_extra(d, H, K, V, p):
    return 0


def _kv(H, K, V, n_tokens):
    return H * (K + V) * n_tokens


def _window_pairs(T, w):
    """Visible (query, key) pairs under causal window w: sum_i min(i + 1, w)."""
    if T <= w:
        return T * (T + 1) // 2
    return w * (w + 1) // 2 + (T - w) * w


def _softmax_core(pairs_and_tiles, tile=64):
    """Core cost from visible pairs and visible (query block, key block) tiles per head."""
    def core(H, K, V, p, T, chunk):
        pairs, tiles = pairs_and_tiles(p, T)
        bs = p.get("block_size", tile)
        flops = H * (2 * pairs * (K + V) + 5 * pairs)          # QK^T, PV, and the softmax itself
        elems = H * (T * (K + V)                                # read q, write o
                     + tiles * bs * (K + V))                    # K/V tile per visible block pair
        return flops, elems
    return core


def _nb(T, bs):
    return -(-T // bs)


def _causal_tiles(T, bs):
    n = _nb(T, bs)
    return n * (n + 1) // 2


def _window_tiles(T, bs, w):
    # query block qb sees key blocks from (qb*bs - w + 1)//bs up to qb
    return sum(qb - max(0, (qb * bs - w + 1) // bs) + 1 for qb in range(_nb(T, bs)))


def _window_extra(a: int, M: int, R: int) -> int:
    """sum over r in [0, R) of clamp(a - r, 0, M): window keys before the query's own block for
    the r-th query of a block that has M earlier keys (a = window - 1)."""
    c1 = max(0, min(a - M + 1, R))               # rows whose window covers all M earlier keys
    total = c1 * M
    lo, hi = c1, min(R - 1, a - 1)               # rows whose window reaches partly back
    if hi >= lo:
        n = hi - lo + 1
        total += n * a - (lo + hi) * n // 2
    return total


def _listed_pairs_and_tiles(T, bs, listed_per_block, w=None):
    """Pairs/tiles when query block qb sees its own block (causal), `listed(qb)` earlier full
    blocks, and (optionally) a token window; overlaps between window and listed are ignored
    (an upper bound, tight when the window is at most one block)."""
    pairs, tiles = 0, 0
    for qb in range(_nb(T, bs)):
        rows = min(bs, T - qb * bs)
        own = rows * (rows + 1) // 2
        listed = listed_per_block(qb)
        pairs += own + listed * bs * rows
        tiles += 1 + listed
        if w is not None and w > 1:
            # window keys that fall in earlier blocks (not already in the own block)
            pairs += _window_extra(w - 1, qb * bs, rows)
            tiles += min(qb, _nb(w - 1, bs) if w > 1 else 0)
    return pairs, tiles


def _dilated_listed(p):
    return lambda qb: qb // p["dilation"]


def _random_listed(p):
    return lambda qb: min(qb, p["num_random_blocks"])


def _longformer_listed(p):
    return lambda qb: min(qb, p["num_global_blocks"])


def _bigbird_listed(p):
    return lambda qb: min(qb, p["num_global_blocks"] + p["num_random_blocks"])


def _topk_listed(p):
    return lambda qb: min(qb, p["top_k"])


def _sparse_core(listed_fn, with_window=False):
    return _softmax_core(lambda p, T: _listed_pairs_and_tiles(T, p["block_size"], listed_fn(p),
                                                               p["window"] if with_window else None))


def _longformer_kept(p, L):
    """Keys a future query can still see after L tokens: the global blocks, the window tail and
    the rest of the current block (the op always shows a query its own block)."""
    bs = p["block_size"]
    g = p["num_global_blocks"] * bs
    tail_start = max(0, min(L - p["window"] + 1, (L // bs) * bs))
    return min(L, g) + max(0, L - max(tail_start, g))


# ----------------------------------------------------------------------------- linear kinds

def _conv_channels(name, H, K, V):
    if name == "mamba2":
        return H * V + 2 * K          # x, B, C (one group)
    return 2 * H * K + H * V          # q, k, v


def _conv_params(name, H, K, V, p):
    c = p.get("conv_size", 0)
    if not c:
        return 0
    ch = _conv_channels(name, H, K, V)
    return ch * c + (ch if name == "mamba2" else 0)   # Mamba-2's conv has a bias


def _conv_state(name, H, K, V, p):
    c = p.get("conv_size", 0)
    return _conv_channels(name, H, K, V) * (c - 1) if c > 1 else 0


def _state_width(name, K, p):
    """Width of the recurrent state's key side (feature count)."""
    if name == "performer":
        return p["num_features"]
    if name == "cosformer":
        return 2 * K
    return K


_NORMALISED = ("linear", "performer", "cosformer")


def _linear_state(name):
    def state(H, K, V, p, L):
        Kf = _state_width(name, K, p)
        norm = H * Kf if name in _NORMALISED else 0
        return H * Kf * V + norm + _conv_state(name, H, K, V, p)
    return state


def _linear_core(name):
    def core(H, K, V, p, T, C):
        Kf = _state_width(name, K, p)
        n_chunks = -(-T // C)
        Tp = n_chunks * C
        flops = H * Tp * (2 * C * (Kf + V) + 4 * Kf * V)      # intra-chunk QK^T, AV; q S; k^T v
        if name == "performer":
            flops += H * T * 2 * 2 * K * Kf                     # q and k onto the random features
        if name in _NORMALISED:
            flops += H * T * 4 * Kf                             # running key sum and its dot with q
        if name in ("deltanet", "gated_deltanet"):
            flops += H * Tp * (4 * C * K + 2 * C * V + C * C // 3 + 2 * K * V)  # WY/UT transform
        gates = {"gla": H * T * K, "mamba2": H * T, "gated_deltanet": 2 * H * T, "deltanet": H * T}.get(name, 0)
        elems = H * T * (2 * Kf + 2 * V) + gates                # read q, k, v, gates; write o
        return flops, elems
    return core


def _linear_matrices(name):
    def mats(d, H, K, V, p):
        m = _qkvo(d, H, K, V, p)
        if name == "retnet":
            m.append((d, H * V))                                # swish output gate
        elif name == "gla":
            r = p["gate_rank"]
            m += [(d, r), (r, H * K), (d, H * V)]               # low-rank gate, output gate
        elif name == "deltanet":
            m.append((d, H))                                    # beta
        elif name == "gated_deltanet":
            m += [(d, H), (d, H), (d, H * V)]                   # beta, decay (a), output gate
        elif name == "mamba2":
            m = [(d, 2 * H * V + 2 * K + H), (H * V, d)]        # in_proj: z, x, B, C, dt; out_proj
        return m
    return mats


def _linear_extra(name):
    def extra(d, H, K, V, p):
        n = _conv_params(name, H, K, V, p)
        if name in ("retnet", "deltanet", "gated_deltanet", "gla"):
            n += V                                              # per-head output RMSNorm weight
        if name == "gla":
            n += H * K                                          # bias of the gate's up-projection
        if name == "gated_deltanet":
            n += 2 * H                                          # A_log, dt_bias
        if name == "mamba2":
            n += 3 * H + H * V                                  # A_log, dt_bias, D; gated RMSNorm
        return n
    return extra


# ----------------------------------------------------------------------------- the registry

def _softmax(name, code, description, params, state, core):
    return Mechanism(name, code, "softmax", "softmax_attention", description,
                     {s.name: s for s in params}, _qkvo, _no_extra, state, core)


def _linear(name, code, family, description, params):
    params = list(params) + [CHUNK_SIZE]
    return Mechanism(name, code, family, "delta_rule" if family == "delta" else "linear_attention",
                     description, {s.name: s for s in params}, _linear_matrices(name),
                     _linear_extra(name), _linear_state(name), _linear_core(name))


_full_kv = lambda H, K, V, p, L: _kv(H, K, V, L)  # noqa: E731

_ALL = [
    _softmax("full", "F", "full causal softmax attention with RoPE", [], _full_kv,
             _softmax_core(lambda p, T: (T * (T + 1) // 2, _causal_tiles(T, 64)))),
    _softmax("sliding_window", "S", "causal softmax attention over the last `window` tokens",
             [_window(1024)],
             lambda H, K, V, p, L: _kv(H, K, V, min(L, p["window"] - 1)),
             _softmax_core(lambda p, T: (_window_pairs(T, p["window"]), _window_tiles(T, 64, p["window"])))),
    _softmax("dilated", "D", "each query block sees its own block and every `dilation`-th earlier block",
             [_block_size(), ParamSpec("dilation", 2, low=2, high=64, doc="stride between visible key blocks")],
             _full_kv, _sparse_core(_dilated_listed)),
    _softmax("random_sparse", "R", "each query block sees its own block and `num_random_blocks` seeded random earlier blocks",
             [_block_size(), ParamSpec("num_random_blocks", 4, low=1, high=256), _seed()],
             _full_kv, _sparse_core(_random_listed)),
    _softmax("longformer", "L", "sliding window plus the first `num_global_blocks` blocks as global keys",
             [_block_size(), _window(512), ParamSpec("num_global_blocks", 1, low=1, high=64)],
             lambda H, K, V, p, L: _kv(H, K, V, _longformer_kept(p, L)),
             _sparse_core(_longformer_listed, with_window=True)),
    _softmax("bigbird", "B", "sliding window plus global and seeded random blocks",
             [_block_size(), _window(192), ParamSpec("num_global_blocks", 1, low=1, high=64),
              ParamSpec("num_random_blocks", 2, low=1, high=256), _seed()],
             _full_kv, _sparse_core(_bigbird_listed, with_window=True)),
    _softmax("block_topk", "K", "each query block sees its own block and the `top_k` earlier blocks whose "
             "mean key best matches the previous query block's mean query (MoBA/NSA style, causal)",
             [_block_size(), ParamSpec("top_k", 4, low=1, high=256, doc="earlier key blocks kept per query block")],
             lambda H, K, V, p, L: _kv(H, K, V, L) + 2 * H * K,   # + running query sum and router query
             _sparse_core(_topk_listed)),
    _linear("linear", "A", "linear", "Linear Transformer: feature map (ELU+1 or ReLU) with normaliser",
            [ParamSpec("feature_map", "elu", type="choice", choices=("elu", "relu")), _conv(0)]),
    _linear("performer", "P", "linear", "Performer: positive random features (FAVOR+) with normaliser",
            [ParamSpec("num_features", 64, type="choice", choices=(16, 32, 64, 128, 256)), _seed(), _conv(0)]),
    _linear("cosformer", "C", "linear", "cosFormer: ReLU features with cos/sin position reweighting and normaliser",
            [ParamSpec("max_len", 4096, low=16, high=1 << 22,
                       doc="reweighting period M: the weight cos(pi/2 * (i-j)/M) stays positive for i-j < M"),
             _conv(0)]),
    _linear("retnet", "T", "linear", "RetNet retention: fixed per-head decay, RoPE, group norm and swish gate",
            [_conv(0)]),
    _linear("mamba2", "M", "linear", "Mamba-2 (SSD): data-dependent scalar decay with dt/A/B/C/D/z",
            [_conv(4)]),
    _linear("gla", "G", "linear", "Gated Linear Attention: data-dependent per-channel gate (low rank)",
            [ParamSpec("gate_rank", 16, low=1, high=256, doc="rank of the gate projection"),
             ParamSpec("gate_temperature", 16.0, type="float", low=1.0, high=256.0,
                       doc="log-sigmoid gate divided by this (slower forgetting when larger)"),
             _conv(0)]),
    _linear("deltanet", "N", "delta", "DeltaNet: delta rule with L2-normalised q/k and sigmoid beta",
            [_conv(4)]),
    _linear("gated_deltanet", "Q", "delta", "Gated DeltaNet: delta rule with Mamba-2-style scalar decay and output gate",
            [_conv(4)]),
]

MECHANISMS: dict[str, Mechanism] = {m.name: m for m in _ALL}
BY_CODE: dict[str, Mechanism] = {m.code: m for m in _ALL}
assert len(BY_CODE) == len(MECHANISMS), "mechanism codes must be unique"


def mechanism(name: str) -> Mechanism:
    """Look a mechanism up by its canonical name."""
    try:
        return MECHANISMS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown mechanism {name!r} (valid: {', '.join(MECHANISMS)})") from None


def mechanism_by_code(code: str) -> Mechanism:
    try:
        return BY_CODE[code]
    except KeyError:
        raise ConfigError(f"unknown layout letter {code!r} (valid: {''.join(BY_CODE)})") from None
