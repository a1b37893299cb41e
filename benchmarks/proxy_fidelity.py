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

On GPUs (`--device cuda`): runs go round-robin over the visible GPUs (CUDA_VISIBLE_DEVICES, else
`nvidia-smi -L`), `--per-gpu` processes on each, one torch thread per process. Several candidate
budgets share one queue, each with its own output file:

    python benchmarks/proxy_fidelity.py --device cuda --per-gpu 8 --out-dir $OUT \
        --candidate s300='{}' --candidate s600='{"steps": 600}'

The queue holds, candidate by candidate in the given order, the short runs then the long ones
(heaviest layouts first within each), so a time limit keeps the first candidates whole; every
file is rewritten after each run (atomically), and `--report` prints the tables and rank
correlations of whatever finished (layouts with both budgets) without training anything.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
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
# Heaviest first (CPU seconds of a default run, benchmarks/results/proxy_fidelity.json; on a GPU
# the cost is the number of kernel launches, which grows the same way): the queue starts the
# longest runs of a class first, so the last ones to finish are short.
COST_ORDER = ["gla", "qwen3_next", "deltanet", "mamba2", "retnet", "jamba", "moba", "gemma3", "linear",
              "mistral_swa", "transformer"]


def _run(preset_name: str, factor: float, seed: int, threads: int, proxy_overrides: dict,
         device: str = "cpu") -> dict:
    import torch
    torch.set_num_threads(threads)
    from attnsearch.evaluators.quality import ProxySpec, evaluate_quality
    from attnsearch.space.presets import preset

    arch = preset(preset_name, **TARGET)
    proxy = ProxySpec(seed=seed, **{**proxy_overrides, "device": device}).scaled_budget(factor)
    cpu0 = time.process_time()
    result = evaluate_quality(arch, proxy)
    out = result.to_dict()
    out.pop("proxy_arch")
    out.update(preset=preset_name, factor=factor, seed=seed, cpu_time_s=time.process_time() - cpu0,
               target_layout=arch.layout_string(), gpu=os.environ.get("CUDA_VISIBLE_DEVICES"),
               steps_per_s=result.steps / max(result.train_time_s, 1e-9))
    return out


def _pin_gpu(gpu: str | None) -> None:
    """Pool initializer: this worker process sees one GPU (set before torch touches CUDA) and
    runs one CPU thread (many processes share the host's cores)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    os.environ["OMP_NUM_THREADS"] = "1"


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES when set, else what nvidia-smi lists."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(l for l in listing.splitlines() if l.startswith("GPU "))]


def unigram_bits(proxy) -> float | None:
    """The corpus byte entropy an LM task's score needs (loaded once per candidate), or None."""
    from attnsearch.evaluators import tasks as T
    from attnsearch.evaluators.corpus import load_corpus

    if not any(isinstance(spec, T.LMSpec) for spec in proxy.tasks.values()):
        return None
    return load_corpus(proxy.corpus, proxy.corpus_max_bytes).unigram_bits()


def rescore(run: dict, proxy, bits: float | None) -> None:
    """Task scores and score of a stored run recomputed from its held-out losses (in place);
    `proxy` the candidate's ProxySpec, `bits` its `unigram_bits`."""
    from attnsearch.evaluators.quality import task_score

    if run["diverged"]:
        return
    for name, m in run["metrics"].items():
        m["score"] = task_score(proxy.tasks[name], m["loss"], bits)
    reweight(run, proxy)
    run["rescored"] = True


def reweight(run: dict, proxy) -> None:
    """A stored run's score recomputed from its stored task scores with `proxy`'s score weights (in
    place; for a change of `ProxySpec.score_weights`, no corpus or losses needed)."""
    if run["diverged"] or not run["metrics"]:
        return
    run["score"] = proxy.quality_score({n: m["score"] for n, m in run["metrics"].items()})
    run["reweighted"] = True


RECALLED_NATS = 0.5   # a recall task's training loss below this: recall has emerged (plateau: ln 4 = 1.39)


def recall_step(run: dict, threshold: float = RECALLED_NATS) -> float | None:
    """First learning-curve step at which every recall task's training loss is below `threshold`
    nats (the layout has learnt to recall), or None if it never got there. Recall tasks are the
    curve's per-task columns other than the text task "lm"."""
    tasks = [t for t in (run.get("metrics") or {}) if t != "lm"]
    if not tasks:
        return None
    for point in run.get("curve") or []:
        if all(point.get(t, float("inf")) < threshold for t in tasks):
            return point["step"]
    return None


def _key(r):
    return f"{r['preset']}|{r['factor']}|{r['seed']}"


