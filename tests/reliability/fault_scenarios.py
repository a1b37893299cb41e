"""The fault scenarios of the reliability suite, shared by the tests and ``benchmarks/fault_table.py``.

Each scenario runs a tiny study (synthetic scoring, sub-second trials), injects one fault the
way a real cluster produces it, lets the service recover, and returns a :class:`FaultRow`:

- ``completed`` / ``failed``: trials of the study COMPLETE / FAIL-with-a-reason that count toward
  the budget (a trial failed because its *driver* died is re-enqueued and not counted);
- ``lost``: budget shortfall + trials left RUNNING or WAITING + trials that were COMPLETE before
  the fault and are no longer COMPLETE with the same values afterwards;
- ``duplicated``: extra completions of one lineage (a re-enqueued trial completing twice),
  trials re-enqueued more than once, trial numbers seen twice, counted trials over the budget;
- ``recovery_s``: from the fault until the study next records a completed trial (it makes
  progress again); ``None`` where the fault ends in a clear error instead.

A plain module (imported by name) because conftest.py is not importable when several test
folders have one.
"""
from __future__ import annotations

import functools
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import fault_evals

HERE = Path(__file__).resolve().parent

# 8 layers, 4 mechanisms, one choice per layer, random sampler: two trials practically never
# share an architecture, so no trial reuses another's result instead of meeting its fault.
FAULT_SPACE = {
    "target": {"d_model": 256, "n_layers": 8, "n_heads": 4, "head_dim": 64, "vocab_size": 1000,
               "context_len": 4096, "batch_tokens": 65536, "gpu": "H100"},
    "layout": {"mode": "per_layer"},
    "mechanisms": {"full": {}, "sliding_window": {"window": [1024, 4096]}, "mamba2": {}, "gated_deltanet": {}},
    "objectives": ["quality", "throughput"],
    "sampler": {"name": "random", "seed": 7},
}
def _not_counted() -> tuple:
    """Fail kinds the driver does not count toward the budget (its own list, so the two agree)."""
    from attnsearch.search.driver import COUNTED_FAIL_KINDS_EXCLUDED

    return tuple(COUNTED_FAIL_KINDS_EXCLUDED)


NOT_COUNTED = _not_counted()


@dataclass
class FaultRow:
    fault: str
    budget: int
    completed: int
    failed: int
    lost: int
    duplicated: int
    recovery_s: float | None
    outcome: str                                  # the fail reasons / the error the user saw
    trials: list = field(default_factory=list, repr=False)   # FrozenTrials, for the tests' own checks
    extra: dict = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("trials")
        out.pop("extra")
        return out


# ----------------------------------------------------------------------------- helpers

def make_pickle_by_value() -> None:
    """Ship fault_evals to the Ray workers inside the pickled function (no import path needed)."""
    from ray import cloudpickle     # Ray's own copy of cloudpickle serialises task arguments

    cloudpickle.register_pickle_by_value(fault_evals)


def space(**changes):
    from attnsearch import search

    return search.load_space({**FAULT_SPACE, **changes})


def study_trials(name: str, url: str) -> list:
    import optuna

    from attnsearch.storage import optuna_storage

    return optuna.load_study(study_name=name, storage=optuna_storage(url)).get_trials(deepcopy=False)


def completed_values(trials) -> dict[int, tuple]:
    return {t.number: tuple(t.values) for t in trials if t.state.name == "COMPLETE"}


def _kind_and_reason(kind, reason) -> str:
    """'kind: reason', without repeating a kind the reason already starts with."""
    reason = str(reason)
    return reason if reason.startswith(f"{kind}:") else f"{kind}: {reason}"


