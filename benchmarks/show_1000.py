"""How fast `attnsearch show` answers on a study of 1,000 trials (target: under 2 s).

Builds the study once with the real driver (Ray, SQLite) and the synthetic evaluation, so the
trials carry exactly the attributes a real study has, then times the CLI as a user runs it
(a fresh process: imports included) for the front, `--all` and `--json`, reporting wall and
CPU seconds and the machine's load.

    python benchmarks/show_1000.py [--db PATH] [--trials 1000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def build(db: Path, trials: int) -> None:
    from attnsearch import search
    from attnsearch.search.testing import synthetic_evaluate

    url = f"sqlite:///{db}"
    t0 = time.perf_counter()
    result = search.run_study(search.default_space(), "show-1000", url, n_trials=trials, workers=2,
                              evaluate=synthetic_evaluate)
    print(f"built {trials} trials in {time.perf_counter() - t0:.0f} s ({result.complete} complete, "
          f"{result.pruned} infeasible)")


def time_cli(args: list[str], repeats: int) -> tuple[float, float, int]:
    walls, cpus, size = [], [], 0
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "attnsearch.cli", *args], capture_output=True, text=True)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        size = len(out.stdout)
    return statistics.median(walls), statistics.median(cpus), size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", type=Path, default=Path("show_1000.db"))
    ap.add_argument("--trials", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if not args.db.exists():
        build(args.db, args.trials)
    url = f"sqlite:///{args.db.resolve()}"
    from attnsearch import search

    s = search.load_study_summary("show-1000", url)
    print(f"study show-1000: {s.n_trials} trials ({s.n_complete} complete, {s.n_pruned} infeasible), "
          f"front {s.front_size}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    base = time_cli(["--version"], args.repeats)
    print(f"{'attnsearch --version':34s} wall {base[0]:.2f} s  cpu {base[1]:.2f} s   (process start + import floor)")
    for extra in ([], ["--all"], ["--json"], ["--all", "--json"]):
        wall, cpu, size = time_cli(["show", "show-1000", "--storage", url, *extra], args.repeats)
        name = " ".join(["attnsearch show", *extra])
        print(f"{name:34s} wall {wall:.2f} s  cpu {cpu:.2f} s   output {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
