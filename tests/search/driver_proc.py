"""A search driver in its own process (for kill -9 and two-driver tests).

    python driver_proc.py SPACE_JSON STUDY URL N_TRIALS WORKERS SLEEP_S RAY_ADDRESS

Joins the test session's Ray cluster and prints the RunResult as one JSON line at the end.
"""
import functools
import json
import sys

import ray

from attnsearch import search
from attnsearch.search.testing import synthetic_evaluate


def main():
    space_json, study, url, n_trials, workers, sleep_s, address = sys.argv[1:8]
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    result = search.run_study(json.loads(space_json), study, url, n_trials=int(n_trials), workers=int(workers),
                              evaluate=functools.partial(synthetic_evaluate, sleep_s=float(sleep_s)))
    print(json.dumps({"trials_run": result.trials_run, "stop_reason": result.stop_reason,
                      "complete": result.complete}), flush=True)


if __name__ == "__main__":
    main()
