"""A small search study with MEASURED throughput on the GPU (issue 8).

    python benchmarks/measured_study.py OUT.json [--trials 8] [--timeout 90] [--storage URL]
                                        [--quality synthetic|proxy]

The space (pattern layouts of full / sliding window / GLA / Gated DeltaNet at d_model 1024,
8 layers, 8 heads of 128, context 4096, 16384 tokens a step, bf16) is searched by the normal
ask/tell driver. Throughput comes from ``MeasuredThroughputService``: every trial's layout is
tuned and microbenchmarked in a Ray task holding the whole GPU and the node's ``bench_slot``
(never beside a proxy or another benchmark), seeded with the benchmark cache; the driver stores
the new timings. Quality: ``synthetic`` (the deterministic stand-in of ``search.testing``; cheap,
so the device minutes go to the measurement this issue is about) or ``proxy`` (real proxy
training on the GPU). The JSON holds the Pareto table, the cache hit rate over the study, and
the wall-clock intervals of every benchmark and trial task (checked for overlap).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from attnsearch import search  # noqa: E402
from attnsearch.evaluators import microbench as mb  # noqa: E402
from attnsearch.search.driver import Driver  # noqa: E402

T0 = time.time()

SPACE = {
    "target": {"d_model": 1024, "n_layers": 8, "n_heads": 8, "head_dim": 128, "vocab_size": 32000,
               "context_len": 4096, "batch_tokens": 16384, "dtype": "bf16", "gpu": "H200"},
    "proxy": {"steps": 40, "batch": 16, "eval_sequences": 32, "eval_tokens": 4096, "device": "cuda"},
    "layout": {"mode": "pattern", "periods": [1, 2, 4]},
    "mechanisms": {"full": {}, "sliding_window": {"window": [1024]}, "gla": {}, "gated_deltanet": {}},
    "objectives": ["quality", "throughput"],
    "sampler": {"name": "tpe", "seed": 0},
    "evaluation": {"throughput": "measured", "gpus_per_trial": 0.25, "cpus_per_trial": 1},
    "seed": 0,
}


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def timed_synthetic(request):
    """Synthetic quality, with the task's wall-clock interval (for the isolation check)."""
    import time as _t

    from attnsearch.search.testing import synthetic_evaluate

    start = _t.time()
    out = synthetic_evaluate(request)
    out["metrics"]["task_started_at"] = start
    out["metrics"]["task_ended_at"] = _t.time()
    return out


def timed_proxy(request):
    import time as _t

    from attnsearch.search.worker import evaluate_architecture

    start = _t.time()
    out = evaluate_architecture(request)
    out["metrics"]["task_started_at"] = start
    out["metrics"]["task_ended_at"] = _t.time()
    return out


class MeasuredDriver(Driver):
    """The search driver with measured GPU throughput (what driver.py's measured mode does once
    it calls MeasuredThroughputService; see the issue 8 note)."""

    service: mb.MeasuredThroughputService

    def _analytic_metrics(self, arch):
        metrics = super()._analytic_metrics(arch)
        metrics.update(self.service(arch))
        return metrics


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=90.0)
    ap.add_argument("--storage", default=None)
    ap.add_argument("--quality", choices=("synthetic", "proxy"), default="synthetic")
    ap.add_argument("--tune-trials", type=int, default=8)   # as tune_h200.py: same TPE sequence, cache hits
    ap.add_argument("--tune-budget-s", type=float, default=8.0)
    args = ap.parse_args()
    import ray

    ray.init(num_gpus=1, resources=mb.node_resources(1), include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    space = search.load_space(SPACE)
    t = space.target
    url = search.resolve_url(args.storage)
    name = f"measured-{int(time.time())}"
    driver = MeasuredDriver(space, name, url, workers=1, device="cuda",
                            evaluate=timed_synthetic if args.quality == "synthetic" else timed_proxy)
    driver.service = mb.MeasuredThroughputService(url, seq_len=t.context_len, batch_tokens=t.batch_tokens,
                                                  dtype=t.dtype, tune=True, tune_trials=args.tune_trials,
                                                  tune_budget_s=args.tune_budget_s, measure_memory=False)
    log(f"study {name}: cache holds {len(driver.service.known)} records before the study")
    result = driver.run(n_trials=args.trials, timeout=args.timeout,
                        progress_callback=lambda p: log(f"trial {p.last}") if p.last else None)
    rows = search.pareto_table(name, url, all=True)
    front = [r for r in rows if r["pareto"]]
    svc = driver.service

    def overlap(a, b):
        return a[0] < b[1] and b[0] < a[1]

    tasks = [(r["metrics"]["task_started_at"], r["metrics"]["task_ended_at"]) for r in rows
             if r.get("metrics") and "task_started_at" in r["metrics"] and r.get("reused_from") is None]
    overlaps = sum(1 for b in svc.intervals for x in tasks + [i for i in svc.intervals if i is not b] if overlap(b, x))
    report = {"study": name, "stop_reason": result.stop_reason, "complete": result.complete, "failed": result.failed,
              "pruned": result.pruned, "reused": result.reused, "wall_s": result.wall_s,
              "cache": {"hits": svc.hits, "misses": svc.misses, "hit_rate": svc.hit_rate,
                        "records_after": len(svc.db)},
              "isolation": {"benchmarks": len(svc.intervals), "trial_tasks": len(tasks), "overlaps": overlaps},
              "pareto": [{"number": r["number"], "layout": r["layout"], "values": r["values"],
                          "prefill_tokens_per_s": r["metrics"].get("prefill_tokens_per_s"),
                          "decode_tokens_per_s": r["metrics"].get("decode_tokens_per_s"),
                          "state_bytes": r["metrics"].get("state_bytes"),
                          "throughput_estimated": r["metrics"].get("throughput_estimated"),
                          "kernel_configs": r["metrics"].get("kernel_configs")} for r in front],
              "trials": [{"number": r["number"], "state": r["state"], "layout": r["layout"], "values": r["values"],
                          "fail_reason": r.get("fail_reason"),
                          "bench_hits": (r.get("metrics") or {}).get("bench_cache_hits"),
                          "bench_misses": (r.get("metrics") or {}).get("bench_cache_misses")} for r in rows]}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2, default=str)
    log(json.dumps({k: report[k] for k in ("stop_reason", "complete", "failed", "cache", "isolation")}))
    for r in report["pareto"]:
        log(f"pareto #{r['number']} {r['layout']}: {r['values']}")
    ray.shutdown()


if __name__ == "__main__":
    main()
