"""Time the zero-config run (`attnsearch run` with no arguments) and sample its peak memory.

Runs the CLI in a fresh temporary directory (so it creates its own SQLite database), samples
the resident memory of the whole process tree (driver, Ray's GCS/raylet, every worker) every
0.5 s with psutil, and prints wall time, peak tree RSS, the machine's load and the run's output.

    python benchmarks/zero_config_run.py [--keep DIR] [-- extra attnsearch run args]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", help="run in this directory and keep it (default: a temporary one)")
    ap.add_argument("extra", nargs="*", help="extra arguments for `attnsearch run`")
    args = ap.parse_args()
    workdir = args.keep or tempfile.mkdtemp(prefix="attnsearch-zero-config-")
    os.makedirs(workdir, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNSEARCH_")}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "attnsearch.cli", "run", *args.extra], cwd=workdir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    peak = {"rss": 0, "procs": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            try:
                rss = tree_rss(root)
                peak["rss"] = max(peak["rss"], rss)
                peak["procs"] = max(peak["procs"], len(root.children(recursive=True)) + 1)
            except psutil.NoSuchProcess:
                break
            done.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.stdout.read()
    proc.wait()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    print(output)
    print(f"exit code {proc.returncode}; wall time {wall:.1f} s ({wall / 60:.2f} min); peak RSS of the "
          f"process tree {peak['rss'] / 2**30:.2f} GiB over up to {peak['procs']} processes; "
          f"{psutil.cpu_count()} CPUs, load average before {load_before[0]:.1f}, after {os.getloadavg()[0]:.1f}")
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
