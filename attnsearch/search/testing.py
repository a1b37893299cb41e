"""A synthetic evaluation for tests, benchmarks and fault drills of the search service.

``synthetic_evaluate`` stands in for proxy training where the *service* is under test (driver,
storage, Ray plumbing), not the model: it scores an architecture with a cheap, deterministic
formula (so dedup, resume and Pareto results are checkable) and can inject the faults real
clusters produce. It is never used by a real study unless passed explicitly as ``evaluate=``.

Faults (``faults={trial_number: kind}`` or ``fault_every={kind: n}``):
``raise`` (Python exception), ``kill`` (SIGKILL of the worker process), ``diverge`` (NaN loss),
``oom`` (a MemoryError), ``hang`` (sleeps far past any trial time limit), ``inf`` (infinite
quality).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import time

# mechanism -> (base quality, per-log2(window) bonus); made up but monotone in the right ways:
# full attention best, windows better when wider, linear kinds cheaper and weaker at recall
_BASE = {
    "full": 0.90, "sliding_window": 0.62, "dilated": 0.70, "random_sparse": 0.66, "longformer": 0.72,
    "bigbird": 0.73, "block_topk": 0.80, "linear": 0.50, "performer": 0.48, "cosformer": 0.52,
    "retnet": 0.60, "mamba2": 0.70, "gla": 0.66, "deltanet": 0.72, "gated_deltanet": 0.76,
}


def synthetic_quality(arch: dict) -> float:
    """A deterministic quality in (0, 1) for an ArchConfig dict."""
    layers = arch["layers"]
    score = 0.0
    for layer in layers:
        base = _BASE.get(layer["mechanism"], 0.5)
        window = layer.get("params", {}).get("window")
        if window:
            base += 0.02 * math.log2(max(window, 2)) / 2
        score += base
    score /= len(layers)
    # a few full layers restore most of the recall a hybrid loses (the hybrid literature's point)
    n_full = sum(1 for layer in layers if layer["mechanism"] == "full")
    score += 0.08 * min(n_full, 2) / 2
    digest = hashlib.sha1(json.dumps(layers, sort_keys=True).encode()).digest()
    score += (digest[0] / 255 - 0.5) * 0.01          # tiny deterministic "noise"
    return float(min(max(score, 0.01), 0.99))


def burn_cpu(seconds: float) -> None:
    """Keep one core busy for ``seconds`` of this process's CPU time (a CPU-bound stand-in for
    proxy training, so scaling benchmarks measure cores, not sleeps)."""
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        for i in range(10_000):
            x += i * i


def synthetic_evaluate(request: dict, *, sleep_s: float = 0.0, burn_s: float = 0.0, faults: dict | None = None,
                       fault_every: dict | None = None) -> dict:
    number = request.get("trial_number", -1)
    kind = (faults or {}).get(number)
    for k, n in (fault_every or {}).items():
        if kind is None and n and number % n == n - 1:
            kind = k
    if sleep_s:
        time.sleep(sleep_s)
    if burn_s:
        burn_cpu(burn_s)
    if kind == "raise":
        raise RuntimeError(f"injected failure in trial {number}")
    if kind == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if kind == "oom":
        raise MemoryError("injected out-of-memory")
    if kind == "hang":
        time.sleep(3600)
    if kind == "diverge":
        return {"metrics": {"quality": float("nan")}, "diverged": True, "reason": "loss became NaN at step 3"}
    quality = float("inf") if kind == "inf" else synthetic_quality(request["arch"])
    return {"metrics": {"quality": quality}, "timings": {"synthetic_s": sleep_s + burn_s}}


CPU_BENCH_ENV = {"gpu": "cpu-test", "versions": {"attnsearch": "test"}}


def cpu_bench_task(request: dict) -> dict:
    """``evaluators.microbench.benchmark_task``'s contract on the CPU, for tests of measured mode:
    a stand-in tuner (``chunk_size`` 32 for every linear-family layer kind not tuned before,
    the softmax defaults otherwise) and the real per-part timing and composition code, with
    each part run once and timed by the wall clock."""
    from attnsearch.evaluators.microbench import measured_throughput
    from attnsearch.evaluators.tuner import layer_signature
    from attnsearch.space.arch import ArchConfig
    from attnsearch.space.catalogue import mechanism
    from attnsearch.storage.bench_cache import MemoryBenchCache, stats_from_samples

    started = time.time()
    arch = ArchConfig.from_dict(request["arch"])
    known = dict(request.get("tuned") or {})
    configs, tuning = [], {}
    for layer in arch.layers:
        sig = layer_signature(layer)
        if not request.get("tune", True):
            configs.append(dict(layer.kernel_config or {}))      # tuning off: the defaults
            continue
        if sig not in known:
            linear = mechanism(layer.mechanism).op != "softmax_attention"
            known[sig] = {**({"chunk_size": 32} if linear else {}), **(layer.kernel_config or {})}
            tuning[sig] = {"op": mechanism(layer.mechanism).op, "method": "fixed-for-tests", "speedup": 1.0,
                           "best_config": known[sig]}
        configs.append(dict(known[sig]))
    tuned = arch.with_layers([{**l.model_dump(), "kernel_config": c} for l, c in zip(arch.layers, configs)])

    def timer(fn):
        t0 = time.perf_counter()
        fn()
        return stats_from_samples([(time.perf_counter() - t0) * 1e3])

    cache = MemoryBenchCache(request.get("known", ()))
    result = measured_throughput(tuned, int(request["seq_len"]), request.get("batch_tokens"),
                                 dtype=request.get("dtype", "fp32"), cache=cache, timer=timer, device="cpu",
                                 environment=CPU_BENCH_ENV)
    out = result.to_dict()
    if request.get("tune", True):
        out["detail"].update(kernel_configs=configs, tuning=tuning)
    return {"result": out, "new_records": cache.new_records(), "hits": cache.hits, "misses": cache.misses,
            "started_at": started, "ended_at": time.time()}
