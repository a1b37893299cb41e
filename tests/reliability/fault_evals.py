"""Evaluation functions that misbehave on purpose, for the fault scenarios.

They run inside Ray workers. The scenarios register this module with cloudpickle *by value*, so
the workers do not need the tests folder on their import path.

Every function scores like :func:`attnsearch.search.testing.synthetic_quality` and first writes
its worker's pid to ``<pid_dir>/trial-<n>.pid``, so a scenario can SIGKILL that very process
mid-trial, or check that a trial past its time limit really had its process killed.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from attnsearch.search.testing import synthetic_quality


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _record_pid(pid_dir: str | None, number: int) -> None:
    if pid_dir:
        path = Path(pid_dir) / f"trial-{number}.pid"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()} {_node_id()}")
        tmp.replace(path)                 # atomic: a reader never sees a half-written file


def read_pid(pid_file: Path) -> tuple[int, str]:
    """(pid, Ray node id) a trial's worker recorded."""
    pid, node = pid_file.read_text().split()
    return int(pid), node


def slow_eval(request: dict, *, pid_dir: str | None = None, sleep_s: float = 0.1,
              slow: dict | None = None, raises: tuple = (), losses: dict | None = None,
              node_sleep: dict | None = None) -> dict:
    """Sleep ``slow.get(trial, sleep_s)`` seconds (``node_sleep``: Ray node id -> seconds on that
    node), then score the architecture.

    ``raises``: trial numbers that raise after sleeping. ``losses``: trial number -> a loss value
    (NaN, inf) that the "training" produced; the quality is then that value, as a real proxy
    would report it.
    """
    number = int(request.get("trial_number", -1))
    _record_pid(pid_dir, number)
    seconds = (slow or {}).get(number, sleep_s)
    if node_sleep:
        seconds = node_sleep.get(_node_id(), seconds)
    time.sleep(seconds)
    if number in raises:
        raise RuntimeError(f"injected failure in trial {number}")
    if losses and number in losses:
        return {"metrics": {"quality": float(losses[number]), "loss": float(losses[number])}}
    return {"metrics": {"quality": synthetic_quality(request["arch"])}}
