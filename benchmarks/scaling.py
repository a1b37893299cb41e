"""Scaling of the search driver over Ray workers.

    python benchmarks/scaling.py [--trials 16] [--burn 2.0] [--skip-cluster]

1. The same 16-trial study (same space, seed, CPU-bound synthetic evaluation burning ``--burn``
   seconds of CPU per trial) with 1 and 2 Ray workers on a local 2-CPU cluster, alternated
   ``--repeats`` times; prints the median wall times and their ratio.
2. A simulated 2-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head and a
   second node, 1 CPU each) runs a study with 2 workers; prints how many trials landed on each
   node (from each trial's ``run.worker.node_id``).
"""
from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
import uuid
from collections import Counter

import optuna


def study_wall(url: str, workers: int, n: int, burn: float, sleep: float = 0.0) -> float:
    from attnsearch import search
    from attnsearch.search.testing import synthetic_evaluate

    name = f"scaling-{workers}w-{uuid.uuid4().hex[:6]}"
    t0 = time.perf_counter()
    result = search.run_study(search.default_space(), name, url, n_trials=n, workers=workers,
                              evaluate=functools.partial(synthetic_evaluate, burn_s=burn, sleep_s=sleep))
    wall = time.perf_counter() - t0
    assert result.complete == n, result
    return wall


def nodes_of(url: str, name: str) -> Counter:
    from attnsearch.storage import optuna_storage

    study = optuna.load_study(study_name=name, storage=optuna_storage(url))
    return Counter((t.user_attrs.get("run") or {}).get("worker", {}).get("node_id")
                   for t in study.get_trials(deepcopy=False) if "reused_from" not in t.user_attrs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--burn", type=float, default=1.0, help="CPU seconds per trial")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sleep", type=float, default=0.0,
                        help="seconds of waiting per trial (I/O-like; shows the driver keeps workers busy)")
    parser.add_argument("--skip-cluster", action="store_true")
    args = parser.parse_args()
    import ray

    print(f"load average before: {os.getloadavg()}, cpus: {os.cpu_count()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/scaling.db"
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        study_wall(url, 2, 2, 0.0)                 # warm the worker processes and imports
        # alternate 1 and 2 workers so that a change in the machine's load hits both alike
        walls = {1: [], 2: []}
        for _ in range(args.repeats):
            for workers in (1, 2):
                walls[workers].append(study_wall(url, workers, args.trials, args.burn, args.sleep))
                print(f"  {workers} worker(s): {walls[workers][-1]:.1f} s  (load {os.getloadavg()[0]:.1f})",
                      flush=True)
        ray.shutdown()
        one, two = statistics.median(walls[1]), statistics.median(walls[2])
        print(f"{args.trials} trials x ({args.burn} CPU-s + {args.sleep} s sleep): 1 worker {one:.1f} s, 2 workers {two:.1f} s "
              f"(medians of {args.repeats}), ratio {one / two:.2f}x", flush=True)
        if args.skip_cluster:
            return
        from ray.cluster_utils import Cluster

        from attnsearch import search
        from attnsearch.search.testing import synthetic_evaluate

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        name = f"two-nodes-{uuid.uuid4().hex[:6]}"
        t0 = time.perf_counter()
        result = search.run_study(search.default_space(), name, url, n_trials=10, workers=2,
                                  evaluate=functools.partial(synthetic_evaluate, burn_s=1.0))
        per_node = nodes_of(url, name)
        print(f"2-node cluster: {result.complete} trials in {time.perf_counter() - t0:.1f} s, "
              f"trials per node: {dict(per_node)} ({len(per_node)} nodes)", flush=True)
        ray.shutdown()
        cluster.shutdown()
    print(f"load average after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
