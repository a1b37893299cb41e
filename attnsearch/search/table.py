"""A fast read of a study for tables (``attnsearch show``): one pass of SQL over Optuna's tables.

``optuna.load_study`` + ``get_trials`` builds a FrozenTrial per trial with every attribute and
distribution; on a 1,000-trial study that costs seconds, three times over when the summary, the
front and the rows are computed separately. Here the handful of columns a table needs are read
in a few queries, and the rows have exactly the shape of ``attnsearch.search.trial_rows``.
Optuna's RDB schema (studies, trials, trial_values, trial_user_attributes, ...) has been stable
since Optuna 3; if it ever differs, :func:`study_table` falls back to the Optuna API.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass

import sqlalchemy as sa

from attnsearch.storage import get_engine, redact_url, resolve_url

from . import pareto
from .errors import StudyError

# the user attrs a row uses (the big ones, arch and run, only when asked: --json)
ROW_KEYS = ("layout", "metrics", "baseline", "fail_reason", "fail_kind", "reused_from", "retry_of")
HEAVY_KEYS = ("arch", "run")
_INF = {"INF_POS": math.inf, "INF_NEG": -math.inf}


@dataclass
class StudyTable:
    name: str
    objectives: list[str]
    directions: list[str]
    counts: dict[str, int]            # trial state -> count
    front_size: int
    hypervolume: float | None
    rows: list[dict]                  # the front, or every trial
    attrs: dict                       # the study's user attrs (target, space, hv_history, ...)
    hv_by_number: list | None = None  # [[trial, hypervolume of trials numbered <= it], ...] if asked

    @property
    def n_trials(self) -> int:
        return sum(self.counts.values())


def _fetch(conn, sql: str, **params):
    return conn.execute(sa.text(sql), params).all()


def _read(url: str, study_name: str, every: bool, heavy: bool, history: bool = False) -> StudyTable:
    engine = get_engine(url)
    with engine.connect() as conn:
        found = _fetch(conn, "SELECT study_id FROM studies WHERE study_name = :n", n=study_name)
        if not found:
            raise StudyError(f"no study named {study_name!r} in {redact_url(url)}")
        sid = found[0][0]
        directions = [d.lower() for _, d in sorted(_fetch(
            conn, "SELECT objective, direction FROM study_directions WHERE study_id = :s", s=sid))]
        attrs = {k: json.loads(v) for k, v in _fetch(
            conn, "SELECT key, value_json FROM study_user_attributes WHERE study_id = :s", s=sid)}
        trials = _fetch(conn, "SELECT trial_id, number, state, datetime_start, datetime_complete FROM trials "
                              "WHERE study_id = :s ORDER BY number", s=sid)
        values: dict[int, dict[int, float]] = {}
        for tid, objective, value, vtype in _fetch(
                conn, "SELECT v.trial_id, v.objective, v.value, v.value_type FROM trial_values v "
                      "JOIN trials t ON t.trial_id = v.trial_id WHERE t.study_id = :s", s=sid):
            values.setdefault(tid, {})[objective] = _INF.get(vtype, value)
        keys = ROW_KEYS + (HEAVY_KEYS if heavy else ())
        user: dict[int, dict] = {}
        for tid, key, value in _user_attrs(conn, sid, keys):
            user.setdefault(tid, {})[key] = json.loads(value)
        constraints = {tid: json.loads(v) for tid, v in _fetch(
            conn, "SELECT a.trial_id, a.value_json FROM trial_system_attributes a JOIN trials t "
                  "ON t.trial_id = a.trial_id WHERE t.study_id = :s AND a.key = 'constraints'", s=sid)}
    names = attrs.get("objectives") or [f"objective_{i}" for i in range(len(directions))]
    counts: dict[str, int] = {}
    for _tid, _num, state, _s, _c in trials:
        counts[state] = counts.get(state, 0) + 1
    n_obj = len(directions)

    def feasible_complete(tid, state):
        vals = values.get(tid)
        return (state == "COMPLETE" and vals is not None and len(vals) == n_obj
                and all(c <= 0 for c in (constraints.get(tid) or [])))

    done = [(tid, num) for tid, num, state, _s, _c in trials if feasible_complete(tid, state)]
    # a reused trial repeats its original's point: the original stands for both on the front
    candidates = [(tid, num) for tid, num in done if "reused_from" not in user.get(tid, {})]
    on_front: set[int] = set()
    hv = None
    by_number = [] if history else None
    if candidates:
        points = pareto.to_min([[values[tid][i] for i in range(n_obj)] for tid, _ in candidates], directions)
        mask = pareto.nondominated_mask(points)
        on_front = {num for (tid, num), keep in zip(candidates, mask) if keep}
        ref = (attrs.get("hv_reference") or {}).get("point_min")
        if ref:
            hv = pareto.hypervolume(points[mask], ref)
            if history:
                by_number = pareto.history_by_number([num for _, num in candidates], points, ref)
    rows = []
    for tid, num, state, start, complete in trials:
        if not every and num not in on_front:
            continue
        a = user.get(tid, {})
        vals = values.get(tid)
        run = a.get("run") or {}
        rows.append({
            "number": num, "state": state, "layout": a.get("layout"),
            "values": {n: vals.get(i) for i, n in enumerate(names)} if vals and len(vals) == n_obj else None,
            "metrics": a.get("metrics", {}), "baseline": a.get("baseline"), "pareto": num in on_front,
            "arch": a.get("arch"), "fail_reason": a.get("fail_reason"), "fail_kind": a.get("fail_kind"),
            "reused_from": a.get("reused_from"), "retry_of": a.get("retry_of"),
            "worker": run.get("worker"), "timings": run.get("timings", {}),
            "kernel_configs": run.get("kernel_configs"),
            "datetime_start": _iso(start), "datetime_complete": _iso(complete),
        })
    return StudyTable(study_name, names, directions, counts, len(on_front), hv, rows, attrs, by_number)


def _user_attrs(conn, sid: int, keys: tuple[str, ...]):
    stmt = sa.text("SELECT a.trial_id, a.key, a.value_json FROM trial_user_attributes a JOIN trials t "
                   "ON t.trial_id = a.trial_id WHERE t.study_id = :s AND a.key IN :keys") \
        .bindparams(sa.bindparam("keys", expanding=True))
    return conn.execute(stmt, {"s": sid, "keys": list(keys)}).all()


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value).replace(" ", "T")


def _via_optuna(url: str, study_name: str, every: bool, history: bool = False) -> StudyTable:
    from . import load_study_summary, trial_rows
    from .study import load_study

    summary = load_study_summary(study_name, url)
    rows = trial_rows(study_name, url, pareto_only=not every)
    counts = {"COMPLETE": summary.n_complete, "FAIL": summary.n_failed, "RUNNING": summary.n_running,
              "PRUNED": summary.n_pruned, "WAITING": summary.n_waiting}
    front = trial_rows(study_name, url) if every else rows
    attrs = dict(load_study(study_name, url).user_attrs)
    by_number = None
    if history:
        from . import hypervolume_history

        by_number = hypervolume_history(study_name, url, order="number")
    return StudyTable(study_name, summary.objectives, summary.directions, counts, len(front),
                      summary.hypervolume, rows, attrs, by_number)


def study_table(study_name: str, storage_url: str | None = None, *, every: bool = False,
                heavy: bool = False, history: bool = False) -> StudyTable:
    """The study's Pareto front (or ``every`` trial) as rows, with counts and hypervolume
    (and, with ``history``, the hypervolume history in trial-number order)."""
    url = resolve_url(storage_url)
    try:
        return _read(url, study_name, every, heavy, history)
    except StudyError:
        raise
    except sa.exc.SQLAlchemyError:    # not Optuna's schema as we know it: the slow, sure path
        return _via_optuna(url, study_name, every, history)


__all__ = ["StudyTable", "study_table"]
