"""Measured throughput on the GPU: per-layer microbenchmarks at the target shape, composed.

For an ArchConfig at the target (batch B = batch_tokens // seq_len sequences of seq_len T):

- every layer's mixer is timed in three phases: ``train`` (forward + backward of [B, T, d]),
  ``prefill`` (forward at the target context, filling a fresh decode cache) and ``decode`` (one
  step at position T - 1 with a cache filled by T - 1 tokens);
- the rest of a block (two RMSNorms, SwiGLU MLP, residual adds) and the ends of the model
  (embedding, final norm, LM head, cross-entropy) are timed once per shape: layers share them;
- each timing is the median of ``triton.testing.do_bench`` (warm-up first; L2 flushed between
  runs) on fresh random inputs; when one input set fits in L2, several sets are rotated so
  that no run finds its inputs in cache;
- every timing goes through the benchmark cache (``attnsearch.storage.bench_cache``), keyed by
  GPU, versions, part, mechanism params, shape, dtype and kernel config: a key already there
  is never timed again.

Composition (``compose``)::

    train_s   = sum(mixer.train)   + n_layers * dense.train   + head.train
    prefill_s = sum(mixer.prefill) + n_layers * dense.prefill + head.prefill
    decode_s  = sum(mixer.decode)  + n_layers * dense.decode  + head.decode
    tokens/s: train B*T / train_s, prefill B*T / prefill_s, decode B / decode_s

``benchmarks/throughput_model.py`` checks ``train_s`` against timing the whole HybridLM.

Timing isolation: ``run_isolated`` runs a benchmark as a Ray task that takes a whole GPU
(``num_gpus=1``: no proxy training, which holds a fraction, can share it) and, where the
cluster defines it, one ``bench_slot`` per GPU (each benchmark holds a whole GPU and a slot; start
a node with N GPUs with ``ray start --resources='{"bench_slot": N}'``, or
``ray.init(resources=node_resources(N))``).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from attnsearch.storage.bench_cache import (BenchKey, BenchStats, MemoryBenchCache, current_gpu_name,
                                            software_versions, stats_from_samples)

PHASES = ("train", "prefill", "decode")
BENCH_RESOURCE = "bench_slot"
MAX_ROTATED_SETS = 8
DEFAULT_L2_BYTES = 50 * 2 ** 20          # H100/H200 L2; the device's own size is used when known


DTYPE_NAMES = ("bf16", "fp16", "fp32")


def torch_dtype(name: str):
    """torch dtype of a dtype name (bf16, fp16, fp32)."""
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise ValueError(f"dtype {name!r} not allowed (allowed: {', '.join(DTYPE_NAMES)})")
    return table[name]


def environment_info(device=None) -> dict:
    """The parts of a cache key that describe where timings were made."""
    return {"gpu": current_gpu_name(device), "versions": software_versions()}


@dataclass(frozen=True)
class TargetShape:
    batch: int
    seq_len: int
    dtype: str = "bf16"

    @classmethod
    def from_target(cls, seq_len: int, batch_tokens: int | None = None, dtype: str = "bf16") -> "TargetShape":
        if not isinstance(seq_len, int) or isinstance(seq_len, bool) or seq_len < 2:
            raise ValueError(f"seq_len must be an integer >= 2, got {seq_len!r}")
        if batch_tokens is not None and (not isinstance(batch_tokens, int) or batch_tokens < 1):
            raise ValueError(f"batch_tokens must be a positive integer, got {batch_tokens!r}")
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype {dtype!r} not allowed (allowed: {', '.join(DTYPE_NAMES)})")
        return cls(max(1, (batch_tokens or seq_len) // seq_len), seq_len, dtype)

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len


# ----------------------------------------------------------------------------- keys

def _dims(arch) -> dict:
    return {"d_model": arch.d_model, "n_heads": arch.n_heads, "head_dim": arch.head_dim,
            "v_head_dim": arch.v_head_dim}


def decode_timing(env) -> str:
    """How decode steps are timed where ``env`` was measured: replays of a captured CUDA graph on
    a GPU (what a serving stack runs: one decode step costs its kernels, not Python's launches),
    eager calls on the CPU. Part of every decode key, so timings of the two never mix."""
    return "eager" if env["gpu"] == "cpu" else "cuda_graph"


def _op(part: str, phase: str, env) -> str:
    return f"{part}.{phase}" + (f"[{decode_timing(env)}]" if phase == "decode" else "")


def mixer_key(env, arch, layer, phase: str, shape: TargetShape) -> BenchKey:
    return BenchKey(gpu=env["gpu"], versions=env["versions"], op=_op("mixer", phase, env),
                    mechanism={"mechanism": layer.mechanism, "params": layer.params},
                    shape={**_dims(arch), "batch": shape.batch, "seq_len": shape.seq_len,
                           "rope_theta": arch.rope_theta},
                    dtype=shape.dtype, config=dict(layer.kernel_config or {}))


def dense_key(env, arch, phase: str, shape: TargetShape) -> BenchKey:
    return BenchKey(gpu=env["gpu"], versions=env["versions"], op=_op("dense", phase, env), mechanism={},
                    shape={"d_model": arch.d_model, "mlp_hidden": arch.mlp_hidden_dim, "batch": shape.batch,
                           "seq_len": shape.seq_len}, dtype=shape.dtype)


def head_key(env, arch, phase: str, shape: TargetShape) -> BenchKey:
    return BenchKey(gpu=env["gpu"], versions=env["versions"], op=_op("head", phase, env), mechanism={},
                    shape={"d_model": arch.d_model, "vocab_size": arch.vocab_size, "batch": shape.batch,
                           "seq_len": shape.seq_len, "tie_embeddings": arch.tie_embeddings},
                    dtype=shape.dtype)


# ----------------------------------------------------------------------------- composition

@dataclass
class Composition:
    """Per-part times (ms) and the model figures composed from them."""
    batch: int
    seq_len: int
    mixer_ms: dict                        # phase -> [per-layer ms]
    dense_ms: dict                        # phase -> ms of one block's non-mixer part
    head_ms: dict                         # phase -> ms of embedding + final norm + head (+ loss)
    n_layers: int
    step_ms: dict = field(default_factory=dict)
    tokens_per_s: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def compose(mixer_ms: dict, dense_ms: dict, head_ms: dict, n_layers: int, batch: int, seq_len: int) -> Composition:
    """Model step times and tokens/s from part times (see the module docstring)."""
    comp = Composition(batch, seq_len, {p: list(v) for p, v in mixer_ms.items()}, dict(dense_ms),
                       dict(head_ms), n_layers)
    for phase, layers in mixer_ms.items():
        if len(layers) != n_layers:
            raise ValueError(f"mixer_ms[{phase!r}] must have one time per layer ({n_layers}), got {len(layers)}")
        step = sum(layers) + n_layers * dense_ms[phase] + head_ms[phase]
        comp.step_ms[phase] = step
        made = batch if phase == "decode" else batch * seq_len       # decode: one token per sequence
        comp.tokens_per_s[phase] = made / (step / 1e3) if step > 0 else math.inf
    return comp


def composition_error(composed_ms: float, whole_ms: float) -> float:
    """Relative error of the composed step time against timing the whole model."""
    if whole_ms <= 0:
        raise ValueError(f"whole_ms must be positive, got {whole_ms}")
    return (composed_ms - whole_ms) / whole_ms


# ----------------------------------------------------------------------------- timing

def l2_bytes(device=None) -> int:
    import torch

    if torch.cuda.is_available():
        size = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0)
        if size:
            return int(size)
    return DEFAULT_L2_BYTES


def rotation_count(set_bytes: int, l2: int) -> int:
    """How many input sets to rotate: one when a set overflows L2, else enough to span 2x L2."""
    if set_bytes <= 0:
        raise ValueError(f"set_bytes must be positive, got {set_bytes}")
    if set_bytes > l2:
        return 1
    return max(2, min(MAX_ROTATED_SETS, math.ceil(2 * l2 / set_bytes)))


def _tensor_bytes(obj) -> int:
    import torch

    if torch.is_tensor(obj):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def rotating(make_inputs: Callable[[], object], run: Callable[[object], None], l2: int) -> Callable[[], None]:
    """A callable that runs ``run`` on fresh input sets in turn (see rotation_count)."""
    first = make_inputs()
    sets = [first] + [make_inputs() for _ in range(rotation_count(max(1, _tensor_bytes(first)), l2) - 1)]
    state = {"i": 0}

    def fn():
        inputs = sets[state["i"] % len(sets)]
        state["i"] += 1
        run(inputs)
    fn.n_sets = len(sets)
    return fn


def default_timer(warmup_ms: int = 25, rep_ms: int = 100) -> Callable[[Callable[[], None]], BenchStats]:
    def timer(fn):
        import triton.testing

        samples = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="all")
        return stats_from_samples(samples if isinstance(samples, (list, tuple)) else [samples])
    return timer


# ----------------------------------------------------------------------------- parts

class DenseRest:
    """The rest of one block around its mixer: residual adds, MLP norm, SwiGLU (the mixer's
    own pre-norm is timed with the mixer, where its input comes from)."""

    def __init__(self, arch, device, dtype):
        from attnsearch.models.common import RMSNorm, SwiGLU

        self.mlp_norm = RMSNorm(arch.d_model, arch.norm_eps).to(device=device, dtype=dtype)
        self.mlp = SwiGLU(arch.d_model, arch.mlp_hidden_dim).to(device=device, dtype=dtype)

    def parameters(self):
        for m in (self.mlp_norm, self.mlp):
            yield from m.parameters()

    def __call__(self, x, mixer_out):
        h = x + mixer_out
        return h + self.mlp(self.mlp_norm(h))


class HeadEnds:
    """Embedding, final norm, LM head (tied or not), and the loss when training."""

    def __init__(self, arch, device, dtype):
        import torch
        from torch import nn

        from attnsearch.models.common import RMSNorm

        self.embed = nn.Embedding(arch.vocab_size, arch.d_model).to(device=device, dtype=dtype)
        self.norm = RMSNorm(arch.d_model, arch.norm_eps).to(device=device, dtype=dtype)
        self.lm_head = nn.Linear(arch.d_model, arch.vocab_size, bias=False).to(device=device, dtype=dtype)
        if arch.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self.vocab = arch.vocab_size
        self._torch = torch

    def parameters(self):
        seen = set()
        for m in (self.embed, self.norm, self.lm_head):
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def logits(self, tokens):
        return self.lm_head(self.norm(self.embed(tokens)))


def captured(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` captured into a CUDA graph: the returned callable replays its kernels with no
    Python or launch overhead in between. Warm-up runs on a side stream first, as capture needs."""
    import torch

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()

    def replay():                         # the closure keeps the graph and its memory pool alive
        graph.replay()
    return replay


def _measure(cache, key: BenchKey, make_fn: Callable[[], Callable[[], None]], timer,
             on_gpu: bool = False) -> BenchStats:
    def measure():
        fn = make_fn()
        fn()                              # compile / autotune / allocate outside the timing
        if on_gpu and key.op.endswith("[cuda_graph]"):
            fn = captured(fn)
        return timer(fn)
    stats, _hit = cache.get_or_time(key, measure)
    return stats


def _mixer_fns(arch, layer, shape: TargetShape, device, dtype, l2):
    """phase -> factory of a callable timing that phase of this layer's mixer."""
    import torch

    from attnsearch.models import build_mixer

    from attnsearch.models.common import RMSNorm

    torch.manual_seed(0)
    mixer = build_mixer(arch, layer, backend="auto").to(device=device, dtype=dtype)
    norm = RMSNorm(arch.d_model, arch.norm_eps).to(device=device, dtype=dtype)   # the block's pre-norm
    B, T, d = shape.batch, shape.seq_len, arch.d_model
    params = list(mixer.parameters()) + list(norm.parameters())

    def train():
        def make():
            return (torch.randn(B, T, d, device=device, dtype=dtype, requires_grad=True),
                    torch.randn(B, T, d, device=device, dtype=dtype))

        def run(inputs):
            x, grad = inputs
            x.grad = None
            for p in params:
                p.grad = None
            mixer(norm(x)).backward(grad)
        return rotating(make, run, l2)

    def prefill():
        def make():
            return torch.randn(B, T, d, device=device, dtype=dtype)

        def run(x):
            with torch.no_grad():
                mixer(norm(x), mixer.init_cache(B, device, dtype))
        return rotating(make, run, l2)

    def decode():
        with torch.no_grad():
            cache = mixer.init_cache(B, device, dtype)
            mixer(torch.randn(B, T - 1, d, device=device, dtype=dtype), cache)

        def make():
            return torch.randn(B, d, device=device, dtype=dtype)

        def run(x):
            with torch.no_grad():
                mixer.step(norm(x), dict(cache), T - 1)   # a shallow copy: step replaces, never mutates
        return rotating(make, run, l2)

    return {"train": train, "prefill": prefill, "decode": decode}


def _dense_fns(arch, shape: TargetShape, device, dtype, l2):
    import torch

    rest = DenseRest(arch, device, dtype)
    params = list(rest.parameters())
    B, T, d = shape.batch, shape.seq_len, arch.d_model

    def train():
        def make():
            return (torch.randn(B, T, d, device=device, dtype=dtype, requires_grad=True),
                    torch.randn(B, T, d, device=device, dtype=dtype, requires_grad=True),
                    torch.randn(B, T, d, device=device, dtype=dtype))

        def run(inputs):
            x, m, grad = inputs
            x.grad = m.grad = None
            for p in params:
                p.grad = None
            rest(x, m).backward(grad)
        return rotating(make, run, l2)

    def forward_at(rows):
        def factory():
            def make():
                return (torch.randn(B, rows, d, device=device, dtype=dtype),
                        torch.randn(B, rows, d, device=device, dtype=dtype))

            def run(inputs):
                with torch.no_grad():
                    rest(*inputs)
            return rotating(make, run, l2)
        return factory

    return {"train": train, "prefill": forward_at(T), "decode": forward_at(1)}


def _head_fns(arch, shape: TargetShape, device, dtype, l2):
    import torch
    import torch.nn.functional as F

    ends = HeadEnds(arch, device, dtype)
    params = list(ends.parameters())
    B, T, V = shape.batch, shape.seq_len, arch.vocab_size

    def tokens(*size):
        return torch.randint(0, V, size, device=device)

    def train():
        def make():
            return tokens(B, T), tokens(B, T)

        def run(inputs):
            x, y = inputs
            for p in params:
                p.grad = None
            logits = ends.logits(x)
            F.cross_entropy(logits.float().view(-1, V), y.view(-1)).backward()
        return rotating(make, run, l2)

    def prefill():
        def run(x):
            with torch.no_grad():
                ends.logits(x)
        return rotating(lambda: tokens(B, T), run, l2)

    def decode():
        def run(x):
            with torch.no_grad():
                ends.logits(x)
        return rotating(lambda: tokens(B), run, l2)

    return {"train": train, "prefill": prefill, "decode": decode}


# ----------------------------------------------------------------------------- the measurement

def measure_parts(arch, shape: TargetShape, *, cache=None, timer=None, device="cuda", phases=PHASES,
                  environment: dict | None = None) -> Composition:
    """Time every part of ``arch`` at ``shape`` (through the cache) and compose them."""
    import torch

    for phase in phases:
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r} not allowed (allowed: {', '.join(PHASES)})")
    env = environment or environment_info(device)
    cache = cache if cache is not None else MemoryBenchCache()
    timer = timer or default_timer()
    dtype = torch_dtype(shape.dtype)
    on_gpu = str(device).startswith("cuda")
    l2 = l2_bytes(device) if on_gpu else DEFAULT_L2_BYTES
    mixer_ms = {p: [] for p in phases}
    by_layer: dict[str, dict] = {}
    for layer in arch.layers:
        keys = {p: mixer_key(env, arch, layer, p, shape) for p in phases}
        sig = "|".join(keys[p].digest() for p in phases)
        if sig not in by_layer:
            fns = None
            times = {}
            for p in phases:
                if cache.get(keys[p]) is None and fns is None:
                    fns = _mixer_fns(arch, layer, shape, device, dtype, l2)
                times[p] = _measure(cache, keys[p], (fns or {}).get(p), timer, on_gpu).median_ms
            by_layer[sig] = times
            del fns
        for p in phases:
            mixer_ms[p].append(by_layer[sig][p])
    dense, head = {}, {}
    dense_fns = head_fns = None
    for p in phases:
        dk, hk = dense_key(env, arch, p, shape), head_key(env, arch, p, shape)
        if dense_fns is None and cache.get(dk) is None:
            dense_fns = _dense_fns(arch, shape, device, dtype, l2)
        dense[p] = _measure(cache, dk, (dense_fns or {}).get(p), timer, on_gpu).median_ms
        if head_fns is None and cache.get(hk) is None:
            head_fns = _head_fns(arch, shape, device, dtype, l2)
        head[p] = _measure(cache, hk, (head_fns or {}).get(p), timer, on_gpu).median_ms
    if on_gpu:
        torch.cuda.empty_cache()
    return compose(mixer_ms, dense, head, arch.n_layers, shape.batch, shape.seq_len)