def audit(fault: str, trials, budget: int, before: dict[int, tuple] | None = None,
          fault_at: float | None = None, outcome: str = "") -> FaultRow:
    """Count completed / failed / lost / duplicated trials of a study after a fault."""
    states = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    counted_fail = [t for t in trials if t.state.name == "FAIL" and t.user_attrs.get("fail_kind") not in NOT_COUNTED]
    counted = len(complete) + len(counted_fail)
    now = completed_values(trials)
    vanished = sum(1 for n, v in (before or {}).items() if now.get(n) != v)
    lost = max(0, budget - counted) + states["RUNNING"] + states["WAITING"] + vanished
    lineages = Counter(t.user_attrs.get("lineage", t.number) for t in complete)
    retries = Counter(t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs)
    numbers = Counter(t.number for t in trials)
    duplicated = (sum(c - 1 for c in lineages.values()) + sum(c - 1 for c in retries.values())
                  + sum(c - 1 for c in numbers.values()) + max(0, counted - budget))
    recovery = None
    if fault_at is not None:
        after = sorted(t.datetime_complete.timestamp() for t in complete
                       if t.datetime_complete and t.datetime_complete.timestamp() > fault_at)
        recovery = round(after[0] - fault_at, 2) if after else None
    if not outcome:
        reasons = sorted({_kind_and_reason(t.user_attrs.get("fail_kind"), t.user_attrs.get("fail_reason"))
                          for t in counted_fail})
        outcome = "; ".join(reasons) or "no failure recorded"
    return FaultRow(fault, budget, len(complete), len(counted_fail), lost, duplicated, recovery, outcome,
                    trials=list(trials))


def first_fail_time(trials, kinds: tuple) -> float | None:
    times = [t.datetime_complete.timestamp() for t in trials
             if t.state.name == "FAIL" and t.user_attrs.get("fail_kind") in kinds and t.datetime_complete]
    return min(times) if times else None


def wait_for(predicate, timeout: float = 120.0, every: float = 0.1):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"condition not met within {timeout:g} s")


def _run(url, name, budget, evaluate, workers=2, **kw):
    from attnsearch import search

    return search.run_study(space(), name, url, n_trials=budget, workers=workers, evaluate=evaluate,
                            enqueue_baselines=False, **kw)


# ----------------------------------------------------------------------------- in-evaluation faults

def trial_raises(url: str, tmp: Path, budget: int = 6) -> FaultRow:
    name = "raises"
    evaluate = functools.partial(fault_evals.slow_eval, sleep_s=0.1, raises=(2,))
    _run(url, name, budget, evaluate)
    trials = study_trials(name, url)
    return audit("trial raises an exception", trials, budget, fault_at=first_fail_time(trials, ("exception",)))


def nan_inf_losses(url: str, tmp: Path, budget: int = 7) -> FaultRow:
    name = "nan-inf"
    losses = {1: math.nan, 3: math.inf, 5: -math.inf}
    evaluate = functools.partial(fault_evals.slow_eval, sleep_s=0.1, losses=losses)
    _run(url, name, budget, evaluate)
    trials = study_trials(name, url)
    return audit("NaN / +Inf / -Inf loss", trials, budget, fault_at=first_fail_time(trials, ("diverged",)))


def worker_sigkill(url: str, tmp: Path, budget: int = 6, victim: int = 2) -> FaultRow:
    """SIGKILL the Ray worker process of trial ``victim`` while it trains (from outside)."""
    name = "worker-kill"
    pid_dir = tmp / "pids-worker-kill"
    pid_dir.mkdir(exist_ok=True)
    evaluate = functools.partial(fault_evals.slow_eval, pid_dir=str(pid_dir), sleep_s=0.1, slow={victim: 30.0})
    killed = {}

    def killer():
        pid_file = pid_dir / f"trial-{victim}.pid"
        wait_for(pid_file.exists, timeout=120)
        time.sleep(0.3)                                   # well inside its 30 s of "training"
        pid, _node = fault_evals.read_pid(pid_file)
        killed["at"] = time.time()
        os.kill(pid, signal.SIGKILL)
        killed["pid"] = pid

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = _run(url, name, budget, evaluate)
    thread.join(timeout=5)
    trials = study_trials(name, url)
    row = audit("Ray worker SIGKILLed mid-trial", trials, budget, fault_at=killed.get("at"))
    row.extra = {"killed_pid": killed.get("pid"), "stop_reason": result.stop_reason}
    return row


