"""A search driver in its own process, for the faults that need one.

    python fault_driver.py join    '{"space", "study", "url", "n_trials", "workers", "sleep_s", "address"}'
    python fault_driver.py cluster '{"space", "study", "url", "n_trials", "sleep_s"}'

``join``: joins the test session's Ray cluster and runs the study (the scenario SIGKILLs it).
``cluster``: starts its own 2-node simulated cluster (``ray.cluster_utils.Cluster``, one CPU per
node), runs the study with two trials in flight (a trial on the worker node "trains" for 60 s)
and removes the worker node while it runs one. Each mode prints one JSON line at the end.
"""
import functools
import json
import sys
import threading
import time
from pathlib import Path

import fault_evals
import fault_scenarios
import ray

from attnsearch import search


def join(spec: dict) -> dict:
    ray.init(address=spec["address"], log_to_driver=False, configure_logging=False)
    fault_scenarios.make_pickle_by_value()
    result = search.run_study(spec["space"], spec["study"], spec["url"], n_trials=spec["n_trials"],
                              workers=spec["workers"], enqueue_baselines=False,
                              evaluate=functools.partial(fault_evals.slow_eval, sleep_s=spec["sleep_s"]))
    return {"trials_run": result.trials_run, "stop_reason": result.stop_reason, "complete": result.complete}


def cluster(spec: dict) -> dict:
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker_node = nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, log_to_driver=False, configure_logging=False)
    nodes.wait_for_nodes()
    fault_scenarios.make_pickle_by_value()
    info: dict = {"nodes_before": len([n for n in ray.nodes() if n["Alive"]])}

    pid_dir = Path(spec["pid_dir"])
    victim_node = worker_node.node_id

    def on_victim_node():
        for f in pid_dir.glob("trial-*.pid"):
            if fault_evals.read_pid(f)[1] == victim_node:
                return f
        return None

    def remover():
        pid_file = fault_scenarios.wait_for(on_victim_node, timeout=180)
        time.sleep(0.5)                                  # mid-trial
        info["victim_trial"] = int(pid_file.stem.split("-")[1])
        info["removed_at"] = time.time()
        nodes.remove_node(worker_node, allow_graceful=False)
        alive = lambda: len([n for n in ray.nodes() if n["Alive"]]) == 1   # noqa: E731
        fault_scenarios.wait_for(alive, timeout=120, every=0.5)
        info["node_dead_after_s"] = round(time.time() - info["removed_at"], 2)

    thread = threading.Thread(target=remover, daemon=True)
    thread.start()
    result = search.run_study(spec["space"], spec["study"], spec["url"], n_trials=spec["n_trials"], workers=2,
                              enqueue_baselines=False,
                              evaluate=functools.partial(fault_evals.slow_eval, sleep_s=spec["sleep_s"],
                                                         pid_dir=str(pid_dir), node_sleep={victim_node: 60.0}))
    thread.join(timeout=120)
    info.update(stop_reason=result.stop_reason, complete=result.complete, failed=result.failed,
                nodes_after=len([n for n in ray.nodes() if n["Alive"]]))
    ray.shutdown()
    nodes.shutdown()
    return info


if __name__ == "__main__":
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps({"join": join, "cluster": cluster}[mode](spec)), flush=True)