def compose_from_cache(arch, shape: TargetShape, cache, environment: dict,
                       phases=PHASES) -> Composition | None:
    """The composition of ``arch`` from cached timings alone, or None when any part is missing.

    Pure lookups (no torch, no GPU): the driver uses it to skip a benchmark task when every
    layer kind of a trial was timed before, under the exact keys ``measure_parts`` writes."""
    mixer_ms = {p: [] for p in phases}
    for layer in arch.layers:
        for p in phases:
            stats = cache.get(mixer_key(environment, arch, layer, p, shape))
            if stats is None:
                return None
            mixer_ms[p].append(stats.median_ms)
    dense, head = {}, {}
    for p in phases:
        d = cache.get(dense_key(environment, arch, p, shape))
        h = cache.get(head_key(environment, arch, p, shape))
        if d is None or h is None:
            return None
        dense[p], head[p] = d.median_ms, h.median_ms
    return compose(mixer_ms, dense, head, arch.n_layers, shape.batch, shape.seq_len)


def measure_peak_memory(arch, shape: TargetShape, device="cuda") -> dict:
    """Peak GPU memory of one training step (forward + loss + backward) of the whole model,
    beside the exact decode-state formula and the bytes a filled decode cache really holds."""
    import torch
    import torch.nn.functional as F

    from attnsearch.models import build_model, cache_state_bytes

    from .memory import evaluate_memory

    dtype = torch_dtype(shape.dtype)
    torch.manual_seed(0)
    model = build_model(arch).to(device=device, dtype=dtype)
    tokens = torch.randint(0, arch.vocab_size, (shape.batch, shape.seq_len), device=device)
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    logits = model(tokens)
    F.cross_entropy(logits.float().view(-1, arch.vocab_size), tokens.view(-1)).backward()
    del logits
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        cache = model.init_cache(1, device, dtype)
        model(tokens[:1], cache)
        held = cache_state_bytes(cache)
    formula = evaluate_memory(arch, shape.seq_len, shape.dtype)
    del model, cache
    torch.cuda.empty_cache()
    return {"peak_train_bytes": int(peak), "weights_bytes_before": int(before),
            "state_bytes_formula": int(formula.state_bytes), "state_bytes_measured": int(held),
            "context_len": shape.seq_len, "batch": shape.batch}


