"""A full study on GPUs the way a user runs it (issue 9), with measured throughput (issue 8).

    python benchmarks/gpu_study.py --out-dir OUT [--gpus 1] [--trials 30] [--workers 8]
                                   [--timeout 300] [--storage URL] [--tag NAME]

Target: 24 layers, d_model 2048, 16 heads of 128, context 32768, 65,536 tokens a step, bf16,
H200. Space: pattern layouts over 10 mechanisms (full, sliding window 1024/4096, dynamic block
top-k, BigBird, Linear Transformer, RetNet, Mamba-2, GLA, DeltaNet, Gated DeltaNet), the six
literature baselines first. Quality: the default proxy (``ProxySpec()``) trained on the GPU, each
trial holding ``1/workers`` of a GPU through Ray. Throughput: measured (the driver tunes and
microbenchmarks each new layer kind at the target shape in a Ray task that holds a whole GPU
and the benchmark slot, and composes the rest from the benchmark cache).

Written to OUT (``--tag`` prefixes the names): ``TAG.json`` (figures: trials per hour, GPU busy
fraction sampled with nvidia-smi every 0.5 s, time split, cache hit rate, the tuned-vs-default
speed-up per layer kind, the Pareto table with baselines marked, peak training memory of the
front beside the state-bytes formula), ``TAG.md`` with ``--markdown`` (the same as tables; always
printed) and ``TAG_knee.json``
(the exported knee point). ``--smoke`` runs the same code on the CPU at a tiny target with the
test benchmark task (to check the script, not to measure anything).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

MECHANISMS = {
    "full": {}, "sliding_window": {"window": [1024, 4096]}, "block_topk": {}, "bigbird": {},
    "linear": {}, "retnet": {}, "mamba2": {}, "gla": {}, "deltanet": {}, "gated_deltanet": {},
}
TARGET = {"d_model": 2048, "n_layers": 24, "n_heads": 16, "head_dim": 128, "vocab_size": 32000,
          "context_len": 32768, "batch_tokens": 65536, "dtype": "bf16", "gpu": "H200"}
SMOKE_TARGET = {"d_model": 32, "n_layers": 8, "n_heads": 2, "head_dim": 16, "vocab_size": 64,
                "context_len": 64, "batch_tokens": 128, "dtype": "fp32", "gpu": "H200"}
SMOKE_PROXY = {"d_model": 16, "n_layers": 2, "n_heads": 2, "head_dim": 8, "steps": 3, "batch": 2,
               "eval_sequences": 4, "eval_batch": 4, "eval_tokens": 2048,
               "tasks": {"mqar": {"kind": "mqar", "seq_len": 32, "num_kv_pairs": 4}}}


def space_dict(args) -> dict:
    smoke = args.smoke
    mechs = {k: (dict(v, window=[16, 32]) if k == "sliding_window" and smoke else dict(v))
             for k, v in MECHANISMS.items()}
    return {
        "target": SMOKE_TARGET if smoke else TARGET,
        "proxy": SMOKE_PROXY if smoke else {},
        "layout": {"mode": "pattern", "periods": [1, 2, 3, 4, 6, 8]},
        "mechanisms": mechs,
        "objectives": ["quality", "throughput"],
        "sampler": {"name": "tpe", "seed": args.seed},
        "evaluation": {"throughput": "measured", "gpus_per_trial": round(args.gpus / args.workers, 4),
                       "cpus_per_trial": 1, "tune_kernels": not args.no_tune, "tune_trials": args.tune_trials,
                       "tune_budget_s": args.tune_budget_s,
                       "trial_timeout_s": 1800},
        "seed": args.seed,
    }


class GpuSampler:
    """nvidia-smi's utilization.gpu (percent of time a kernel ran) for every GPU, every period."""

    def __init__(self, period_s: float = 0.5, gpus: int | None = None):
        self.period_s = period_s
        self.gpus = gpus                   # the first N GPUs are the study's (Ray numbers them so)
        # nvidia-smi ignores CUDA_VISIBLE_DEVICES and lists every GPU: keep the study's
        self.visible = [int(x) for x in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if x.strip().isdigit()]
        self.samples: list[tuple[float, list[float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout
                self.samples.append((time.time(), [float(x) for x in out.split()]))
            except Exception:
                pass
            self._stop.wait(self.period_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    def study_gpus(self, v: list[float]) -> list[float]:
        """The study's GPUs of one sample: those CUDA_VISIBLE_DEVICES names, else the first N."""
        if self.visible and all(i < len(v) for i in self.visible):
            v = [v[i] for i in self.visible]
        return v[:self.gpus] if self.gpus else v

    def busy_fraction(self) -> float | None:
        values = [statistics.mean(self.study_gpus(v)) / 100 for _, v in self.samples if v]
        return statistics.mean(values) if values else None


def time_split(study, result, wall_s: float) -> dict:
    """Where the wall time went, summed over trials (GPU-seconds shared by concurrent proxies)."""
    from optuna.trial import TrialState

    proxy_s = proxy_compile_s = 0.0
    for t in study.get_trials(deepcopy=False):
        timings = (t.user_attrs.get("run") or {}).get("timings") or {}
        if t.state in (TrialState.COMPLETE, TrialState.FAIL) and "reused_from" not in t.user_attrs:
            proxy_s += float(timings.get("quality_s") or 0.0)
            proxy_compile_s += float(timings.get("compile_s") or 0.0)
    measured = result.measured or {}
    bench_s = float(measured.get("bench_s") or 0.0)
    return {"wall_s": wall_s, "proxy_training_task_s": proxy_s, "proxy_compile_s": proxy_compile_s,
            "microbench_s": bench_s, "microbench_compile_s": float(measured.get("bench_compile_s") or 0.0),
            "driver_overhead_s": float(sum(result.overhead_s)),
            "note": "proxy seconds are summed over concurrent tasks; microbenchmarks hold the GPU alone"}


def isolation(study, measured: dict) -> dict:
    """Benchmark tasks against proxy tasks, by their wall-clock intervals: no overlap allowed."""
    proxies = []
    for t in study.get_trials(deepcopy=False):
        timings = (t.user_attrs.get("run") or {}).get("timings") or {}
        if "task_started_at" in timings:
            proxies.append((timings["task_started_at"], timings["task_ended_at"]))
    benches = [tuple(iv) for iv in measured.get("intervals") or []]
    overlaps = sum(1 for b in benches for p in proxies if b[0] < p[1] and p[0] < b[1])
    return {"benchmark_tasks": len(benches), "proxy_tasks": len(proxies), "overlaps": overlaps}


def tuning_table(measured: dict) -> list[dict]:
    rows = []
    for sig, r in sorted((measured.get("tuning") or {}).items()):
        kind = json.loads(sig)
        rows.append({"mechanism": kind["mechanism"], "params": kind.get("params"), "op": r.get("op"),
                     "method": r.get("method"), "space_size": r.get("space_size"), "timed": r.get("n_timed"),
                     "skipped": r.get("n_skipped"), "best_config": r.get("best_config"),
                     "speedup_vs_default": r.get("speedup")})
    return rows


def front_memory(rows, study_name, url, smoke: bool) -> list[dict]:
    """Peak training memory of each front trial at the target (a GPU task alone on its card)."""
    if smoke:
        return []
    import ray

    from attnsearch.evaluators import microbench as mb
    from attnsearch.search.export import with_tuned_kernels
    from attnsearch.space.arch import ArchConfig

    def measure(request):
        from attnsearch.evaluators.microbench import TargetShape, measure_peak_memory
        from attnsearch.space.arch import ArchConfig as AC

        import torch

        arch = AC.from_dict(request["arch"])
        tried = []
        batch = request["batch"]
        while batch >= 1:                  # the target batch first; halve it while it does not fit
            try:
                return {**measure_peak_memory(arch, TargetShape(batch, request["seq_len"], "bf16")),
                        "does_not_fit": tried}
            except torch.cuda.OutOfMemoryError as exc:
                tried.append({"batch": batch, "error": str(exc).splitlines()[0][:120]})
                torch.cuda.empty_cache()
                batch //= 2
            except Exception as exc:       # noqa: BLE001 - say what failed, keep the report
                return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", "does_not_fit": tried}
        return {"error": "out of memory even at batch 1", "does_not_fit": tried}

    task = mb.bench_remote(measure, gpu=True)
    out = []
    for row in rows:
        arch = with_tuned_kernels(ArchConfig.from_dict(row["arch"]), row.get("kernel_configs"))
        res = ray.get(task.remote({"arch": arch.to_dict(), "batch": TARGET["batch_tokens"] // TARGET["context_len"],
                                   "seq_len": TARGET["context_len"]}))
        out.append({"trial": row["number"], "layout": row["layout"], **res})
    return out


def markdown(report: dict) -> str:
    lines = [f"# GPU study {report['tag']}: {report['gpus']} GPU(s), {report['trials_finished']} trials, "
             f"benchmark cache seeded with {report['cache_seeded_records']} records, knee: {report.get('knee')}",
             "", f"- wall {report['wall_s']:.0f} s, **{report['trials_per_hour']:.0f} trials/hour**",
             f"- GPU busy fraction (nvidia-smi, mean over GPUs and samples): {report['gpu_busy_fraction']}",
             f"- benchmark cache: {report['measured']}",
             f"- isolation (wall-clock intervals of benchmark vs proxy tasks): {report['isolation']}",
             "", "## Time split", ""]
    for k, v in report["time_split"].items():
        lines.append(f"- {k}: {v if isinstance(v, str) else round(v, 1)}")
    lines += ["", "## Pareto table (all completed trials; * = on the front)", "",
              "| trial | layout | quality | train tok/s | prefill tok/s | decode tok/s | state MiB | baseline | front |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in report["table"]:
        m = r.get("metrics") or {}

        def f(key, scale=1.0, fmt="{:.0f}"):
            v = m.get(key)
            return fmt.format(v / scale) if isinstance(v, (int, float)) else "-"
        lines.append(f"| {r['number']} | {r['layout']} | {f('quality', fmt='{:.4f}')} | {f('throughput')} | "
                     f"{f('prefill_tokens_per_s')} | {f('decode_tokens_per_s')} | "
                     f"{f('state_bytes', 2 ** 20, '{:.1f}')} | {r.get('baseline') or ''} | {'*' if r.get('pareto') else ''} |")
    lines += ["", "## Tuned vs default kernel config per layer kind (train fwd+bwd at the target)", "",
              "| mechanism | params | op | method | configs timed | skipped | best config | speed-up |",
              "|---|---|---|---|---|---|---|---|"]
    for r in report["tuning"]:
        sp = r["speedup_vs_default"]
        lines.append(f"| {r['mechanism']} | {r['params']} | {r['op']} | {r['method']} | {r['timed']} | "
                     f"{r['skipped']} | {r['best_config']} | {'-' if sp is None else f'{sp:.2f}x'} |")
    if report.get("memory"):
        lines += ["", "## Front: peak training memory vs state bytes", "",
                  "| trial | layout | batch | peak train GiB | state MiB (formula) | state MiB (cache) | did not fit |",
                  "|---|---|---|---|---|---|---|"]
        for m in report["memory"]:
            misses = ", ".join(f"batch {t['batch']}" for t in m.get("does_not_fit", [])) or "-"
            if "error" in m:
                lines.append(f"| {m['trial']} | {m['layout']} | | {m['error']} | | | {misses} |")
            else:
                lines.append(f"| {m['trial']} | {m['layout']} | {m['batch']} | {m['peak_train_bytes'] / 2 ** 30:.2f} | "
                             f"{m['state_bytes_formula'] / 2 ** 20:.1f} | {m['state_bytes_measured'] / 2 ** 20:.1f} | "
                             f"{misses} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--tag", default="gpu_study")
    ap.add_argument("--gpus", type=int, default=1)
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--workers", type=int, default=8, help="proxy trials in flight (each holds gpus/workers)")
    ap.add_argument("--timeout", type=float, default=None, help="stop the study after this many seconds")
    ap.add_argument("--no-tune", action="store_true", help="kernel defaults, no tuning (tune_kernels: false)")
    ap.add_argument("--tune-trials", type=int, default=6)
    ap.add_argument("--tune-budget-s", type=float, default=12.0)
    ap.add_argument("--storage", default=None, help="default: a fresh SQLite file under /tmp")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache-from", default=None,
                    help="storage URL whose benchmark cache seeds this study's (a warm start)")
    ap.add_argument("--no-export", action="store_true", help="do not write the knee export")
    ap.add_argument("--memory", action="store_true", help="measure peak training memory of the front")
    ap.add_argument("--markdown", action="store_true", help="also write TAG.md (always printed)")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny target, test benchmark task")
    ap.add_argument("--cpus", type=int, default=None, help="CPUs the Ray node offers (default: all)")
    args = ap.parse_args(argv)

    import ray

    from attnsearch import search
    from attnsearch.search.export import export_trial
    from attnsearch.search.study import load_study

    os.makedirs(args.out_dir, exist_ok=True)
    url = args.storage or f"sqlite:////tmp/{args.tag}-{int(time.time())}.db"
    study_name = f"{args.tag}"
    space = search.load_space(space_dict(args))
    seeded = 0
    if args.cache_from:
        from attnsearch.storage.bench_cache import BenchCache

        seeded = BenchCache(url).store_records(BenchCache(args.cache_from).records())
    device = "cpu" if args.smoke else "cuda"
    kwargs = {}
    if args.smoke:
        from attnsearch.search.testing import cpu_bench_task

        kwargs["bench_task"] = cpu_bench_task
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(num_gpus=args.gpus, num_cpus=args.cpus, resources={"bench_slot": args.gpus},
                 include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"study {study_name} on {args.gpus} GPU(s), storage {url}", flush=True)

    def progress(p):
        last = p.last or {}
        print(f"[{p.elapsed_s:6.0f}s] {p.counted}/{p.n_trials} trials (running {p.running}) "
              f"#{last.get('number')} {last.get('state')} {last.get('layout')} {last.get('metrics')} "
              f"{(last.get('reason') or '')[:120]}", flush=True)

    with GpuSampler(gpus=args.gpus) as gpu:
        t0 = time.monotonic()
        result = search.run_study(space, study_name, url, n_trials=args.trials, workers=args.workers,
                                  device=device, timeout=args.timeout, progress_callback=progress, **kwargs)
        wall = time.monotonic() - t0
    study = load_study(study_name, url)
    table = search.pareto_table(study_name, url, all=True)
    table = [r for r in table if r["state"] == "COMPLETE"]
    front = [r for r in table if r.get("pareto")]
    finished = result.complete + result.failed
    report = {
        "tag": args.tag, "gpus": args.gpus, "cache_seeded_records": seeded, "workers": args.workers, "target": space_dict(args)["target"],
        "mechanisms": sorted(MECHANISMS), "stop_reason": result.stop_reason, "wall_s": wall,
        "trials_finished": finished, "complete": result.complete, "failed": result.failed,
        "reused": result.reused, "trials_per_hour": finished / wall * 3600 if wall else None,
        "gpu_busy_fraction": gpu.busy_fraction(), "gpu_samples": len(gpu.samples),
        "time_split": time_split(study, result, wall), "measured": {k: v for k, v in (result.measured or {}).items()
                                                                   if k not in ("tuning", "intervals")},
        "tuning": tuning_table(result.measured or {}), "table": table,
        "isolation": isolation(study, result.measured or {}),
        "failures": [{"number": t.number, "layout": t.user_attrs.get("layout"), "reason": t.user_attrs.get("fail_reason")}
                     for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"],
        "driver_overhead_median_ms": 1e3 * statistics.median(result.overhead_s) if result.overhead_s else None,
    }
    try:
        knee = export_trial(study_name, url, policy="knee")
        report["knee"] = {"trial": knee["provenance"]["trial"], "layout": knee["layout"]}
        if not args.no_export:
            with open(os.path.join(args.out_dir, f"{args.tag}_knee.json"), "w") as fh:
                json.dump(knee, fh, indent=1)
    except Exception as exc:
        report["knee_error"] = f"{type(exc).__name__}: {exc}"
    write_report(report, args)               # first without memory: a time limit may stop what follows
    if args.memory:
        try:
            report["memory"] = front_memory(front[:3], study_name, url, args.smoke)
        except Exception as exc:
            report["memory_error"] = f"{type(exc).__name__}: {exc}"
        write_report(report, args)
    ray.shutdown()


def write_report(report: dict, args) -> None:
    with open(os.path.join(args.out_dir, f"{args.tag}.json"), "w") as fh:
        json.dump(report, fh, indent=1, default=str)
    md = markdown(report)
    if args.markdown:
        with open(os.path.join(args.out_dir, f"{args.tag}.md"), "w") as fh:
            fh.write(md)
    print(md, flush=True)


if __name__ == "__main__":
    main()
