"""Driver overhead per trial: ask, suggest, dispatch, tell and user attributes (no evaluation work).

    python benchmarks/driver_overhead.py [--trials 80] [--rounds 3] [--pg postgresql+psycopg://...] [--out F.json]

Runs a study whose evaluation returns at once (synthetic), with SQLite (a temp file) and, when a
PostgreSQL URL is given (or ATTNSEARCH_TEST_PG_URL is set), with PostgreSQL. The driver times
its own work per trial (RunResult.overhead_s: from ask to dispatch plus the whole tell). As an
anchor measured in the same run: bare Optuna ask + tell with a RandomSampler on the same
storage (the floor any driver on that database pays), and Optuna alone doing ask + suggest of the
same space with the same TPE sampler + tell of the same objective values (what the sampler and the
parameter writes cost without our driver, Ray and attributes). The load average is printed because the
figures scale with it on a shared machine. ``--rounds N`` repeats the whole measurement (each round
prints its own line and load average; ``--out`` writes every row as JSON).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))     # runs from a checkout without install


def optuna_floor(url: str, n: int) -> float:
    from attnsearch.storage import optuna_storage

    study = optuna.create_study(storage=optuna_storage(url), study_name=f"floor-{uuid.uuid4().hex[:8]}",
                                sampler=optuna.samplers.RandomSampler(seed=0), directions=["maximize"] * 2)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        trial = study.ask()
        trial.suggest_categorical("x", ["a", "b", "c"])
        study.tell(trial, [1.0, 2.0])
        times.append(time.perf_counter() - t0)
    optuna.delete_study(study_name=study.study_name, storage=optuna_storage(url))
    return statistics.median(times)


def optuna_same_space(url: str, n: int) -> float:
    """Optuna alone on the same space, sampler and storage: ask, suggest the layout, tell the
    objective values the driver's synthetic evaluation gives that layout (TPE's work depends on
    the values: how the trials split, ties on the front)."""
    from attnsearch import search
    from attnsearch.search.study import make_sampler
    from attnsearch.search.testing import synthetic_quality
    from attnsearch.storage import optuna_storage

    space = search.default_space()
    fn = search.throughput_fn(space)
    study = optuna.create_study(storage=optuna_storage(url), study_name=f"same-{uuid.uuid4().hex[:8]}",
                                sampler=make_sampler(space), directions=space.directions)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        trial = study.ask()
        arch = space.suggest(trial, throughput_fn=fn)
        study.tell(trial, [synthetic_quality(arch.to_dict()), fn(arch)])
        times.append(time.perf_counter() - t0)
    optuna.delete_study(study_name=study.study_name, storage=optuna_storage(url))
    return statistics.median(times)


def measure(url: str, n: int, label: str) -> dict:
    from attnsearch import search
    from attnsearch.search.testing import synthetic_evaluate

    space = search.default_space()
    name = f"overhead-{uuid.uuid4().hex[:8]}"
    # the Optuna-alone anchor runs just before and just after the driver (the load of a shared
    # machine drifts within a round); its figure is the mean of the two medians
    same_before = optuna_same_space(url, n)
    result = search.run_study(space, name, url, n_trials=n, workers=1, evaluate=synthetic_evaluate)
    per_trial = sorted(result.overhead_s)
    same_after = optuna_same_space(url, n)
    floor = optuna_floor(url, 20)
    same = (same_before + same_after) / 2
    search.delete_study(name, url)
    row = {"storage": label, "load_avg_1min": os.getloadavg()[0], "trials": len(per_trial), "median_ms": 1e3 * statistics.median(per_trial),
           "p90_ms": 1e3 * per_trial[int(0.9 * (len(per_trial) - 1))],
           "optuna_ask_tell_floor_ms": 1e3 * floor, "optuna_same_space_ms": 1e3 * same,
           "optuna_same_space_before_after_ms": [1e3 * same_before, 1e3 * same_after], "wall_s": result.wall_s}
    print(f"{label:10s} trials={row['trials']} median={row['median_ms']:.1f} ms p90={row['p90_ms']:.1f} ms "
          f"(anchors in the same run: bare Optuna ask+tell {row['optuna_ask_tell_floor_ms']:.1f} ms; "
          f"Optuna alone on the same space/sampler/values ask+suggest+tell {row['optuna_same_space_ms']:.1f} ms "
          f"(before {1e3 * same_before:.1f}, after {1e3 * same_after:.1f}); "
          f"load {row['load_avg_1min']:.2f})", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--pg", default=os.environ.get("ATTNSEARCH_TEST_PG_URL"))
    parser.add_argument("--out", help="write every row (all rounds) to this JSON file")
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = []
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}: load average {os.getloadavg()}, cpus: {os.cpu_count()}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(measure(f"sqlite:///{tmp}/overhead.db", args.trials, "sqlite"))
        if args.pg:
            rows.append(measure(args.pg, args.trials, "postgresql"))
    print(f"load average after: {os.getloadavg()}", flush=True)
    ray.shutdown()
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