def measured_throughput(arch, seq_len: int, batch_tokens: int | None = None, gpu_name: str | None = None,
                        dtype: str = "bf16", *, cache=None, timer=None, device="cuda", tune: bool = False,
                        tune_trials: int = 16, tune_budget_s: float | None = None, measure_memory: bool = False,
                        tuned: dict | None = None, environment: dict | None = None):
    """Throughput mode ``measured`` (``evaluators.throughput.evaluate_throughput``): tokens/s
    composed from per-part GPU timings, optionally after tuning each layer's kernel config
    (``tuned``: configs already chosen per layer signature, applied instead of tuning again)."""
    import torch

    from .throughput import ThroughputResult

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("throughput mode 'measured' needs a CUDA GPU on the worker "
                         "(use 'estimated' or 'measured-cpu' without one)")
    shape = TargetShape.from_target(seq_len, batch_tokens, dtype)
    env = environment or environment_info(device)
    cache = cache if cache is not None else MemoryBenchCache()
    detail: dict = {"gpu": env["gpu"], "versions": env["versions"], "dtype": dtype,
                    "requested_gpu": gpu_name}
    if tune:
        from .tuner import tune_arch

        out = tune_arch(arch, seq_len, batch_tokens, dtype, cache=cache, device=device, n_trials=tune_trials,
                        environment=env, time_budget_s=tune_budget_s, known=tuned, timer=timer)
        arch = out["arch"]
        detail["kernel_configs"] = out["kernel_configs"]
        detail["tuning"] = {sig: {k: r.get(k) for k in ("op", "method", "space_size", "speedup", "n_timed",
                                                        "n_skipped", "best_config")}
                            for sig, r in out["ops"].items()}
    comp = measure_parts(arch, shape, cache=cache, timer=timer, device=device, environment=env)
    detail["composition"] = comp.to_dict()
    if measure_memory:
        detail["memory"] = measure_peak_memory(arch, shape, device)
    detail["cache"] = {"hits": cache.hits, "misses": cache.misses}
    step_s = comp.step_ms["train"] / 1e3
    return ThroughputResult(tokens_per_s=comp.tokens_per_s["train"], mode="measured", step_time_s=step_s,
                            batch=shape.batch, seq_len=shape.seq_len, detail=detail)