def proxy_time_limit(url: str, tmp: Path, budget: int = 5, victim: int = 1, limit_s: float = 3.0) -> FaultRow:
    """Trial ``victim`` "trains" for an hour; the driver's per-trial limit must kill it."""
    name = "time-limit"
    pid_dir = tmp / "pids-time-limit"
    pid_dir.mkdir(exist_ok=True)
    evaluate = functools.partial(fault_evals.slow_eval, pid_dir=str(pid_dir), sleep_s=0.1, slow={victim: 3600.0})
    # one worker: the trials after the victim wait for its slot, so recovery is measurable
    result = _run(url, name, budget, evaluate, workers=1, trial_timeout=limit_s)
    trials = study_trials(name, url)
    pid, _node = fault_evals.read_pid(pid_dir / f"trial-{victim}.pid")
    row = audit(f"proxy past its {limit_s:g} s time limit", trials, budget,
                fault_at=first_fail_time(trials, ("timeout",)))
    row.extra = {"pid": pid, "pid_alive": _alive(pid), "stop_reason": result.stop_reason}
    return row


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:                                   # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


# ----------------------------------------------------------------------------- driver process faults

def driver_cmd(mode: str, **args) -> list[str]:
    return [sys.executable, str(HERE / "fault_driver.py"), mode, json.dumps(args)]


def driver_env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}


def driver_sigkill_resume(url: str, tmp: Path, ray_address: str, budget: int = 24, kills: int = 3) -> FaultRow:
    """SIGKILL the driver process mid-study ``kills`` times in a row, resuming after each kill. Each run is killed
    once it has completed two trials and runs another, so the budget must leave every run work to do (with 12,
    a fast machine's third run could find one trial left, finish it and exit, never to be killed)."""
    name = "driver-kill"
    spec = dict(space=FAULT_SPACE, study=name, url=url, n_trials=budget, workers=2, sleep_s=0.4,
                address=ray_address)
    kill_times, before, done_at_kill = [], {}, []
    for _ in range(kills):
        proc = subprocess.Popen(driver_cmd("join", **spec), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=driver_env())
        done_before = len(completed_values(_safe_trials(name, url)))

        def progressed_and_busy():
            if proc.poll() is not None:
                return "exited"
            trials = _safe_trials(name, url)
            mine = [t for t in trials if t.state.name == "RUNNING" and "driver_id" in t.user_attrs]
            return len(completed_values(trials)) >= done_before + 2 and mine
        try:
            seen = wait_for(progressed_and_busy, timeout=180, every=0.1)
        except TimeoutError:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"driver made no progress: {err[-3000:]}") from None
        if seen == "exited":
            out, err = proc.communicate()
            raise AssertionError(f"driver exited ({proc.returncode}) before it could be killed, with "
                                 f"{len(completed_values(_safe_trials(name, url)))} of {budget} trials done: "
                                 f"{(err or out)[-2000:]}")
        # kill at once: a trial seen running can still finish in the gap, so which trials were in flight is
        # read back from their timestamps afterwards (`in_flight_at`), not assumed; the time is taken once the
        # driver is dead, so that nothing it wrote comes after it
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kill_times.append(time.time())
        before.update(completed_values(_safe_trials(name, url)))  # a dead driver completes nothing more
        done_at_kill.append(len(before))
    # the last resume runs to the end of the budget
    proc = subprocess.run(driver_cmd("join", **spec), capture_output=True, text=True, env=driver_env(),
                          timeout=300)
    if proc.returncode != 0:
        raise AssertionError(f"resumed driver failed: {proc.stderr[-3000:]}")
    trials = study_trials(name, url)
    recoveries = [audit("", trials, budget, fault_at=t).recovery_s for t in kill_times]
    stale = [t for t in trials if t.user_attrs.get("fail_kind") == "stale"]
    row = audit(f"driver SIGKILLed mid-study, resumed ({kills}x)", trials, budget, before=before,
                outcome=f"{len(stale)} running trials failed as stale and re-run")
    row.recovery_s = max((r for r in recoveries if r is not None), default=None)
    # a kill after which the study was already complete (its last trial finished just before the signal landed)
    # has nothing to recover: no trial completes after it
    row.extra = {"recoveries_s": recoveries, "done_at_kill": done_at_kill,
                 "result": json.loads(proc.stdout.strip().splitlines()[-1]),
                 "stale": len(stale), "in_flight": [in_flight_at(trials, t) for t in kill_times]}
    return row