def parse_candidates(specs: list[str]) -> dict[str, dict]:
    """NAME=JSON pairs (the ProxySpec overrides of each candidate budget), in the given order."""
    out = {}
    for spec in specs:
        name, sep, overrides = spec.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--candidate must be NAME=JSON with NAME a plain word, got {spec!r}")
        try:
            out[name] = json.loads(overrides)
        except json.JSONDecodeError as e:
            raise ValueError(f"--candidate {name}: overrides are not JSON ({e})") from None
        check_overrides(name, out[name])
    return out


def check_overrides(name: str, overrides) -> None:
    """A candidate's overrides must build a ProxySpec; seed and device come from --seeds/--device."""
    from pydantic import ValidationError

    from attnsearch.evaluators.quality import ProxySpec
    if not isinstance(overrides, dict):
        raise ValueError(f"--candidate {name}: overrides must be a JSON object of ProxySpec fields")
    reserved = {"seed", "device"} & set(overrides)
    if reserved:
        raise ValueError(f"--candidate {name}: {sorted(reserved)} are set by --seeds / --device, not per candidate")
    try:
        ProxySpec(**overrides)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(spec)"
        raise ValueError(f"--candidate {name}: ProxySpec field {field}: {err['msg']}") from None


def job_order(candidates: list[str], layouts: list[str], factors: tuple, seeds: list[int],
              extra_short_seeds: list[int], extra_candidates: list[str] = ()) -> list[tuple[str, str, float, int]]:
    """(candidate, layout, factor, seed) in queue order: candidate by candidate, short runs then
    long ones, heaviest layout first; then the main candidates' extra short-only seeds (noise
    ceiling); then the extra candidates, as the main ones."""
    rank = {name: i for i, name in enumerate(COST_ORDER)}
    by_cost = sorted(layouts, key=lambda n: rank.get(n, -1))
    jobs = [(c, n, f, s) for c in candidates for f in factors for s in seeds for n in by_cost]
    jobs += [(c, n, 1.0, s) for c in candidates for s in extra_short_seeds for n in by_cost]
    jobs += [(c, n, f, s) for c in extra_candidates for f in factors for s in seeds for n in by_cost]
    return jobs


class Scheduler:
    """Which queued run each GPU starts next. Runs are dealt round-robin to the GPUs in queue
    order; a GPU runs `workers` at once. With a deadline, a run is started only when its
    estimated wall time ends before it (a run that cannot finish would only slow the others):
    set-up (imports, corpus, compile, evaluation) plus its steps at the training speed, both the
    worst seen so far for its layout (else for any layout), times SAFETY."""
    SAFETY = 1.2

    def __init__(self, todo, n_gpus: int, workers: int, cands: dict, deadline_s: float | None, t0: float):
        self.queues = [todo[g::n_gpus] for g in range(n_gpus)]
        self.running = [0] * n_gpus
        self.workers, self.cands, self.deadline_s, self.t0 = workers, cands, deadline_s, t0
        self.speed: dict[str, float] = {}          # layout -> slowest training steps per second seen
        self.setup: dict[str, float] = {}          # layout -> longest set-up + evaluation seconds seen
        self.skipped: list[tuple] = []

    def steps(self, job) -> int:
        from attnsearch.evaluators.quality import ProxySpec
        c, _, f, s = job
        return ProxySpec(seed=s, **self.cands[c]).scaled_budget(f).total_steps()

    def estimate_s(self, job) -> float | None:
        layout = job[1]
        speed = self.speed.get(layout) or (min(self.speed.values()) if self.speed else None)
        setup = self.setup.get(layout) or (max(self.setup.values()) if self.setup else 0.0)
        return None if speed is None else self.SAFETY * (setup + self.steps(job) / speed)

    def startable(self):
        """(gpu index, job) pairs to start now (removed from the queues)."""
        out = []
        for g, queue in enumerate(self.queues):
            while queue and self.running[g] < self.workers:
                job = queue.pop(0)
                est = self.estimate_s(job) if self.deadline_s is not None else None
                if est is not None and time.time() - self.t0 + est > self.deadline_s:
                    self.skipped.append((*job, est))
                    continue
                self.running[g] += 1
                out.append((g, job))
        return out

    def release(self, g: int) -> None:
        self.running[g] -= 1

    def observe(self, run: dict) -> None:
        """Training speed from the learning curve's first and last points (read times), which
        leaves out the first steps' compiles; set-up is the rest of the wall time."""
        timed = [p for p in run.get("curve", []) if "time_s" in p]
        if len(timed) < 2 or timed[-1]["time_s"] <= timed[0]["time_s"]:
            return
        speed = (timed[-1]["step"] - timed[0]["step"]) / (timed[-1]["time_s"] - timed[0]["time_s"])
        setup = max(0.0, run["wall_time_s"] - run["steps"] / speed)
        name = run["preset"]
        self.speed[name] = min(speed, self.speed.get(name, speed))
        self.setup[name] = max(setup, self.setup.get(name, setup))