# ----------------------------------------------------------------------------- Ray isolation

def node_resources(num_gpus: int = 1) -> dict:
    """Custom resources for a node: one benchmarking slot per GPU (a benchmark also holds its
    whole GPU, so slots only bound how many run at once; none on a node without GPUs)."""
    return {BENCH_RESOURCE: num_gpus} if num_gpus > 0 else {}


def bench_task_options(gpu: bool = True, cluster_resources: dict | None = None) -> dict:
    """Ray options of a benchmark task: a whole GPU, and a bench slot where the cluster has them."""
    opts: dict = {"max_retries": 0, "retry_exceptions": False, "num_cpus": 1}
    if gpu:
        opts["num_gpus"] = 1
    if cluster_resources is None:
        import ray

        cluster_resources = ray.cluster_resources() if ray.is_initialized() else {}
    if cluster_resources.get(BENCH_RESOURCE):
        opts["resources"] = {BENCH_RESOURCE: 1}
    return opts


def bench_remote(fn: Callable, gpu: bool = True):
    """``fn`` as a Ray remote function with the benchmark options. ``max_calls=1``: every
    benchmark runs in a fresh process, so a kernel that faults (a CUDA error leaves the process's
    GPU context unusable) cannot fail the benchmarks after it."""
    import ray

    return ray.remote(max_calls=1)(fn).options(**bench_task_options(gpu))