def in_flight_at(trials, when: float) -> list[int]:
    """Numbers of the trials that had started and not finished at time `when` (seconds since the epoch)."""
    def stamp(d):
        return None if d is None else d.timestamp()
    return [t.number for t in trials if t.datetime_start is not None and stamp(t.datetime_start) <= when
            and (t.datetime_complete is None or stamp(t.datetime_complete) > when)]


def _safe_trials(name, url):
    try:
        return study_trials(name, url)
    except KeyError:                                  # the first driver has not created it yet
        return []


def ray_node_removed(tmp: Path, budget: int = 8) -> FaultRow:
    """A 2-node simulated Ray cluster (own process: it cannot share the session's cluster);
    the worker node is removed while it runs a trial."""
    url = f"sqlite:///{tmp / 'node-removed.db'}"
    pid_dir = tmp / "pids-node-removed"
    pid_dir.mkdir(exist_ok=True)
    proc = subprocess.run(driver_cmd("cluster", space=FAULT_SPACE, study="node-removed", url=url,
                                     n_trials=budget, sleep_s=0.3, pid_dir=str(pid_dir)),
                          capture_output=True, text=True, env=driver_env(), timeout=400)
    if proc.returncode != 0:
        raise AssertionError(f"2-node cluster driver failed: {proc.stderr[-4000:]}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    trials = study_trials("node-removed", url)
    row = audit("Ray node removed (2-node cluster)", trials, budget, fault_at=info["removed_at"])
    row.extra = info
    return row


# ----------------------------------------------------------------------------- database faults

def postgres_restart(pg_url: str, tmp: Path, budget: int = 10) -> FaultRow:
    """``pg_ctlcluster <ver> main restart`` while the driver runs."""
    import uuid

    from attnsearch import search

    name = f"pg-restart-{uuid.uuid4().hex[:8]}"
    evaluate = functools.partial(fault_evals.slow_eval, sleep_s=0.5)
    restarted = {}

    def restarter():
        wait_for(lambda: len(completed_values(_safe_trials(name, pg_url))) >= 3, timeout=120)
        restarted["at"] = time.time()
        out = subprocess.run(["pg_ctlcluster", pg_version(), "main", "restart"], capture_output=True, text=True)
        restarted["rc"], restarted["err"] = out.returncode, out.stderr.strip()
        restarted["took_s"] = round(time.time() - restarted["at"], 2)

    thread = threading.Thread(target=restarter, daemon=True)
    thread.start()
    try:
        result = _run(pg_url, name, budget, evaluate)
    finally:
        thread.join(timeout=60)
    trials = study_trials(name, pg_url)
    row = audit("PostgreSQL restarted mid-study", trials, budget, fault_at=restarted.get("at"),
                outcome=f"restart took {restarted.get('took_s')} s; driver kept going")
    row.extra = {**restarted, "stop_reason": result.stop_reason}
    search.delete_study(name, pg_url)
    return row


def pg_version() -> str:
    versions = sorted(os.listdir("/usr/lib/postgresql"), key=lambda v: float(v))
    return versions[-1]


def can_restart_postgres() -> str | None:
    """None when this process may restart the local cluster, else why not."""
    import shutil

    if not shutil.which("pg_ctlcluster") or not os.path.isdir("/usr/lib/postgresql"):
        return "pg_ctlcluster not installed"
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root"
    return None


def sqlite_integrity(path: Path) -> str:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def _mount(*args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


def _umount(path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def database_read_only(tmp: Path, budget: int = 6) -> FaultRow:
    """The database's folder becomes read-only (a read-only bind mount when we may mount, else
    file permissions): resuming the study must fail with one clear line, and the database stays
    intact and resumable once writable again."""
    from typer.testing import CliRunner

    from attnsearch.cli import app

    folder = tmp / "ro-data"
    view = tmp / "ro-view"
    folder.mkdir()
    view.mkdir()
    if not _mount("--bind", str(folder), str(view)):
        raise RuntimeError("cannot bind-mount (needs root with CAP_SYS_ADMIN)")
    try:
        url = f"sqlite:///{view / 'study.db'}"
        name = "read-only"
        evaluate = functools.partial(fault_evals.slow_eval, sleep_s=0.05)
        _run(url, name, 3, evaluate)
        before = completed_values(study_trials(name, url))
        _forget_engines(url)
        assert _mount("-o", "remount,ro,bind", str(view)), "remount read-only failed"
        t0 = time.time()
        error = _expect_clear_error(lambda: _run(url, name, budget, evaluate))
        cli = CliRunner().invoke(app, ["show", name, "--storage", url])
        _forget_engines(url)
        assert _mount("-o", "remount,rw,bind", str(view)), "remount read-write failed"
        integrity = sqlite_integrity(view / "study.db")
        _run(url, name, budget, evaluate)                   # writable again: the study resumes
        trials = study_trials(name, url)
    finally:
        _forget_engines(url)
        _umount(view)
    row = audit("database read-only", trials, budget, before=before, outcome=f"API: {error}")
    row.extra = {"integrity": integrity, "error": error, "error_s": round(time.time() - t0, 2),
                 "cli_show_exit": cli.exit_code, "cli_show_output": cli.output}
    return row


def database_disk_full(tmp: Path, budget: int = 40, size: str = "2m") -> FaultRow:
    """The database lives on a tiny tmpfs that fills up mid-study: the driver must stop with one
    clear error, the database must stay intact, and after space is freed the study resumes."""
    mnt = tmp / "full-disk"
    mnt.mkdir()
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)):
        raise RuntimeError("cannot mount a tmpfs (needs root with CAP_SYS_ADMIN)")
    url = f"sqlite:///{mnt / 'study.db'}"
    name = "disk-full"
    evaluate = functools.partial(fault_evals.slow_eval, sleep_s=0.02)
    seen = {}

    def watch(progress):
        seen.setdefault("complete", {}).update(completed_values(study_trials(name, url)))
    try:
        t0 = time.time()
        error = _expect_clear_error(lambda: _run(url, name, budget, evaluate, progress_callback=watch))
        error_s = round(time.time() - t0, 2)
        before = seen.get("complete", {})
        _forget_engines(url)
        integrity = sqlite_integrity(mnt / "study.db")
        assert _mount("-o", "remount,size=64m", str(mnt)), "could not grow the tmpfs"
        _run(url, name, budget, evaluate)                   # space again: the study resumes
        trials = study_trials(name, url)
    finally:
        _forget_engines(url)
        _umount(mnt)
    row = audit(f"disk full ({size} tmpfs)", trials, budget, before=before, outcome=f"API: {error}")
    row.extra = {"integrity": integrity, "error": error, "error_s": error_s, "complete_before": len(before)}
    return row


def _expect_clear_error(fn) -> str:
    """Run ``fn``; it must raise a ValueError (the project's one-line errors); return its text."""
    try:
        fn()
    except ValueError as exc:
        return f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported as the failure of the scenario
        raise AssertionError(f"not a clear error: {type(exc).__module__}.{type(exc).__name__}: {exc}") from exc
    raise AssertionError("no error: the study ran on a database it cannot write")


def _forget_engines(url: str) -> None:
    """Drop this process's cached connections to ``url`` (they may hold a file on a mount we
    are about to change)."""
    from attnsearch import storage

    for cache in (storage._engines, storage._optuna):
        obj = cache.pop(url, None)
        engine = getattr(obj, "engine", obj)
        if engine is not None:
            engine.dispose()
    storage._schema_ready.discard(url)


# ----------------------------------------------------------------------------- the table

COLUMNS = ("fault", "budget", "completed", "failed", "lost", "duplicated", "recovery_s", "outcome")


def format_table(rows: list[FaultRow]) -> str:
    data = [[str(getattr(r, c) if getattr(r, c) is not None else "-") for c in COLUMNS] for r in rows]
    data = [[cell if len(cell) <= 90 else cell[:87] + "..." for cell in row] for row in data]
    widths = [max(len(c), *(len(row[i]) for row in data)) if data else len(c) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in data]
    return "\n".join(lines)
