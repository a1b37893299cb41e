"""Measured throughput inside a study (``evaluation.throughput: measured``).

The driver keeps the GPU microbenchmarks apart from proxy training:

- a trial whose every part (each layer kind with its tuned kernel config, the dense block, the
  model's ends) is already in the benchmark cache is composed right here, in the driver, from
  the cached medians: no GPU time at all, and the common case once a study has seen its layer
  kinds;
- otherwise the driver sends ``evaluators.microbench.benchmark_task`` as a Ray task that takes
  a whole GPU and the node's ``bench_slot`` (so it never shares a card with a proxy or another
  benchmark), and stops handing out proxy training until it has run: without that pause the
  fractional proxy tasks would keep the GPU partly busy and the benchmark would starve.

A benchmark task tunes the ``auto`` kernel parameters of layer kinds not tuned before in this
study (``tune``), times what the cache lacks, and returns its new cache records, which the
driver stores (workers never write the database). The tuned config per layer kind is kept for
the rest of the study and written with every trial that uses it (``run.kernel_configs``), so the
export and ``build_model`` get the tuned kernels.
"""
from __future__ import annotations

import time
from typing import Callable

from attnsearch.evaluators.microbench import (TargetShape, bench_remote, benchmark_task,
                                              compose_from_cache)
from attnsearch.evaluators.tuner import layer_signature
from attnsearch.storage.bench_cache import BenchCache, BenchKey, BenchStats, MemoryBenchCache