def _write_atomic(path: Path, report: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)          # a kill mid-write leaves the previous complete file


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--factor", type=float, default=8.0, help="budget multiple of the long run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--extra-short-seeds", type=int, nargs="*", default=[],
                    help="default-budget runs of more seeds, queued last (seed-to-seed noise ceiling)")
    ap.add_argument("--jobs", type=int, default=1, help="parallel processes (CPU)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--per-gpu", type=int, default=4, help="processes per GPU (--device cuda)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--layouts", nargs="+", default=[name for name, _ in LAYOUTS])
    ap.add_argument("--proxy", default="{}", help="JSON overrides of ProxySpec fields (default: none)")
    ap.add_argument("--out", default="out/proxy_fidelity.json")
    ap.add_argument("--candidate", action="append", default=[], metavar="NAME=JSON",
                    help="a candidate budget (ProxySpec overrides); repeatable; each writes "
                         "OUT_DIR/fidelity_NAME.json (replaces --proxy/--out)")
    ap.add_argument("--extra-candidate", action="append", default=[], metavar="NAME=JSON",
                    help="as --candidate, queued after the --candidate runs and their extra seeds")
    ap.add_argument("--out-dir", default="out", help="where --candidate files go")
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="start a queued run only if, at the speed its layout showed so far (wall time of "
                         "finished runs, compile included), it ends within this many seconds of the start")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--report", action="store_true", help="print the stored results' tables; train nothing")
    ap.add_argument("--budgets", choices=("both", "short", "long"), default="both",
                    help="run only the default-budget runs, only the long ones, or both")
    ap.add_argument("--merge", nargs="*", default=[], help="other result files whose runs count as done")
    ap.add_argument("--rescore", action="store_true",
                    help="recompute every stored run's task scores and score from its stored held-out losses "
                         "with the current scoring code (no training; for a change of the score definition)")
    ap.add_argument("--reweight", action="store_true",
                    help="recompute every stored run's score from its stored task scores with the current "
                         "score weights (no training; with --report, in the printed tables only)")
    args = ap.parse_args(argv)
    from attnsearch.evaluators.quality import ProxySpec

    if args.candidate or args.extra_candidate:
        try:
            cands = parse_candidates(args.candidate)
            extras = parse_candidates(args.extra_candidate)
        except ValueError as e:
            ap.error(str(e))
        if set(cands) & set(extras):
            ap.error(f"candidate names used twice: {sorted(set(cands) & set(extras))}")
        cands.update(extras)
        paths = {c: Path(args.out_dir) / f"fidelity_{c}.json" for c in cands}
    else:
        cands, extras, paths = {"": json.loads(args.proxy)}, {}, {"": Path(args.out)}
    if args.report:
        for c, path in paths.items():
            if not path.exists():
                print(f"{c or path}: no results yet ({path})")
                continue
            runs = json.loads(path.read_text())["runs"]
            if args.reweight:
                proxy = ProxySpec(**cands[c])
                for r in runs:
                    reweight(r, proxy)
            print(f"== candidate {c or path}: {json.dumps(cands[c])} ({len(runs)} runs)")
            print_table(summarise(runs, args.factor))
        return

    done: dict[str, dict] = {c: {} for c in cands}
    for c, path in paths.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if args.resume and path.exists():
            done[c] = {_key(r): r for r in json.loads(path.read_text())["runs"]}
        for other in args.merge:
            done[c].update({_key(r): r for r in json.loads(Path(other).read_text())["runs"]})
        if args.rescore or args.reweight:
            proxy = ProxySpec(**cands[c])
            bits = unigram_bits(proxy) if args.rescore else None
            for r in done[c].values():
                rescore(r, proxy, bits) if args.rescore else reweight(r, proxy)
    factors = {"both": (1.0, args.factor), "short": (1.0,), "long": (args.factor,)}[args.budgets]
    main_cands = [c for c in cands if c not in extras]
    todo = [j for j in job_order(main_cands, args.layouts, factors, args.seeds, args.extra_short_seeds, list(extras))
            if f"{j[1]}|{j[2]}|{j[3]}" not in done[j[0]]]
    load_before = os.getloadavg()
    t0 = time.time()

    def save(c):
        runs = list(done[c].values())
        report = summarise(runs, args.factor)
        report.update(candidate=c, proxy_overrides=cands[c], device=args.device, threads=args.threads,
                      jobs=args.jobs, per_gpu=args.per_gpu if args.device == "cuda" else None,
                      loadavg_before=load_before, loadavg_now=os.getloadavg(),
                      elapsed_s=time.time() - t0, runs=runs)
        _write_atomic(paths[c], report)
        return report

    # one pool per GPU (its processes pinned to it), jobs dealt round-robin in queue order
    gpus = visible_gpus() if args.device == "cuda" else [None]
    if args.device == "cuda" and not gpus:
        ap.error("--device cuda: no GPU visible (CUDA_VISIBLE_DEVICES / nvidia-smi -L)")
    workers = args.per_gpu if args.device == "cuda" else args.jobs
    ctx = mp.get_context("spawn")
    pools = [ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_pin_gpu, initargs=(g,))
             for g in gpus]
    print(f"{len(todo)} runs on {args.device} ({'GPUs ' + ','.join(gpus) if gpus[0] is not None else 'CPU'}, "
          f"{workers} process(es) each)", flush=True)
    sched = Scheduler(todo, len(pools), workers, cands, args.deadline_s, t0)
    futures = {}

    def fill():
        for gi, job in sched.startable():
            c, n, f, s = job
            futures[pools[gi].submit(_run, n, f, s, args.threads, cands[c], args.device)] = (gi, job)

    try:
        fill()
        while futures:
            finished, _ = wait(set(futures), return_when=FIRST_COMPLETED)
            for fut in finished:
                gi, (c, n, f, s) = futures.pop(fut)
                sched.release(gi)
                try:
                    r = fut.result()
                except Exception as e:       # one broken run must not lose the others
                    print(f"[{time.time() - t0:7.1f}s] {c} {n} x{f:g} seed {s} run FAILED: "
                          f"{type(e).__name__}: {e}", flush=True)
                    continue
                sched.observe(r)
                done[c][_key(r)] = r
                print(f"[{time.time() - t0:7.1f}s] {c + ' ' if c else ''}{r['preset']:12s} x{r['factor']:<4g} "
                      f"seed {r['seed']} score {r['score']:.4f} wall {r['wall_time_s']:.1f}s "
                      f"{r['steps_per_s']:.1f} steps/s cpu {r['cpu_time_s']:.1f}s"
                      f"{' gpu ' + r['gpu'] if r.get('gpu') else ''} load {os.getloadavg()[0]:.1f}"
                      f"{' DIVERGED ' + r['reason'] if r['diverged'] else ''}", flush=True)
                save(c)
            fill()
        for c, n, f, s, est in sched.skipped:
            print(f"skipped {c} {n} x{f:g} seed {s}: estimated {est:.0f} s would end past --deadline-s "
                  f"{args.deadline_s:g}", flush=True)
    finally:
        for pool in pools:
            pool.shutdown(wait=False, cancel_futures=True)
    for c in cands:
        report = save(c)
        if c:
            print(f"== candidate {c}: {json.dumps(cands[c])}")
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
            row[f"{tag}_recall_steps"] = [recall_step(r) for r in sorted(rs, key=lambda r: r["seed"])]
            row[f"{tag}_metrics"] = {t: {k: sum(r["metrics"][t][k] for r in rs) / len(rs)
                                         for k in rs[0]["metrics"][t]} for t in rs[0]["metrics"]} \
                if not any(r["diverged"] for r in rs) else {}
        rows.append(row)
    report = {"factor": factor, "rows": rows,
              # finished at one budget only so far (a partial file): not in the figure yet
              "unpaired": sorted(f"{n} x{f:g}" for n, per in by.items() for f in per
                                 if not (1.0 in per and factor in per))}
    if len(rows) >= 3:
        short = [r["short_score"] for r in rows]
        long = [r["long_score"] for r in rows]
        report["spearman"] = spearman(short, long)
        report["kendall"] = kendall(short, long)
        report.update(seed_noise(by, [r["preset"] for r in rows], factor))
        # each seed on its own (a trial trains one seed): the figure above averages the seeds' scores
        names = [r["preset"] for r in rows]
        common = set.intersection(*({r["seed"] for r in by[n][f]} for n in names for f in (1.0, factor)))
        if len(common) > 1:
            report["per_seed_spearman"] = {}
            for seed in sorted(common):
                pick = {(n, f): next(r["score"] for r in by[n][f] if r["seed"] == seed)
                        for n in names for f in (1.0, factor)}
                report["per_seed_spearman"][seed] = spearman([pick[(n, 1.0)] for n in names],
                                                             [pick[(n, factor)] for n in names])
        # per task: does the task's own 1x score order layouts as its 8x score does (diagnostic)
        with_metrics = [r for r in rows if r["short_metrics"] and r["long_metrics"]]
        tasks = sorted(set.intersection(*(set(r["long_metrics"]) for r in with_metrics))) if with_metrics else []
        report["task_spearman"] = {}
        for t in tasks:
            rho = spearman([r["short_metrics"][t]["score"] for r in with_metrics],
                           [r["long_metrics"][t]["score"] for r in with_metrics])
            report["task_spearman"][t] = None if rho != rho else rho    # NaN: equal for all layouts
    return report


