"""The ask/tell driver: keeps ``workers`` trials in flight as Ray tasks, alone writes the database.

One trial's life::

    ask -> suggest (ArchConfig; infeasible -> PRUNED with constraint values, nothing trained)
        -> same architecture already evaluated?  reuse its metrics (or wait for the twin in flight)
        -> Ray task run_evaluation(evaluate, request)   [max_retries=0, CPUs or a GPU fraction]
        -> plain dict back -> user attrs -> tell (COMPLETE, or FAIL with the reason)

Trial budget (``n_trials``) is study-wide: the study stops growing when its *counted* trials
(complete, failed by evaluation, or running) reach it, so a resumed driver continues to the
same total and two drivers on one study share the budget. Trials failed because their driver
died or was interrupted (``fail_kind`` ``stale``/``interrupted``) are not counted: their
parameters are re-enqueued once (``retry_of``) and run again. Infeasible samples (PRUNED) are
not counted either.

Liveness: each driver has a row in ``attnsearch_driver`` with a heartbeat; every trial carries
its ``driver_id``. On start (and every ``sweep_every_s``) a driver fails and re-enqueues the
RUNNING trials of drivers that are dead: same host and process gone, or heartbeat older than
``stale_after_s``. Optuna's own heartbeat is not used because it only runs inside
``study.optimize()``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import time
import uuid
from datetime import timezone
from dataclasses import dataclass, field
from typing import Callable

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from attnsearch.evaluators.memory import evaluate_memory
from attnsearch.evaluators.throughput import estimate_throughput
from attnsearch.space.search_space import Infeasible, SearchSpace
from attnsearch.storage import DriverRecord, claim_event, is_transient, session, utcnow, with_reconnect, write_error

from . import pareto
from .study import create_or_load
from .worker import evaluate_architecture, run_evaluation, software_versions

COUNTED_FAIL_KINDS_EXCLUDED = ("stale", "interrupted", "over_budget")
MAX_ATTEMPTS = 3
MAX_INFEASIBLE_IN_A_ROW = 500
HISTORY_FLUSH_S = 2.0
REFRESH_ALONE_S = 10.0      # a driver alone on its study re-reads the trials at most this often


# ----------------------------------------------------------------------------- progress / result

@dataclass
class Progress:
    """What a progress display needs; passed to ``progress_callback`` after every event."""
    study_name: str
    n_trials: int | None              # the budget (None: until timeout/stagnation/interrupt)
    counted: int                      # study-wide trials counted toward the budget
    complete: int                     # this run
    failed: int                       # this run
    pruned: int                       # this run (infeasible samples)
    reused: int                       # this run (identical architecture, metrics reused)
    running: int
    elapsed_s: float
    eta_s: float | None
    front_size: int
    hypervolume: float | None
    last: dict | None = None          # the trial that just finished: number, state, layout, ...


@dataclass
class RunResult:
    study_name: str
    storage_url: str
    stop_reason: str                  # budget | timeout | stagnation | interrupted | stopped | exhausted
    trials_run: list[int] = field(default_factory=list)   # trial numbers this driver finished
    complete: int = 0
    failed: int = 0
    pruned: int = 0
    reused: int = 0
    wall_s: float = 0.0
    front_size: int = 0
    hypervolume: float | None = None
    driver_id: str = ""
    overhead_s: list[float] = field(default_factory=list)  # per-trial driver time (ask..dispatch + tell)
    measured: dict | None = None      # measured mode: benchmark cache use, tuned layer kinds, GPU time

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------- helpers

def arch_hash(arch_dict: dict) -> str:
    body = {k: v for k, v in arch_dict.items() if k != "name"}
    return hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _pid_alive(pid: int, started_at) -> bool:
    try:
        import psutil

        proc = psutil.Process(pid)
        # a reused pid belongs to a process created after our driver registered
        return proc.create_time() <= started_at.timestamp() + 5 and proc.status() != psutil.STATUS_ZOMBIE
    except Exception:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


# drivers running in this process now: a record with our own pid that is not here is a driver
# of this process that ended without unregistering (its database write failed)
_RUNNING_HERE: set[str] = set()


def live_driver_ids(url: str, study_name: str, stale_after_s: float) -> set[str]:
    now = utcnow()
    host = socket.gethostname()
    alive = set()
    with session(url) as s:
        rows = s.scalars(sa.select(DriverRecord).where(DriverRecord.study_name == study_name,
                                                       DriverRecord.stopped_at.is_(None))).all()
        for r in rows:
            if r.hostname == host and r.pid == os.getpid():
                ok = r.driver_id in _RUNNING_HERE
            elif r.hostname == host:
                ok = _pid_alive(r.pid, r.started_at.replace(tzinfo=timezone.utc))
            else:
                ok = (now - r.heartbeat_at).total_seconds() < stale_after_s
            if ok:
                alive.add(r.driver_id)
    return alive


def _set_trial_attrs(study, trial_id: int, attrs: dict, constraints: dict[str, float] | None = None) -> None:
    """A trial's user attributes (and constraint values, see :func:`_constraint_attr`) in one
    database transaction.

    Optuna's ``set_trial_user_attr`` loads the trial through the ORM and commits once per key,
    which is most of the cost of a small write (a driver writes five or six keys per trial).
    Here, on Optuna's own engine, one Core transaction: the trial's state (a finished trial
    cannot be updated: ``UpdateFinishedTrialError``, as Optuna raises), then one multi-row
    upsert per table into Optuna's attribute tables (the rows and ``json.dumps`` values Optuna
    writes itself), one commit: four statements, one round trip each on PostgreSQL. A database
    without ``INSERT ... ON CONFLICT`` (SQLite < 3.24) or a storage that is not Optuna's
    RDBStorage gets one public call per key."""
    system = _constraint_attr(constraints)
    storage = study._storage
    rdb = getattr(storage, "_backend", storage)
    insert = _upsert_insert(rdb)
    if insert is None:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        for key, value in system.items():
            storage.set_trial_system_attr(trial_id, key, value)
        return
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    writes = [(models.TrialUserAttributeModel.__table__, attrs), (models.TrialSystemAttributeModel.__table__, system)]

    def once():
        with rdb.engine.begin() as conn:
            row = conn.execute(sa.select(trials.c.number, trials.c.state)
                               .where(trials.c.trial_id == trial_id)).one_or_none()
            if row is None:
                raise KeyError(f"no trial with id {trial_id}")
            state = TrialState[row.state] if isinstance(row.state, str) else TrialState(row.state)
            if state.is_finished():
                raise optuna.exceptions.UpdateFinishedTrialError(
                    f"Trial#{row.number} has already finished and can not be updated.")
            for table, items in writes:
                if items:
                    stmt = insert(table).values([{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)}
                                                 for k, v in items.items()])
                    conn.execute(stmt.on_conflict_do_update(index_elements=[table.c.trial_id, table.c.key],
                                                            set_={"value_json": stmt.excluded.value_json}))

    # a lost PostgreSQL connection rolls the transaction back: run it again on a fresh connection
    with_reconnect(once)()


def _upsert_insert(rdb):
    """The dialect's ``insert`` (with ``on_conflict_do_update``) for Optuna's engine, or None
    when the storage is not an RDBStorage or the database cannot upsert."""
    import sqlite3

    engine = getattr(rdb, "engine", None)
    name = getattr(engine, "name", None)
    try:
        from optuna.storages._rdb import models  # noqa: F401 - the tables written to
    except ImportError:
        return None
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
        return insert
    if name == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert
        return insert
    return None


def _ask_owned(study, owner_attrs: dict) -> optuna.trial.Trial:
    """``study.ask()`` with ``owner_attrs`` (the driver id) on the trial from its first moment.

    The steps of ``Study.ask`` (drop the per-trial cache, pop the queue, else create), with two
    savings. A new trial is created from a template that carries the attributes, so they are
    written in the transaction that inserts the trial row: one commit instead of two, and no
    instant in which another driver could see the trial RUNNING without an owner. And the queue
    is looked at with one small query for WAITING trial ids instead of Optuna's re-read of every
    unfinished and newly finished trial (with their parameters and attributes), which the
    sampler does again right after for its own use: only when something waits does Optuna's own
    pop (read, claim, skip what another driver claimed first) run. A popped trial (a baseline or
    a retry) already exists: it gets the attributes in a write of their own. Where this Optuna
    lacks the internals, it is ``ask()`` plus one write."""
    pop = getattr(study, "_pop_waiting_trial_id", None)
    local = getattr(study, "_thread_local", None)
    if pop is None or local is None or not hasattr(local, "cached_all_trials"):
        trial = study.ask()
        _set_trial_attrs(study, trial._trial_id, owner_attrs)
        return trial
    local.cached_all_trials = None          # what ask() does: the trial cache is per trial
    trial_id = pop() if _may_have_waiting(study) else None
    if trial_id is not None:
        _set_trial_attrs(study, trial_id, owner_attrs)
    else:
        from datetime import datetime

        template = optuna.trial.FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(),
            datetime_complete=None, params={}, distributions={}, user_attrs=dict(owner_attrs),
            system_attrs={}, intermediate_values={}, trial_id=-1)
        trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return optuna.trial.Trial(study, trial_id)


def _may_have_waiting(study) -> bool:
    """Whether the study has WAITING (enqueued) trials: one indexed query on Optuna's trials
    table; True where that table cannot be read directly (then Optuna's pop decides)."""
    rdb = getattr(study._storage, "_backend", study._storage)
    engine = getattr(rdb, "engine", None)
    try:
        from optuna.storages._rdb import models
    except ImportError:
        return True
    if engine is None:
        return True
    trials = models.TrialModel.__table__

    def query():
        with engine.connect() as conn:
            return conn.execute(sa.select(trials.c.trial_id).where(
                trials.c.study_id == study._study_id, trials.c.state == TrialState.WAITING).limit(1)).first()

    return with_reconnect(query)() is not None


# optuna-dashboard cuts every attribute at 1,024 characters of JSON: the full proxy result
# (with its loss curve) stays in ``run.details.quality``; this short form is what it shows whole
QUALITY_SUMMARY_KEYS = ("score", "metrics", "steps", "tokens_seen", "train_time_s", "device", "layout",
                        "diverged", "reason", "stopped_early")


def _quality_summary(extra: dict | None) -> dict | None:
    details = (extra or {}).get("quality")
    if not isinstance(details, dict):
        return None
    return {k: details[k] for k in QUALITY_SUMMARY_KEYS if k in details}


def _constraint_attr(constraints: dict[str, float] | None) -> dict:
    """Constraint values in the list form (system attr ``constraints``): Optuna 5's samplers read
    it and optuna-dashboard 0.21 shows only this form; names go to the ``constraint_names`` attr."""
    return {"constraints": [float(v) for v in constraints.values()]} if constraints else {}


def _counted(t) -> bool:
    if t.state == TrialState.COMPLETE:
        return True
    if t.state == TrialState.FAIL:
        return t.user_attrs.get("fail_kind") not in COUNTED_FAIL_KINDS_EXCLUDED
    return False


def _has_retry(study, number: int) -> bool:
    return any(t.user_attrs.get("retry_of") == number for t in study.get_trials(deepcopy=False))


def sweep_stale(study, url: str, my_driver_id: str | None, stale_after_s: float = 120.0,
                fail_kind: str = "stale", only: set[int] | None = None) -> list[int]:
    """Fail the RUNNING trials of dead drivers (or ``only`` these numbers) and re-enqueue each
    one's parameters once. Returns the failed trial numbers."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    alive = live_driver_ids(url, study.study_name, stale_after_s)
    if my_driver_id:
        alive.add(my_driver_id)
    failed = []
    now = utcnow()
    for t in running:
        owner = t.user_attrs.get("driver_id")
        if only is not None:
            if t.number not in only:
                continue
        elif owner in alive:
            continue
        elif owner is None and len(alive - {my_driver_id}) > 0:
            # asked by a live driver a moment ago, attrs not written yet: leave it unless old
            start = t.datetime_start.replace(tzinfo=None) if t.datetime_start else now
            if (now - start).total_seconds() < stale_after_s:
                continue
        attempt = int(t.user_attrs.get("attempt", 1))
        # The claim makes the retry happen once across drivers; a driver killed between its claim
        # and the enqueue leaves a claim with no retry, which the next sweep makes good.
        if attempt < MAX_ATTEMPTS and (claim_event(url, study.study_name, f"retry:{t.number}")
                                       or not _has_retry(study, t.number)):
            attrs = {"retry_of": t.number, "lineage": t.user_attrs.get("lineage", t.number),
                     "attempt": attempt + 1}
            if "baseline" in t.user_attrs:
                attrs["baseline"] = t.user_attrs["baseline"]
            study.enqueue_trial(t.params, user_attrs=attrs)
        # a layout whose runs died with their driver MAX_ATTEMPTS times is not tried again
        then = ("parameters re-enqueued" if attempt < MAX_ATTEMPTS
                else f"not re-enqueued: attempt {attempt} of at most {MAX_ATTEMPTS}")
        reason = (f"interrupted (Ctrl-C); {then}" if fail_kind == "interrupted"
                  else f"stale: driver {owner or 'unknown'} died while the trial was running; {then}")
        try:
            _set_trial_attrs(study, t._trial_id, {"fail_kind": fail_kind, "fail_reason": reason})
            study.tell(t.number, state=TrialState.FAIL)
        except (RuntimeError, ValueError):   # another driver finished it meanwhile
            continue
        failed.append(t.number)
    return failed


# ----------------------------------------------------------------------------- the driver

@dataclass
class _InFlight:
    trial: optuna.trial.Trial
    arch: dict
    arch_hash: str
    layout: str
    metrics: dict                # analytic metrics computed in the driver
    started: float
    ref: object = None           # Ray ObjectRef (None: parked behind a twin)
    twins: list = field(default_factory=list)   # parked duplicates waiting on this one
    cancelled: str | None = None
    overhead: float = 0.0
    constraints: dict = field(default_factory=dict)
    arch_obj: object = None      # the ArchConfig (measured mode benchmarks it)
    request: dict | None = None  # what the proxy task gets
    measured: dict | None = None  # measured mode: {"metrics", "kernel_configs"} once known
    bench_s: float = 0.0         # GPU benchmark time spent for this trial


def _local_gpu_count() -> int:
    """GPUs of this machine, for a local cluster's benchmarking slots (no CUDA context made)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:                  # noqa: BLE001 - no usable torch/CUDA: no GPU slots
        return 0


class Driver:
    def __init__(self, space: SearchSpace, study_name: str, storage_url: str, *, workers: int = 1,
                 device: str = "cpu", evaluate: Callable[[dict], dict] | None = None,
                 trial_timeout_s: float | None = None, stale_after_s: float = 120.0,
                 heartbeat_s: float = 5.0, sweep_every_s: float = 30.0, allow_space_change: bool = False,
                 enqueue_baselines: bool = True, bench_task: Callable[[dict], dict] | None = None):
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device {device!r} not allowed (allowed: cpu, cuda)")
        self.space = space
        self.url = storage_url
        self.workers = workers
        self.device = device
        self.evaluate = evaluate or evaluate_architecture
        self.trial_timeout_s = trial_timeout_s if trial_timeout_s is not None else space.evaluation.trial_timeout_s
        self.stale_after_s = stale_after_s
        self.heartbeat_s = heartbeat_s
        self.sweep_every_s = sweep_every_s
        self.driver_id = uuid.uuid4().hex
        self.study = create_or_load(space, study_name, storage_url, workers=workers,
                                    allow_space_change=allow_space_change)
        self.study_name = study_name
        self.enqueue_baselines = enqueue_baselines
        self.directions = space.directions
        self.names = space.objective_names
        self.reference = (self.study.user_attrs.get("hv_reference") or {}).get("point_min")
        self._known: dict[str, dict] = {}           # arch hash -> {"metrics", "number"} of COMPLETE trials
        self._front: list[tuple[int, list[float]]] = []   # (number, values) of the Pareto front
        self._seen_complete: set[int] = set()
        self._inflight: dict[object, _InFlight] = {}      # ref -> entry
        self._by_hash: dict[str, _InFlight] = {}
        self.result = RunResult(study_name, storage_url, "budget", driver_id=self.driver_id)
        self.measured = None
        if space.evaluation.throughput == "measured":
            from .measured import MeasuredSpeed

            ev = space.evaluation
            self.measured = MeasuredSpeed(storage_url, space.target, tune=ev.tune_kernels,
                                          tune_trials=ev.tune_trials, tune_budget_s=ev.tune_budget_s,
                                          gpu=device == "cuda", **({"task": bench_task} if bench_task else {}))
        self._bench_wait: list[_InFlight] = []      # measured mode: trials waiting for their speed
        # benchmark tasks in flight: ref -> (the trials they serve, the arch timed, start time);
        # a joint benchmark is split over the cluster's benchmarking slots (one per GPU)
        self._benches: dict = {}
        self._bench_joint_ok = True                 # False after a joint benchmark failed

    # ------------------------------------------------------------------ bookkeeping
    @with_reconnect
    def _register(self):
        now = utcnow()
        with session(self.url) as s:
            s.add(DriverRecord(driver_id=self.driver_id, study_name=self.study_name, hostname=socket.gethostname(),
                               pid=os.getpid(), started_at=now, heartbeat_at=now))
            s.commit()
        self._last_beat = time.monotonic()

    def _heartbeat(self, force=False):
        if force or time.monotonic() - self._last_beat >= self.heartbeat_s:
            try:
                with session(self.url) as s:
                    s.execute(sa.update(DriverRecord).where(DriverRecord.driver_id == self.driver_id)
                              .values(heartbeat_at=utcnow()))
                    s.commit()
                # a driver that joined the study is noticed here, at most heartbeat_s late (the
                # budget does not depend on it: see _may_be_over_budget)
                self._shared = self._other_drivers()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                return                  # server away for a moment: beat again on the next turn
            self._last_beat = time.monotonic()

    @with_reconnect
    def _unregister(self, reason: str):
        with session(self.url) as s:
            s.execute(sa.update(DriverRecord).where(DriverRecord.driver_id == self.driver_id)
                      .values(stopped_at=utcnow(), stop_reason=reason[:255]))
            s.commit()

    def _throughput(self, arch) -> float:
        t = self.space.target
        return estimate_throughput(arch, t.context_len, t.batch_tokens, t.gpu, t.dtype).tokens_per_s

    def _analytic_metrics(self, arch) -> dict:
        t = self.space.target
        mem = evaluate_memory(arch, t.context_len, t.dtype)
        metrics = {"state_bytes": mem.state_bytes, "param_count": mem.param_count,
                   "n_full_layers": sum(1 for l in arch.layers if l.mechanism == "full")}
        if self.space.evaluation.throughput == "estimated":
            metrics["throughput"] = self._throughput(arch)
            metrics["throughput_mode"] = "estimated"
        else:
            metrics["throughput_estimated"] = self._throughput(arch)
        return metrics

    def _load_history(self):
        """Known results (dedup) and the Pareto front from trials already in the study."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            self._absorb_complete(t)

    def _absorb_complete(self, t):
        if t.number in self._seen_complete:
            return
        self._seen_complete.add(t.number)
        h = arch_hash(t.user_attrs["arch"]) if "arch" in t.user_attrs else None
        if h and h not in self._known and "metrics" in t.user_attrs:
            self._known[h] = {"metrics": t.user_attrs["metrics"], "number": t.number}
        if t.values is not None and pareto.feasible(t) and "reused_from" not in t.user_attrs:
            self._add_to_front(t.number, list(t.values))   # a reused trial repeats its original

    def _add_to_front(self, number, values):
        pts = self._front + [(number, values)]
        mask = pareto.nondominated_mask(pareto.to_min([v for _, v in pts], self.directions))
        self._front = [p for p, keep in zip(pts, mask) if keep]

    def hypervolume(self) -> float | None:
        if not self._front or not self.reference:
            return None
        return pareto.hypervolume(pareto.to_min([v for _, v in self._front], self.directions), self.reference)

    def _record_history(self, number: int):
        """Append (trial, hypervolume) to the study's history attribute.

        The front also holds other drivers' trials (merged at every refresh); with several
        drivers each appends its own trials, last writer wins for the attribute, which is
        acceptable for a plot and never affects results."""
        hv = self.hypervolume() or 0.0
        self._history.append([number, hv])
        self._flush_history()

    def _flush_history(self, force: bool = False):
        """Write the history attribute at most every ``HISTORY_FLUSH_S`` (one write per trial is a
        noticeable part of the per-trial overhead); always at the end of a run."""
        if force or time.monotonic() - self._history_written >= HISTORY_FLUSH_S:
            if len(self._history) != self._history_len_written:
                self.study.set_user_attr("hv_history", self._history)
                self._history_len_written = len(self._history)
            self._history_written = time.monotonic()

    def refresh(self) -> int:
        """Re-read the study (one cached query): merge new completed trials into the front and
        dedup table, and return the number of trials counted toward the budget."""
        trials = self.study.get_trials(deepcopy=False)
        self._last_refresh = time.monotonic()
        counted = 0
        for t in trials:
            if t.state == TrialState.COMPLETE:
                self._absorb_complete(t)
            if t.state == TrialState.RUNNING or _counted(t):
                counted += 1
        self._counted = counted
        return counted

    def counted_trials(self) -> int:
        return self.refresh()

    def _refresh_before_ask(self):
        """Re-read the study before asking, unless this driver was alone on it when last looked
        (at the previous heartbeat): then its own counts, front and dedup table are exact and
        re-reading every trial is wasted work (the largest avoidable per-trial cost on SQLite).
        A driver that joins is seen at the next heartbeat; the budget holds meanwhile because
        every trial numbered past it gets the exact check (``_may_be_over_budget``)."""
        if self._shared is None:
            self._shared = self._other_drivers()
        if self._shared or time.monotonic() - self._last_refresh >= REFRESH_ALONE_S:
            self.refresh()

    # ------------------------------------------------------------------ ask / dispatch / tell
    def _ask_one(self, remote) -> str:
        """Ask one trial and start it. Returns 'dispatched' | 'parked' | 'done' (reused) | 'pruned'."""
        t0 = time.perf_counter()
        # the owner comes with the trial: it is what tells a dead driver's trial from a live one's
        trial = _ask_owned(self.study, {"driver_id": self.driver_id})
        if self._may_be_over_budget(trial) and self._over_budget(trial):
            return "over"
        try:
            arch = self.space.suggest(trial, throughput_fn=self._throughput)
        except Infeasible as exc:
            _set_trial_attrs(self.study, trial._trial_id, {
                "layout": exc.arch.layout_string(), "arch": exc.arch.to_dict(),
                "fail_kind": "infeasible", "fail_reason": str(exc), "run": {"constraints": exc.constraints}},
                constraints=exc.constraints)
            self.study.tell(trial, state=TrialState.PRUNED)
            self.result.pruned += 1
            self._after_finish(trial.number, "PRUNED", exc.arch.layout_string(), counted=False)
            return "pruned"
        arch_d = arch.to_dict()
        h = arch_hash(arch_d)
        metrics = self._analytic_metrics(arch)
        # written with the result in _finish (one transaction): samplers and tables read the
        # constraint values of finished trials only
        constraints = self.space.constraint_values(arch, self._throughput)
        entry = _InFlight(trial, arch_d, h, arch.layout_string(), metrics, time.monotonic(),
                          constraints=constraints)
        if h in self._known:                             # evaluated before: reuse, do not retrain
            known = self._known[h]
            self._finish(entry, {"status": "ok", "metrics": known["metrics"], "timings": {},
                                 "worker": {}, "reused_from": known["number"]}, overhead=time.perf_counter() - t0)
            return "done"
        if h in self._by_hash:                           # its twin is in flight: wait for it
            self._by_hash[h].twins.append(entry)
            entry.overhead = time.perf_counter() - t0
            return "parked"
        entry.arch_obj = arch
        entry.request = self._request(trial.number, arch_d, metrics)
        self._by_hash[h] = entry
        if self.measured is not None:                # speed first (GPU alone), then the proxy
            self._bench_wait.append(entry)
            entry.overhead = time.perf_counter() - t0
            return "dispatched"
        self._dispatch(entry, remote)
        entry.overhead = time.perf_counter() - t0
        return "dispatched"

    def _request(self, number: int, arch_d: dict, metrics: dict) -> dict:
        return {"trial_number": number, "arch": arch_d, "proxy": self.space.proxy,
                "objectives": self.names, "metrics": metrics, "target": self.space.target.to_dict(),
                "throughput_mode": self.space.evaluation.throughput, "device": self.device,
                "seed": self.space.seed, "measured_in_driver": self.measured is not None}

    def _dispatch(self, entry: _InFlight, remote):
        entry.ref = remote.remote(self.evaluate, entry.request)
        entry.started = time.monotonic()
        self._inflight[entry.ref] = entry

    # ------------------------------------------------------------------ measured throughput
    def _pump_measured(self, remote):
        """Measured mode: serve waiting trials from the benchmark cache; otherwise start one
        benchmark task for every layer kind the waiting trials still lack (one process, one CUDA
        start) and hold back proxy training until it has run; once none needs the GPU, hand the
        waiting trials to the proxy workers."""
        if self.measured is None or self._benches:
            return
        for entry in self._bench_wait:
            if entry.measured is None:
                entry.measured = self.measured.compose(entry.arch_obj)
        need = [e for e in self._bench_wait if e.measured is None]
        if need:
            # after a joint benchmark failed, one trial at a time: a faulting layer kind then
            # fails only the trials that use it
            batch = need if self._bench_joint_ok else need[:1]
            union = self.measured.union([e.arch_obj for e in batch])
            parts = self.measured.split(union, self._bench_slots()) if len(batch) > 1 else [union]
            for arch in parts:
                self._benches[self.measured.submit(arch)] = (batch, arch, time.monotonic())
            return
        waiting, self._bench_wait = self._bench_wait, []
        for entry in waiting:
            entry.metrics.update(entry.measured["metrics"])
            self._dispatch(entry, remote)

    def _bench_slots(self) -> int:
        """How many benchmark tasks can run at once: the cluster's benchmarking slots, at most
        one per GPU (each task holds a whole GPU)."""
        import ray

        from attnsearch.evaluators.microbench import BENCH_RESOURCE

        res = ray.cluster_resources()
        slots = int(res.get(BENCH_RESOURCE, 1))
        return max(1, min(slots, int(res.get("GPU", slots)) if self.measured.gpu else slots))

    def _bench_done(self, ref, remote):
        import ray

        batch, arch, started = self._benches.pop(ref)
        batch[0].bench_s += time.monotonic() - started    # GPU time, counted with one trial
        try:
            out = ray.get(ref)
            if len(batch) == 1:
                batch[0].measured = self.measured.absorb(batch[0].arch_obj, out)
            else:                                  # fills the cache; each trial composes from it
                self.measured.absorb(arch, out, joint=True)
        except Exception as exc:  # noqa: BLE001 - a failed benchmark fails its trial, not the study
            if len(batch) > 1:
                self._bench_joint_ok = False           # find the culprit one trial at a time
            else:
                entry = batch[0]
                failure = self._ray_failure(exc, entry)
                failure["reason"] = f"benchmark: {failure['reason']}"
                self._bench_wait.remove(entry)
                self._by_hash.pop(entry.arch_hash, None)
                self._finish(entry, failure)
        self._pump_measured(remote)

    def _other_drivers(self) -> bool:
        """Whether another driver is registered on this study (one small query): alone, the
        per-ask re-read of the trials can be skipped. Asked with each heartbeat, not on every
        ask (the budget does not depend on it, see ``_may_be_over_budget``)."""
        with session(self.url) as s:
            return s.scalar(sa.select(sa.func.count()).select_from(DriverRecord).where(
                DriverRecord.study_name == self.study_name, DriverRecord.stopped_at.is_(None),
                DriverRecord.driver_id != self.driver_id)) > 0

    def _may_be_over_budget(self, trial) -> bool:
        """Whether ``trial`` needs the exact budget check (which reads the trials). Trial numbers
        are unique and given out in order, so at most ``number + 1`` trials are numbered up to
        this one: below the budget it cannot be over it, whoever else is asking. Past that it is
        always checked, even when this driver believes it is alone: another driver may have come,
        used part of the budget and gone between two heartbeats, unseen by this driver's count."""
        return self.n_trials is not None and trial.number >= self.n_trials

    def _over_budget(self, trial) -> bool:
        """Exact budget with several drivers: trial numbers are given out in order, so a trial is
        over budget when the counted trials numbered up to it exceed ``n_trials`` (another
        driver asked in the same moment). It is then failed as ``over_budget`` (not counted)
        and, if it came from the queue (a baseline or a retry), its parameters go back in."""
        upto = sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.number <= trial.number and (t.state == TrialState.RUNNING or _counted(t)))
        if upto <= self.n_trials:
            return False
        frozen = self.study._storage.get_trial(trial._trial_id)
        if "fixed_params" in frozen.system_attrs and claim_event(self.url, self.study_name, f"requeue:{trial.number}"):
            self.study.enqueue_trial(frozen.system_attrs["fixed_params"],
                                     user_attrs={k: v for k, v in frozen.user_attrs.items() if k != "driver_id"})
        _set_trial_attrs(self.study, trial._trial_id, {
            "fail_kind": "over_budget", "fail_reason": f"over the study budget of {self.n_trials} trials "
                                                       "(another driver asked at the same moment); not run"})
        self.study.tell(trial, state=TrialState.FAIL)
        return True

    def _finish(self, entry: _InFlight, result: dict, overhead: float = 0.0):
        """Write the result of one trial (and of any twins parked behind it)."""
        t0 = time.perf_counter()
        trial = entry.trial
        metrics = {**entry.metrics, **(result.get("metrics") or {})}
        # few attributes, each one database write: arch, layout, metrics, and "run" for the rest
        run = {"timings": {**(result.get("timings") or {}), "wall_s": time.monotonic() - entry.started},
               "worker": result.get("worker") or {}}
        if result.get("extra"):
            run["details"] = result["extra"]
        if entry.measured and entry.measured.get("kernel_configs"):
            run["kernel_configs"] = entry.measured["kernel_configs"]    # what export / build_model use
        if entry.bench_s:
            run["timings"]["bench_s"] = entry.bench_s
        if entry.constraints:
            run["constraints"] = entry.constraints
        attrs = {"layout": entry.layout, "arch": entry.arch, "metrics": metrics, "run": run}
        quality = _quality_summary(result.get("extra"))
        if quality:
            attrs["quality_details"] = quality
        if "reused_from" in result:
            attrs["reused_from"] = result["reused_from"]
        values = None
        if result.get("status") == "ok":
            try:
                values = [float(metrics[n]) for n in self.names]
            except (KeyError, TypeError, ValueError) as exc:
                result = {**result, "status": "fail", "fail_kind": "exception",
                          "reason": f"missing objective metric: {exc}"}
            else:
                if not all(math.isfinite(v) for v in values):
                    result = {**result, "status": "fail", "fail_kind": "diverged",
                              "reason": f"diverged: non-finite objective values {values}"}
        if result.get("status") != "ok":
            attrs["fail_kind"] = result.get("fail_kind", "exception")
            attrs["fail_reason"] = result.get("reason") or "unknown failure"
            if result.get("traceback"):
                attrs["traceback"] = result["traceback"]
        _set_trial_attrs(self.study, trial._trial_id, attrs, constraints=entry.constraints)
        if result.get("status") == "ok":
            self.study.tell(trial, values)
            self.result.complete += 1
            if "reused_from" in result:
                self.result.reused += 1
            else:
                self._known.setdefault(entry.arch_hash, {"metrics": metrics, "number": trial.number})
            self._seen_complete.add(trial.number)
            if "reused_from" not in result:            # a reused trial repeats its original's point
                self._add_to_front(trial.number, values)   # suggest() only returns feasible layouts
            state = "COMPLETE"
        else:
            self.study.tell(trial, state=TrialState.FAIL)
            self.result.failed += 1
            state = "FAIL"
        self.result.trials_run.append(trial.number)
        self.result.overhead_s.append(overhead + entry.overhead + time.perf_counter() - t0)
        self._after_finish(trial.number, state, entry.layout, counted=True,
                           reason=attrs.get("fail_reason"), metrics=metrics)
        twins, entry.twins = entry.twins, []
        for twin in twins:
            if result.get("status") == "ok":
                self._finish(twin, {"status": "ok", "metrics": metrics, "timings": {},
                                    "worker": {}, "reused_from": trial.number})
            else:
                self._pending_twins.append(twin)       # the original failed: evaluate the twin itself

    def _after_finish(self, number, state, layout, counted, reason=None, metrics=None):
        if counted:
            self._record_history(number)
        self._last = {"number": number, "state": state, "layout": layout, "reason": reason,
                      "metrics": {k: metrics.get(k) for k in self.names} if metrics else None}
        self._report()

    def _report(self):
        if self.progress_callback is None:
            return
        elapsed = time.monotonic() - self._t_start
        counted = self._counted_cache()
        finished_here = self.result.complete + self.result.failed
        eta = None
        if self.n_trials is not None and finished_here:
            eta = elapsed / finished_here * max(0, self.n_trials - counted + len(self._inflight))
        self.progress_callback(Progress(
            study_name=self.study_name, n_trials=self.n_trials, counted=counted,
            complete=self.result.complete, failed=self.result.failed, pruned=self.result.pruned,
            reused=self.result.reused, running=self._busy(),
            elapsed_s=elapsed, eta_s=eta, front_size=len(self._front), hypervolume=self.hypervolume(),
            last=self._last))

    def _counted_cache(self) -> int:
        return self._counted

    # ------------------------------------------------------------------ failures from Ray
    @staticmethod
    def _ray_failure(exc: BaseException, entry: _InFlight) -> dict:
        import ray.exceptions as rex

        if entry.cancelled:
            kind, reason = "timeout", entry.cancelled
        elif isinstance(exc, rex.OutOfMemoryError):
            kind, reason = "oom", f"out of memory: worker killed by Ray's memory monitor ({_first_line(exc)})"
        elif isinstance(exc, rex.WorkerCrashedError):
            kind, reason = "worker_crashed", "worker process died (crashed or killed) during the trial"
        elif isinstance(exc, (rex.NodeDiedError, rex.LocalRayletDiedError)):
            kind, reason = "node_died", f"Ray node died during the trial ({_first_line(exc)})"
        elif isinstance(exc, rex.TaskCancelledError):
            kind, reason = "cancelled", "task cancelled"
        elif isinstance(exc, rex.RayTaskError):
            kind, reason = "exception", _first_line(exc.cause if getattr(exc, "cause", None) else exc)
        else:
            kind, reason = "ray_error", f"{type(exc).__name__}: {_first_line(exc)}"
        return {"status": "fail", "fail_kind": kind, "reason": reason, "metrics": {}, "timings": {}}

    # ------------------------------------------------------------------ the loop
    def run(self, n_trials: int | None = None, timeout: float | None = None, stagnation_trials: int | None = None,
            progress_callback: Callable[[Progress], None] | None = None,
            should_stop: Callable[[], bool] | None = None, ray_address: str | None = None) -> RunResult:
        import ray

        if n_trials is not None and (not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1):
            raise ValueError(f"n_trials must be an integer >= 1 or None, got {n_trials!r}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds or None, got {timeout!r}")
        self.n_trials, self.progress_callback = n_trials, progress_callback
        self._pending_twins: list[_InFlight] = []
        self._last = None
        self._history = list(self.study.user_attrs.get("hv_history", []))
        self._history_len_written, self._history_written = len(self._history), time.monotonic()
        self._t_start = time.monotonic()
        self._counted = 0
        self._shared, self._last_refresh = None, 0.0     # unknown yet: the first fill re-reads
        owns_ray = False
        if not ray.is_initialized():
            # a local cluster gets one benchmarking slot per GPU node (measured mode's isolation)
            extra = {} if ray_address or os.environ.get("RAY_ADDRESS") else \
                {"resources": {"bench_slot": max(1, _local_gpu_count())}}
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **extra)
            owns_ray = True
        if self.device == "cuda" and not ray.cluster_resources().get("GPU"):
            # Ray would wait forever for a GPU that never comes: say so instead of hanging
            if owns_ray:
                ray.shutdown()
            raise ValueError("device 'cuda': the Ray cluster has no GPU; use device cpu, or join a "
                             "cluster with GPUs (--ray-address)")
        resources = ({"num_cpus": 0, "num_gpus": self.space.evaluation.gpus_per_trial} if self.device == "cuda"
                     else {"num_cpus": self.space.evaluation.cpus_per_trial, "num_gpus": 0})
        remote = ray.remote(run_evaluation).options(max_retries=0, retry_exceptions=False, **resources)
        self._register()
        _RUNNING_HERE.add(self.driver_id)
        stop_reason = None
        db_error = None
        try:
            with_reconnect(sweep_stale)(self.study, self.url, self.driver_id, self.stale_after_s)
            self._last_sweep = time.monotonic()
            if self.enqueue_baselines:
                self._enqueue_baselines()
            self._load_history()
            stop_reason = self._loop(remote, timeout, stagnation_trials, should_stop)
        except KeyboardInterrupt:
            stop_reason = "interrupted"
        except Exception as exc:
            if not _is_database_error(exc):
                raise
            db_error = exc                # disk full, read-only, server gone for good: one clear line
        finally:
            _RUNNING_HERE.discard(self.driver_id)
            if stop_reason is None:
                stop_reason = "error"
            try:
                self._abandon_inflight(stop_reason)
                self._flush_history(force=True)
                if self.measured is not None:
                    self.study.set_user_attr("measured_speed", self.measured.summary())
                self._unregister(stop_reason)
            except Exception as exc:
                # the database cannot be written: the next driver sweeps our trials as stale
                if not _is_database_error(exc):
                    raise
                db_error = db_error or exc
            if owns_ray:
                ray.shutdown()
        if db_error is not None:
            raise write_error(self.url, db_error) from None
        self.result.stop_reason = stop_reason
        self.result.wall_s = time.monotonic() - self._t_start
        self.result.front_size = len(self._front)
        self.result.hypervolume = self.hypervolume()
        if self.measured is not None:
            self.result.measured = self.measured.summary()
        return self.result

    def _abandon_inflight(self, reason: str):
        """Cancel what is still running and hand its trials back to the study (re-enqueued)."""
        import ray

        entries = self._inflight_entries()
        numbers = set()
        for e in entries:
            numbers.add(e.trial.number)
            numbers.update(t.trial.number for t in e.twins)
            try:
                if e.ref is not None:
                    ray.cancel(e.ref, force=True)
            except Exception:
                pass
        for ref in list(self._benches):
            try:
                ray.cancel(ref, force=True)
            except Exception:
                pass
        self._benches.clear()
        numbers.update(t.trial.number for t in self._pending_twins)
        self._inflight.clear()
        self._bench_wait.clear()
        if numbers:
            sweep_stale(self.study, self.url, self.driver_id, self.stale_after_s,
                        fail_kind="interrupted", only=numbers)

    def _enqueue_baselines(self):
        if not claim_event(self.url, self.study_name, "baselines_enqueued"):
            return
        names = []
        for name, params, _arch in self.space.baselines(self._throughput):
            self.study.enqueue_trial(params, user_attrs={"baseline": name})
            names.append(name)
        self.study.set_user_attr("baselines", names)

    def _loop(self, remote, timeout, stagnation_trials, should_stop) -> str:
        import ray

        infeasible_in_a_row = 0
        while True:
            if should_stop is not None and should_stop():
                return "stopped"
            stop = self._stop_reason(timeout, stagnation_trials)
            # fill free worker slots (twins of failed originals first)
            if stop is None and self._busy() < self.workers:
                self._refresh_before_ask()
            while stop is None and self._busy() < self.workers:
                if self._pending_twins:
                    self._redispatch(self._pending_twins.pop(0), remote)
                    continue
                if self.n_trials is not None and self._counted >= self.n_trials:
                    break
                outcome = self._ask_one(remote)
                if outcome == "over":
                    self.refresh()
                    break
                if outcome != "pruned":
                    self._counted += 1
                infeasible_in_a_row = infeasible_in_a_row + 1 if outcome == "pruned" else 0
                if infeasible_in_a_row >= MAX_INFEASIBLE_IN_A_ROW:
                    # the sampler keeps proposing layouts that break the constraints
                    stop = "exhausted"
                elif outcome in ("done", "pruned"):
                    # finished without a worker (reused or infeasible): the stop conditions may
                    # have been met without any Ray task to wait for
                    stop = self._stop_reason(timeout, stagnation_trials)
            self._pump_measured(remote)
            if not self._inflight and not self._bench_wait:
                if stop:
                    return stop
                if self.n_trials is not None and self.counted_trials() >= self.n_trials:
                    # others' trials may still be running; the budget is met once they end
                    return "budget"
                continue
            refs = list(self._inflight) + list(self._benches)
            ready, _ = ray.wait(refs, num_returns=1, timeout=0.5)
            for ref in ready:
                if ref in self._benches:
                    self._bench_done(ref, remote)
                    continue
                entry = self._inflight.pop(ref)
                self._by_hash.pop(entry.arch_hash, None)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - every Ray failure becomes a reason
                    result = self._ray_failure(exc, entry)
                self._finish(entry, result)
            self._check_timeouts()
            self._heartbeat()
            if time.monotonic() - self._last_sweep >= self.sweep_every_s:
                with_reconnect(sweep_stale)(self.study, self.url, self.driver_id, self.stale_after_s)
                self._last_sweep = time.monotonic()
            if stop and not self._inflight and not self._bench_wait:
                return stop

    def _stop_reason(self, timeout, stagnation_trials) -> str | None:
        if timeout is not None and time.monotonic() - self._t_start >= timeout:
            return "timeout"
        if stagnation_trials and len(self._history) > stagnation_trials \
                and pareto.last_improvement_gap(self._history) >= stagnation_trials:
            return "stagnation"
        return None

    def _busy(self) -> int:
        """Worker slots in use: tasks in flight, trials waiting for their measured speed, and
        twins parked behind them (bounded, so a sampler that keeps proposing one layout cannot
        pile up RUNNING trials)."""
        waiting = self._inflight_entries()
        return len(waiting) + sum(len(e.twins) for e in waiting)

    def _inflight_entries(self) -> list[_InFlight]:
        return list(self._inflight.values()) + self._bench_wait

    def _redispatch(self, entry: _InFlight, remote):
        entry.request = self._request(entry.trial.number, entry.arch, entry.metrics)
        self._by_hash.setdefault(entry.arch_hash, entry)
        if self.measured is not None:
            if entry.arch_obj is None:
                from attnsearch.space.arch import ArchConfig

                entry.arch_obj = ArchConfig.from_dict(entry.arch)
            self._bench_wait.append(entry)
            return
        self._dispatch(entry, remote)

    def _check_timeouts(self):
        import ray

        if not self.trial_timeout_s:
            return
        now = time.monotonic()
        for entry in list(self._inflight.values()):
            if entry.cancelled is None and now - entry.started > self.trial_timeout_s:
                entry.cancelled = f"timed out: exceeded the trial time limit of {self.trial_timeout_s:g} s"
                ray.cancel(entry.ref, force=True)


def _is_database_error(exc: BaseException) -> bool:
    return isinstance(exc, (sa.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError))


def _first_line(exc: BaseException) -> str:
    lines = [l for l in str(exc).strip().splitlines() if l.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