class MeasuredSpeed:
    """Driver-side state of measured throughput for one study run."""

    def __init__(self, url: str, target, *, tune: bool = True, tune_trials: int = 16,
                 tune_budget_s: float | None = None, task: Callable[[dict], dict] = benchmark_task,
                 gpu: bool = True):
        self.shape = TargetShape.from_target(int(target.context_len), target.batch_tokens, target.dtype)
        self.db = BenchCache(url)
        self.records = self.db.records()        # what a benchmark task is seeded with
        self.cache = MemoryBenchCache(self.records)
        self.request = {"seq_len": self.shape.seq_len, "batch_tokens": target.batch_tokens,
                        "dtype": self.shape.dtype, "tune": tune, "tune_trials": tune_trials,
                        "tune_budget_s": tune_budget_s}
        self.tune = tune
        self.task, self.gpu = task, gpu
        self.env: dict | None = None          # GPU name and versions of the benchmarking workers
        self.tuned: dict[str, dict] = {}       # layer signature -> tuned kernel config
        self.tuning: dict[str, dict] = {}      # layer signature -> tuner summary (speed-up, method)
        self.trials_composed = 0               # trials served from the cache without a GPU task
        self.trials_benchmarked = 0            # trials whose own benchmark task gave their speed
        self.bench_tasks = 0                   # benchmark tasks run (one may serve several trials)
        self.part_hits = 0                     # part timings found in the cache
        self.part_misses = 0                   # part timings that had to be made on a GPU
        self.bench_s = 0.0                     # wall time of benchmark tasks (GPU held)
        self.compile_s = 0.0                   # Triton compilation inside them (part of bench_s)
        self.intervals: list[tuple[float, float]] = []

    # ------------------------------------------------------------------ cache-only path
    @staticmethod
    def _with_configs(arch, configs):
        """``arch`` with one kernel config per layer."""
        return arch.with_layers([{**l.model_dump(), "kernel_config": c} for l, c in zip(arch.layers, configs)])

    def _tuned_arch(self, arch):
        """``arch`` with the study's tuned kernel configs, or None if a layer kind is untuned."""
        if not self.tune:
            return arch
        configs = []
        for layer in arch.layers:
            cfg = self.tuned.get(layer_signature(layer))
            if cfg is None:
                return None
            configs.append(cfg)
        return self._with_configs(arch, configs)

    def compose(self, arch) -> dict | None:
        """Metrics from cached timings alone, or None when a benchmark task is needed."""
        if self.env is None:
            return None
        tuned = self._tuned_arch(arch)
        if tuned is None:
            return None
        comp = compose_from_cache(tuned, self.shape, self.cache, self.env)
        if comp is None:
            return None
        parts = 3 * (len(arch.layers) + 2)
        self.part_hits += parts
        self.trials_composed += 1
        return self._metrics(comp.to_dict(), tuned, hits=parts, misses=0, composed=True)

    # ------------------------------------------------------------------ benchmark tasks
    @staticmethod
    def union(archs: list):
        """One architecture holding each distinct layer kind of ``archs`` once: benchmarking it
        fills the cache for all of them in one task (the composition of the union itself means
        nothing; each trial composes its own from the cache)."""
        if len(archs) == 1:
            return archs[0]
        kinds: dict[str, object] = {}
        for arch in archs:
            for layer in arch.layers:
                kinds.setdefault(layer_signature(layer), layer)
        return archs[0].with_layers([layer.model_dump() for layer in kinds.values()])

    @staticmethod
    def split(arch, parts: int) -> list:
        """``arch``'s layers dealt round-robin into at most ``parts`` architectures, one benchmark
        task each, so that a joint benchmark uses every GPU's benchmarking slot at once."""
        parts = max(1, min(parts, len(arch.layers)))
        if parts == 1:
            return [arch]
        groups = [arch.layers[i::parts] for i in range(parts)]
        return [arch.with_layers([layer.model_dump() for layer in group]) for group in groups]

    def submit(self, arch):
        """Start a benchmark task for ``arch`` (a Ray ObjectRef)."""
        request = {**self.request, "arch": arch.to_dict(), "known": self.records,
                   "tuned": dict(self.tuned)}
        return bench_remote(self.task, self.gpu).remote(request)

    def absorb(self, arch, out: dict, joint: bool = False) -> dict:
        """Take a finished benchmark task's output: store its records, learn the environment and
        the tuned configs, and return the trial's metrics."""
        records = out.get("new_records") or []
        self.db.store_records(records)
        for rec in records:
            if self.cache.put(BenchKey(**rec["key"]), BenchStats(**rec["stats"])):
                self.records.append(rec)
        result = out["result"]
        detail = result.get("detail") or {}
        if self.env is None and detail.get("gpu"):
            self.env = {"gpu": detail["gpu"], "versions": detail.get("versions") or {}}
        configs = detail.get("kernel_configs")
        if configs:
            for layer, cfg in zip(arch.layers, configs):
                self.tuned.setdefault(layer_signature(layer), dict(cfg))
        for sig, summary in (detail.get("tuning") or {}).items():
            self.tuning.setdefault(sig, summary)
        self.part_hits += int(out.get("hits", 0))
        self.part_misses += int(out.get("misses", 0))
        self.bench_tasks += 1
        if not joint:
            self.trials_benchmarked += 1
        if out.get("compile_s"):
            self.compile_s += float(out["compile_s"])
        if out.get("started_at") and out.get("ended_at"):
            self.intervals.append((out["started_at"], out["ended_at"]))
            self.bench_s += out["ended_at"] - out["started_at"]
        tuned = self._with_configs(arch, configs) if configs else arch
        return self._metrics(detail.get("composition") or {}, tuned, hits=int(out.get("hits", 0)),
                             misses=int(out.get("misses", 0)), composed=False)

    def _metrics(self, comp: dict, tuned_arch, *, hits: int, misses: int, composed: bool) -> dict:
        tps = comp.get("tokens_per_s") or {}
        step = comp.get("step_ms") or {}
        metrics = {"throughput": tps.get("train"), "throughput_mode": "measured",
                   "prefill_tokens_per_s": tps.get("prefill"), "decode_tokens_per_s": tps.get("decode"),
                   "train_step_ms": step.get("train"), "bench_gpu": (self.env or {}).get("gpu"),
                   "bench_cache_hits": hits, "bench_cache_misses": misses,
                   "bench_source": "cache" if composed else "benchmark"}
        # only tuned configs are worth writing down: untuned layers run the per-GPU defaults
        kernel_configs = [dict(l.kernel_config or {}) for l in tuned_arch.layers] if self.tune else None
        return {"metrics": metrics, "kernel_configs": kernel_configs}

    # ------------------------------------------------------------------ reporting
    @property
    def hit_rate(self) -> float | None:
        total = self.part_hits + self.part_misses
        return self.part_hits / total if total else None

    def summary(self) -> dict:
        return {"trials_composed_from_cache": self.trials_composed,
                "trials_benchmarked": self.trials_benchmarked, "bench_tasks": self.bench_tasks, "part_hits": self.part_hits,
                "part_misses": self.part_misses, "hit_rate": self.hit_rate, "bench_s": round(self.bench_s, 3),
                "bench_compile_s": round(self.compile_s, 3),
                "gpu": (self.env or {}).get("gpu"), "tuned_layer_kinds": len(self.tuned),
                "tuning": self.tuning, "intervals": [list(iv) for iv in self.intervals], "at": time.time()}
