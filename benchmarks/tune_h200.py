"""Tuned vs default kernel configs per op on the GPU (issue 8).

    python benchmarks/tune_h200.py OUT.json [--seq-len 4096] [--batch-tokens 16384] [--trials 10]
                                   [--budget-s 25] [--storage sqlite:////tmp/bench.db]

One layer of each kind (full, sliding window 1024, GLA, Gated DeltaNet) at the target shape
(bf16, d_model 1024, 8 heads of 128); for each op the tuner searches the Triton config space
(exhaustive when small, Optuna TPE otherwise; a time budget per op), times forward + backward
with do_bench medians through the benchmark cache, and checks the winner against the torch
backend. The JSON is rewritten after every op, so a run cut short keeps what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from attnsearch.evaluators import tuner  # noqa: E402
from attnsearch.evaluators.microbench import environment_info  # noqa: E402
from attnsearch.space import ArchConfig, LayerSpec  # noqa: E402
from attnsearch.storage.bench_cache import BenchCache  # noqa: E402

LAYERS = [("full", {}), ("sliding_window", {"window": 1024}), ("gla", {}), ("gated_deltanet", {})]
T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seq-len", type=int, default=4096)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--d-model", type=int, default=1024)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--budget-s", type=float, default=25.0)
    ap.add_argument("--storage", default=None)
    ap.add_argument("--only", default=None, help="comma-separated mechanisms")
    args = ap.parse_args()
    env = environment_info()
    cache = BenchCache(args.storage)
    report = {"env": env, "shape": {"seq_len": args.seq_len, "batch_tokens": args.batch_tokens,
                                    "d_model": args.d_model, "n_heads": args.heads, "head_dim": args.head_dim,
                                    "dtype": "bf16"},
              "trials_per_op": args.trials, "budget_s_per_op": args.budget_s, "ops": []}
    wanted = set(args.only.split(",")) if args.only else None
    for mech, params in LAYERS:
        if wanted and mech not in wanted:
            continue
        arch = ArchConfig(d_model=args.d_model, n_heads=args.heads, head_dim=args.head_dim, n_layers=1,
                          layers=[LayerSpec(mechanism=mech, params=params)], max_seq_len=args.seq_len,
                          vocab_size=32000)
        t0 = time.time()
        try:
            out = tuner.tune_arch(arch, args.seq_len, args.batch_tokens, "bf16", cache=cache, n_trials=args.trials,
                                  time_budget_s=args.budget_s, environment=env, progress=log)
            r = next(iter(out["ops"].values()))
            row = {"mechanism": mech, "params": params, "op": r["op"], "method": r["method"],
                   "space_size": r["space_size"], "n_timed": r["n_timed"], "n_skipped": r["n_skipped"],
                   "budget_exhausted": r["budget_exhausted"],
                   "default_config": r["default_config"], "default_ms": (r["default_stats"] or {}).get("median_ms"),
                   "default_spread_ms": [(r["default_stats"] or {}).get("p20_ms"), (r["default_stats"] or {}).get("p80_ms")],
                   "tuned_config": r["best_config"], "tuned_ms": (r["best_stats"] or {}).get("median_ms"),
                   "tuned_spread_ms": [(r["best_stats"] or {}).get("p20_ms"), (r["best_stats"] or {}).get("p80_ms")],
                   "speedup": r["speedup"], "check": r["check"],
                   "skip_reasons": sorted({t["skipped"] for t in r["trials"] if t["skipped"]})[:8],
                   "wall_s": time.time() - t0}
        except Exception as exc:  # noqa: BLE001 - record and go on with the next op
            row = {"mechanism": mech, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                   "wall_s": time.time() - t0}
        report["ops"].append(row)
        report["cache"] = {"hits": cache.hits, "misses": cache.misses, "entries": len(cache)}
        log(json.dumps({k: row.get(k) for k in ("mechanism", "op", "default_ms", "tuned_ms", "speedup", "error")}))
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=str)
        torch.cuda.empty_cache()
    log("done")


if __name__ == "__main__":
    main()
