"""Does the default proxy rank layouts the way an 8x longer proxy run does?

Trains a fixed set of literature layouts (at a 24-layer, d_model 512 target, scaled down by the
proxy) at the default ProxySpec budget and at `--factor` (8) times it, then prints each layout's
scores and the Spearman / Kendall rank correlation of the quality scores between the budgets.

    python benchmarks/proxy_fidelity.py --jobs 2 --out out/proxy_fidelity.json

Results are written after every run; `--resume` skips runs already in the output file,
`--merge` counts runs of other files as done (long runs split over processes), `--rescore`
recomputes stored runs' scores from their held-out losses after a change of the score definition.
Extra `--budgets short --seeds 0 1` runs give the seed-to-seed agreement of the default budget
(the ceiling of the figure when layouts are near-tied). Wall time on a shared CPU depends on the
load; the CPU time per run (1 thread) is what a trial costs on an idle core.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

LAYOUTS = [
    ("transformer", "pure full attention"),
    ("mistral_swa", "pure sliding window"),
    ("linear", "pure linear attention (ELU+1)"),
    ("mamba2", "pure Mamba-2"),
    ("gla", "pure GLA"),
    ("deltanet", "pure DeltaNet"),
    ("retnet", "pure RetNet"),
    ("gemma3", "Gemma-3 5 sliding : 1 full"),
    ("jamba", "Jamba 7 Mamba-2 : 1 full"),
    ("qwen3_next", "Qwen3-Next 3 Gated DeltaNet : 1 full"),
    ("moba", "block top-k (MoBA style)"),
]
TARGET = dict(d_model=512, n_layers=24, n_heads=8, head_dim=64, max_seq_len=8192)


def _run(preset_name: str, factor: float, seed: int, threads: int, proxy_overrides: dict) -> dict:
    import torch
    torch.set_num_threads(threads)
    from attnsearch.evaluators.quality import ProxySpec, evaluate_quality
    from attnsearch.space.presets import preset

    arch = preset(preset_name, **TARGET)
    proxy = ProxySpec(seed=seed, **proxy_overrides).scaled_budget(factor)
    cpu0 = time.process_time()
    result = evaluate_quality(arch, proxy)
    out = result.to_dict()
    out.pop("proxy_arch")
    out.update(preset=preset_name, factor=factor, seed=seed, cpu_time_s=time.process_time() - cpu0,
               target_layout=arch.layout_string())
    return out


def rescore(run: dict, proxy_overrides: dict) -> None:
    """Task scores and score of a stored run recomputed from its held-out losses (in place)."""
    from attnsearch.evaluators import tasks as T
    from attnsearch.evaluators.corpus import load_corpus
    from attnsearch.evaluators.quality import ProxySpec, task_score

    if run["diverged"]:
        return
    proxy = ProxySpec(**proxy_overrides)
    bits = None
    if any(isinstance(spec, T.LMSpec) for spec in proxy.tasks.values()):
        bits = load_corpus(proxy.corpus, proxy.corpus_max_bytes).unigram_bits()
    for name, m in run["metrics"].items():
        m["score"] = task_score(proxy.tasks[name], m["loss"], bits)
    total = sum(proxy.weight(n) for n in proxy.tasks)
    run["score"] = sum(proxy.weight(n) * run["metrics"][n]["score"] for n in proxy.tasks) / total
    run["rescored"] = True


def _key(r):
    return f"{r['preset']}|{r['factor']}|{r['seed']}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--factor", type=float, default=8.0, help="budget multiple of the long run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--layouts", nargs="+", default=[name for name, _ in LAYOUTS])
    ap.add_argument("--proxy", default="{}", help="JSON overrides of ProxySpec fields (default: none)")
    ap.add_argument("--out", default="out/proxy_fidelity.json")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--budgets", choices=("both", "short", "long"), default="both",
                    help="run only the default-budget runs, only the long ones, or both")
    ap.add_argument("--merge", nargs="*", default=[], help="other result files whose runs count as done")
    ap.add_argument("--rescore", action="store_true",
                    help="recompute every stored run's task scores and score from its stored held-out losses "
                         "with the current scoring code (no training; for a change of the score definition)")
    args = ap.parse_args(argv)

    overrides = json.loads(args.proxy)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if args.resume and out_path.exists():
        done = {_key(r): r for r in json.loads(out_path.read_text())["runs"]}
    for other in args.merge:
        done.update({_key(r): r for r in json.loads(Path(other).read_text())["runs"]})
    if args.rescore:
        for r in done.values():
            rescore(r, overrides)
    factors = {"both": (1.0, args.factor), "short": (1.0,), "long": (args.factor,)}[args.budgets]
    # short runs first (a partial file already has every layout's default score), then long ones
    todo = [(name, f, s) for f in factors for name in args.layouts for s in args.seeds
            if f"{name}|{f}|{s}" not in done]
    load_before = os.getloadavg()
    t0 = time.time()

    def save():
        runs = list(done.values())
        report = summarise(runs, args.factor)
        report.update(proxy_overrides=overrides, threads=args.threads, jobs=args.jobs,
                      loadavg_before=load_before, loadavg_now=os.getloadavg(),
                      elapsed_s=time.time() - t0, runs=runs)
        out_path.write_text(json.dumps(report, indent=1))
        return report

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(_run, n, f, s, args.threads, overrides): (n, f, s) for n, f, s in todo}
        for fut in as_completed(futures):
            r = fut.result()
            done[_key(r)] = r
            print(f"[{time.time() - t0:7.1f}s] {r['preset']:12s} x{r['factor']:<4g} seed {r['seed']} "
                  f"score {r['score']:.4f} wall {r['wall_time_s']:.1f}s cpu {r['cpu_time_s']:.1f}s "
                  f"load {os.getloadavg()[0]:.1f}{' DIVERGED ' + r['reason'] if r['diverged'] else ''}",
                  flush=True)
            save()
    report = save()
    print_table(report)


def summarise(runs, factor) -> dict:
    from attnsearch.evaluators.ranking import kendall, spearman

    by = {}
    for r in runs:
        by.setdefault(r["preset"], {}).setdefault(r["factor"], []).append(r)
    rows = []
    for name, per in by.items():
        if 1.0 not in per or factor not in per:
            continue
        row = {"preset": name, "target_layout": per[1.0][0]["target_layout"], "proxy_layout": per[1.0][0]["layout"]}
        # the figure pairs the same seeds at both budgets; extra short-only seeds measure noise
        paired = {r["seed"] for r in per[1.0]} & {r["seed"] for r in per[factor]}
        for f, tag in ((1.0, "short"), (factor, "long")):
            rs = [r for r in per[f] if r["seed"] in paired]
            row[f"{tag}_cpu_s"] = sum(r["cpu_time_s"] for r in rs) / len(rs)
            row[f"{tag}_score"] = sum(r["score"] for r in rs) / len(rs)
            row[f"{tag}_wall_s"] = sum(r["wall_time_s"] for r in rs) / len(rs)
            row[f"{tag}_metrics"] = {t: {k: sum(r["metrics"][t][k] for r in rs) / len(rs)
                                         for k in rs[0]["metrics"][t]} for t in rs[0]["metrics"]} \
                if not any(r["diverged"] for r in rs) else {}
        rows.append(row)
    report = {"factor": factor, "rows": rows}
    if len(rows) >= 3:
        short = [r["short_score"] for r in rows]
        long = [r["long_score"] for r in rows]
        report["spearman"] = spearman(short, long)
        report["kendall"] = kendall(short, long)
        report.update(seed_noise(by, [r["preset"] for r in rows]))
        # per task: does the task's own 1x score order layouts as its 8x score does (diagnostic)
        with_metrics = [r for r in rows if r["short_metrics"] and r["long_metrics"]]
        tasks = sorted(set.intersection(*(set(r["long_metrics"]) for r in with_metrics))) if with_metrics else []
        report["task_spearman"] = {}
        for t in tasks:
            rho = spearman([r["short_metrics"][t]["score"] for r in with_metrics],
                           [r["long_metrics"][t]["score"] for r in with_metrics])
            report["task_spearman"][t] = None if rho != rho else rho    # NaN: equal for all layouts
    return report


def seed_noise(by: dict, names: list) -> dict:
    """How well the default budget agrees with itself across two seeds (Spearman over the same
    layouts): the ceiling a fidelity figure can reach when layouts are near-tied."""
    from attnsearch.evaluators.ranking import spearman

    seeds = sorted(set.intersection(*({r["seed"] for r in by[n][1.0]} for n in names)))
    if len(seeds) < 2:
        return {}
    score = {(r["preset"], r["seed"]): r["score"] for n in names for r in by[n][1.0]}
    a, b = seeds[:2]
    return {"short_seed_spearman": spearman([score[(n, a)] for n in names], [score[(n, b)] for n in names]),
            "short_seed_pair": [a, b]}


def print_table(report):
    rows = sorted(report["rows"], key=lambda r: -r["long_score"])
    tasks = sorted({t for r in rows for t in r["long_metrics"]})
    head = f"{'layout':12s} {'proxy':6s} {'score 1x':>9s} {'score ' + format(report['factor'], 'g') + 'x':>9s}"
    for t in tasks:
        head += f" {t[:12]:>12s}"
    print(head + f" {'wall 1x':>8s} {'cpu 1x':>7s}")
    for r in rows:
        line = f"{r['preset']:12s} {r['proxy_layout']:6s} {r['short_score']:9.4f} {r['long_score']:9.4f}"
        for t in tasks:
            m_s, m_l = r["short_metrics"].get(t, {}), r["long_metrics"].get(t, {})
            key = "bpb" if "bpb" in m_l else "accuracy"
            line += f" {m_s.get(key, float('nan')):5.2f}>{m_l.get(key, float('nan')):5.2f}{'b' if key == 'bpb' else 'a'}"
        print(line + f" {r['short_wall_s']:7.1f}s {r['short_cpu_s']:6.1f}s")
    if "spearman" in report:
        print(f"Spearman {report['spearman']:.3f}  Kendall {report['kendall']:.3f}  over {len(rows)} layouts "
              f"(1x vs {report['factor']:g}x budget)")
    if report.get("task_spearman"):
        print("per task, 1x vs 8x task score: " + "  ".join(
            f"{t} {'-- (all equal at one budget)' if v is None else format(v, '.3f')}"
            for t, v in report["task_spearman"].items()))
    if "short_seed_spearman" in report:
        a, b = report["short_seed_pair"]
        print(f"1x seed {a} vs 1x seed {b}: Spearman {report['short_seed_spearman']:.3f} (noise ceiling)")


if __name__ == "__main__":
    main()
