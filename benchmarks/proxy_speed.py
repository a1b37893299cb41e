"""Wall time and tokens/s of one default proxy run (and, on a GPU, how many fit side by side).

    python benchmarks/proxy_speed.py                       # CPU, 2 threads, default proxy, 3 layouts
    python benchmarks/proxy_speed.py --device cuda --concurrency 1 4 8 16

CPU: reports wall and CPU time per layout with the load average seen (the target is <= 60 s on
2 cores). GPU: peak memory of one proxy (torch.cuda.max_memory_allocated), how many such proxies
fit in the free memory, and the aggregate tokens/s of N proxies run at once in N processes.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

TARGET = dict(d_model=512, n_layers=24, n_heads=8, head_dim=64, max_seq_len=8192)


def one_run(layout: str, device: str, threads: int, seed: int = 0, proxy_overrides: dict | None = None) -> dict:
    import torch
    torch.set_num_threads(threads)
    from attnsearch.evaluators.quality import ProxySpec, evaluate_quality
    from attnsearch.space.presets import preset

    proxy = ProxySpec(device=device, seed=seed, **(proxy_overrides or {}))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cpu0, t0 = time.process_time(), time.perf_counter()
    r = evaluate_quality(preset(layout, **TARGET), proxy)
    out = {"layout": layout, "proxy_layout": r.layout, "wall_s": time.perf_counter() - t0,
           "cpu_s": time.process_time() - cpu0, "train_s": r.train_time_s, "tokens": r.tokens_seen,
           "tokens_per_s": r.tokens_seen / max(r.train_time_s, 1e-9), "score": r.score,
           "diverged": r.diverged, "params": r.n_params}
    if device.startswith("cuda"):
        out["peak_mem_bytes"] = torch.cuda.max_memory_allocated()
    return out


def _worker(args):
    layout, device, threads, seed, overrides, start = args
    while time.time() < start:          # start together, so the runs overlap fully
        time.sleep(0.01)
    return one_run(layout, device, threads, seed, overrides)


def concurrent_runs(n: int, layout: str, device: str, threads: int, overrides: dict) -> dict:
    ctx = mp.get_context("spawn")
    start = time.time() + 20            # time for the workers to import torch
    with ctx.Pool(n) as pool:
        t0 = time.time()
        results = pool.map(_worker, [(layout, device, threads, i, overrides, start) for i in range(n)])
        wall = time.time() - max(t0, start)
    tokens = sum(r["tokens"] for r in results)
    return {"concurrency": n, "wall_s": wall, "aggregate_tokens_per_s": tokens / wall,
            "per_run_tokens_per_s": [r["tokens_per_s"] for r in results],
            "peak_mem_bytes_each": [r.get("peak_mem_bytes") for r in results]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layouts", nargs="+", default=["transformer", "qwen3_next", "gla"])
    ap.add_argument("--concurrency", type=int, nargs="*", default=[], help="GPU: proxies run at once")
    ap.add_argument("--proxy", default="{}", help="JSON overrides of ProxySpec fields")
    ap.add_argument("--out", default="out/proxy_speed.json")
    args = ap.parse_args(argv)
    overrides = json.loads(args.proxy)

    report = {"device": args.device, "threads": args.threads, "cpu_count": os.cpu_count(),
              "loadavg_before": os.getloadavg(), "runs": [], "concurrent": []}
    if args.device.startswith("cuda"):
        import torch
        report["gpu"] = torch.cuda.get_device_name()
        one_run(args.layouts[0], args.device, args.threads, 0, {**overrides, "steps": 5})   # compile/autotune
    for layout in args.layouts:
        r = one_run(layout, args.device, args.threads, 0, overrides)
        r["loadavg_after"] = os.getloadavg()
        report["runs"].append(r)
        print(f"{layout:12s} {r['proxy_layout']:6s} wall {r['wall_s']:6.1f}s cpu {r['cpu_s']:6.1f}s "
              f"{r['tokens_per_s']:9.0f} tok/s  score {r['score']:.4f}  load {r['loadavg_after'][0]:.1f}"
              + (f"  peak {r['peak_mem_bytes'] / 2**20:.0f} MiB" if "peak_mem_bytes" in r else ""), flush=True)
    if args.device.startswith("cuda"):
        import torch
        free, total = torch.cuda.mem_get_info()
        peak = max(r["peak_mem_bytes"] for r in report["runs"])
        overhead = 600 * 2 ** 20         # CUDA context + allocator slack per process (approximate)
        report["fits_by_memory"] = int(free * 0.9 // (peak + overhead))
        print(f"peak {peak / 2**20:.0f} MiB per proxy (+~600 MiB context): ~{report['fits_by_memory']} fit in "
              f"{free / 2**30:.1f} GiB free of {total / 2**30:.1f} GiB")
        for n in args.concurrency:
            c = concurrent_runs(n, args.layouts[0], args.device, args.threads, overrides)
            report["concurrent"].append(c)
            print(f"{n:3d} at once: {c['aggregate_tokens_per_s']:10.0f} tok/s aggregate, wall {c['wall_s']:.1f}s",
                  flush=True)
    report["loadavg_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