def benchmark_task(request: dict) -> dict:
    """What a benchmarking Ray task runs: plain dict in, plain dict out (no database access).

    request: {"arch": ArchConfig dict, "seq_len", "batch_tokens", "dtype", "known": cache
    records, "tune": bool, "tuned": {layer signature: kernel config} already chosen,
    "measure_memory": bool}. The result carries ``new_records`` for the
    driver to store, the cache hits/misses, and wall-clock start/end (isolation checks).
    """
    from attnsearch.space.arch import ArchConfig

    from attnsearch.kernels.compile_clock import compile_seconds

    started = time.time()
    compiled0 = compile_seconds()
    cache = MemoryBenchCache(request.get("known", ()))
    arch = ArchConfig.from_dict(request["arch"])
    result = measured_throughput(arch, int(request["seq_len"]), request.get("batch_tokens"),
                                 dtype=request.get("dtype", "bf16"), cache=cache,
                                 tune=bool(request.get("tune", False)),
                                 tune_trials=int(request.get("tune_trials", 16)),
                                 tune_budget_s=request.get("tune_budget_s"),
                                 measure_memory=bool(request.get("measure_memory", False)),
                                 tuned=request.get("tuned"))
    compiled1 = compile_seconds()
    return {"result": result.to_dict(), "new_records": cache.new_records(), "hits": cache.hits,
            "misses": cache.misses, "started_at": started, "ended_at": time.time(),
            "compile_s": None if compiled0 is None or compiled1 is None else compiled1 - compiled0}