def seed_noise(by: dict, names: list, factor: float = 8.0) -> dict:
    """How well each budget agrees with itself across two seeds (Spearman over the same layouts): the
    default budget's figure is the ceiling a fidelity figure can reach when layouts are near-tied; the
    long budget's says how stable the reference itself is."""
    from attnsearch.evaluators.ranking import spearman

    out = {}
    for f, tag in ((1.0, "short"), (factor, "long")):
        if not all(f in by[n] for n in names):
            continue
        seeds = sorted(set.intersection(*({r["seed"] for r in by[n][f]} for n in names)))
        if len(seeds) < 2:
            continue
        score = {(r["preset"], r["seed"]): r["score"] for n in names for r in by[n][f]}
        a, b = seeds[:2]
        out[f"{tag}_seed_spearman"] = spearman([score[(n, a)] for n in names], [score[(n, b)] for n in names])
        out[f"{tag}_seed_pair"] = [a, b]
    return out


def print_table(report):
    rows = sorted(report["rows"], key=lambda r: -r["long_score"])
    tasks = sorted({t for r in rows for t in r["long_metrics"]})
    head = f"{'layout':12s} {'proxy':6s} {'score 1x':>9s} {'score ' + format(report['factor'], 'g') + 'x':>9s}"
    for t in tasks:
        head += f" {t[:12]:>12s}"
    print(head + f" {'wall 1x':>8s} {'wall ' + format(report['factor'], 'g') + 'x':>8s} {'cpu 1x':>7s}"
                 f"  recalled at step (1x | {report['factor']:g}x, per seed)")
    for r in rows:
        line = f"{r['preset']:12s} {r['proxy_layout']:6s} {r['short_score']:9.4f} {r['long_score']:9.4f}"
        for t in tasks:
            m_s, m_l = r["short_metrics"].get(t, {}), r["long_metrics"].get(t, {})
            key = "bpb" if "bpb" in m_l else "accuracy"
            line += f" {m_s.get(key, float('nan')):5.2f}>{m_l.get(key, float('nan')):5.2f}{'b' if key == 'bpb' else 'a'}"
        steps = " | ".join(",".join("-" if s is None else f"{s:g}" for s in r.get(f"{tag}_recall_steps", []))
                           for tag in ("short", "long"))
        print(line + f" {r['short_wall_s']:7.1f}s {r['long_wall_s']:7.1f}s {r['short_cpu_s']:6.1f}s  {steps}")
    if "spearman" in report:
        print(f"Spearman {report['spearman']:.3f}  Kendall {report['kendall']:.3f}  over {len(rows)} layouts "
              f"(1x vs {report['factor']:g}x budget)")
    if len(rows) < 3:
        print(f"{len(rows)} layout(s) finished at both budgets: too few for a rank correlation")
    if report.get("unpaired"):
        print("finished at one budget only: " + ", ".join(report["unpaired"]))
    if report.get("task_spearman"):
        print(f"per task, 1x vs {report['factor']:g}x task score: " + "  ".join(
            f"{t} {'-- (all equal at one budget)' if v is None else format(v, '.3f')}"
            for t, v in report["task_spearman"].items()))
    if report.get("per_seed_spearman"):
        print("each seed alone (1x vs 8x, over the layouts run at every seed): " + "  ".join(
            f"seed {s} {v:.3f}" for s, v in report["per_seed_spearman"].items()))
    if "short_seed_spearman" in report:
        a, b = report["short_seed_pair"]
        print(f"1x seed {a} vs 1x seed {b}: Spearman {report['short_seed_spearman']:.3f} (noise ceiling)")
    if "long_seed_spearman" in report:
        a, b = report["long_seed_pair"]
        print(f"{report['factor']:g}x seed {a} vs {report['factor']:g}x seed {b}: Spearman "
              f"{report['long_seed_spearman']:.3f} (stability of the reference)")


if __name__ == "__main__":
    main()