def run_isolated(fn: Callable[[dict], dict], request: dict, gpu: bool = True) -> dict:
    """Run ``fn(request)`` as a benchmark task alone on its GPU (see the module docstring)."""
    import ray

    if not ray.is_initialized():
        raise ValueError("run_isolated needs a running Ray cluster (ray.init() first)")
    return ray.get(bench_remote(fn, gpu).remote(request))


class MeasuredThroughputService:
    """Driver-side measured throughput: runs ``benchmark_task`` isolated on a GPU, seeds it with
    the cached records, and stores the new ones in the database (the driver alone writes).

        service = MeasuredThroughputService(url, seq_len=4096, batch_tokens=65536, tune=True)
        metrics = service(arch)    # {"throughput", "throughput_mode": "measured", ...}
    """

    def __init__(self, url: str | None, seq_len: int, batch_tokens: int | None = None, dtype: str = "bf16",
                 tune: bool = True, tune_trials: int = 16, tune_budget_s: float | None = None,
                 measure_memory: bool = False, task: Callable[[dict], dict] = benchmark_task, gpu: bool = True):
        from attnsearch.storage.bench_cache import BenchCache

        TargetShape.from_target(seq_len, batch_tokens, dtype)           # checks the target now
        self.db = BenchCache(url)
        self.known = self.db.records()
        self.request = {"seq_len": seq_len, "batch_tokens": batch_tokens, "dtype": dtype, "tune": tune,
                        "tune_trials": tune_trials, "tune_budget_s": tune_budget_s,
                        "measure_memory": measure_memory}
        self.task, self.gpu = task, gpu
        self.hits = self.misses = 0
        self.intervals: list[tuple[float, float]] = []

    def __call__(self, arch) -> dict:
        out = run_isolated(self.task, {**self.request, "arch": arch.to_dict(), "known": self.known}, self.gpu)
        self.db.store_records(out["new_records"])
        self.known.extend(out["new_records"])
        self.hits += out["hits"]
        self.misses += out["misses"]
        self.intervals.append((out["started_at"], out["ended_at"]))
        res = out["result"]
        detail = res["detail"]
        comp = detail["composition"]
        metrics = {"throughput": res["tokens_per_s"], "throughput_mode": "measured",
                   "prefill_tokens_per_s": comp["tokens_per_s"].get("prefill"),
                   "decode_tokens_per_s": comp["tokens_per_s"].get("decode"),
                   "train_step_ms": comp["step_ms"].get("train"), "bench_gpu": detail["gpu"],
                   "bench_cache_hits": out["hits"], "bench_cache_misses": out["misses"]}
        if "kernel_configs" in detail:
            metrics["kernel_configs"] = detail["kernel_configs"]
        if "memory" in detail:
            metrics["peak_train_bytes"] = detail["memory"]["peak_train_bytes"]
        return metrics

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None
