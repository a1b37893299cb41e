"""Pareto front, hypervolume and selection policies.

Everything is computed in *minimisation form*: each objective value is multiplied by its sign
(+1 minimise, -1 maximise), so "smaller is better" everywhere and one hypervolume routine serves
any mix of directions. The reference point of a study is fixed once and recorded as a study
attribute (``hv_reference``), so hypervolumes of the same study are comparable over time;
points that do not strictly dominate the reference contribute nothing.

Pure functions (numbers in, numbers out) come first; the study-facing helpers below them read
completed, feasible trials (constraint values all <= 0) from an Optuna study.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MAXIMIZE, MINIMIZE = "maximize", "minimize"
POLICIES = ("knee", "best-quality", "fastest", "smallest-state")


# ----------------------------------------------------------------------------- pure functions

def signs(directions: Sequence[str]) -> np.ndarray:
    out = []
    for d in directions:
        if d not in (MAXIMIZE, MINIMIZE):
            raise ValueError(f"direction {d!r} not allowed (allowed: maximize, minimize)")
        out.append(-1.0 if d == MAXIMIZE else 1.0)
    return np.asarray(out)


def to_min(values, directions: Sequence[str]) -> np.ndarray:
    """Values [n, d] (or [d]) in minimisation form."""
    return np.asarray(values, dtype=float) * signs(directions)


def nondominated_mask(points: np.ndarray) -> np.ndarray:
    """True for points no other point dominates (minimisation; duplicates all kept)."""
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return np.zeros(0, dtype=bool)
    le = (pts[:, None, :] <= pts[None, :, :]).all(-1)   # le[j, i]: j <= i everywhere
    lt = (pts[:, None, :] < pts[None, :, :]).any(-1)    # lt[j, i]: j < i somewhere
    dominated = (le & lt).any(0)
    return ~dominated


def hypervolume(points, reference) -> float:
    """Exact hypervolume dominated by ``points`` and bounded by ``reference`` (minimisation).

    2-D by a sweep, more dimensions by slicing along the last objective (fine for the small
    fronts of a search: cost grows as n^(d-1)).
    """
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, ref.size)
    pts = pts[(pts < ref).all(1)]
    if len(pts) == 0:
        return 0.0
    pts = pts[nondominated_mask(pts)]
    return float(_hv(pts, ref))


def _hv(pts: np.ndarray, ref: np.ndarray) -> float:
    d = ref.size
    if d == 1:
        return float(ref[0] - pts[:, 0].min())
    if d == 2:
        order = np.argsort(pts[:, 0], kind="stable")
        area, best_y = 0.0, ref[1]
        for x, y in pts[order]:
            if y < best_y:
                area += (ref[0] - x) * (best_y - y)
                best_y = y
        return area
    order = np.argsort(pts[:, -1], kind="stable")
    pts = pts[order]
    volume = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        depth = upper - pts[i, -1]
        if depth > 0:
            front = pts[: i + 1, :-1]
            volume += depth * _hv(front[nondominated_mask(front)], ref[:-1])
    return volume


def reference_from_points(points, margin: float = 0.1) -> list[float]:
    """A reference point just beyond the worst of ``points`` (minimisation form): the nadir plus
    ``margin`` of the range (or of the magnitude when the range is zero, or 1 when both are)."""
    pts = np.asarray(points, dtype=float).reshape(len(points), -1)
    worst, best = pts.max(0), pts.min(0)
    span = np.where(worst - best > 0, worst - best, np.abs(worst))
    span = np.where(span > 0, span, 1.0)
    return [float(v) for v in worst + margin * span]


def knee_index(points) -> int:
    """Index of the knee of a front: the point closest to the ideal point after scaling every
    objective to [0, 1] over the front (minimisation form). Ties go to the earlier point."""
    pts = np.asarray(points, dtype=float)
    lo, hi = pts.min(0), pts.max(0)
    scaled = (pts - lo) / np.where(hi > lo, hi - lo, 1.0)
    return int(np.argmin(np.linalg.norm(scaled, axis=1)))


def last_improvement_gap(history: Sequence[Sequence[float]], rel_tol: float = 1e-9) -> int:
    """How many history entries came after the last strict hypervolume improvement."""
    best, gap = -math.inf, 0
    for _, hv in history:
        if best == -math.inf or hv > best + rel_tol * abs(best):
            best, gap = hv, 0
        else:
            gap += 1
    return gap


def history_by_number(numbers: Sequence[int], points, reference) -> list[list[float]]:
    """Hypervolume after each trial in *trial-number* order: entry i is the hypervolume of the
    points of every trial numbered <= numbers[i] (minimisation form). Never decreases, whatever
    order the trials finished in (with parallel workers a later number often finishes first,
    so a finish-ordered history re-plotted against trial numbers would seem to dip)."""
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, ref.size)
    order = np.argsort(np.asarray(numbers), kind="stable")
    front = np.zeros((0, ref.size))
    out = []
    for i in order:
        p = pts[i]
        # a point dominated by (or equal to) the current front changes nothing
        if not (front.size and (front <= p).all(1).any()):
            front = np.vstack([front, p])
            front = front[nondominated_mask(front)]
            hv = hypervolume(front, ref)
        else:
            hv = out[-1][1] if out else 0.0
        out.append([int(numbers[i]), float(hv)])
    return out


# ----------------------------------------------------------------------------- study helpers

def feasible(trial) -> bool:
    return all(v <= 0 for v in trial.constraints.values())


def completed_feasible(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values is not None and feasible(t)]


def study_directions(study) -> list[str]:
    return [MAXIMIZE if d.name == "MAXIMIZE" else MINIMIZE for d in study.directions]


def pareto_front(trials: Sequence, directions: Sequence[str]) -> list:
    """The non-dominated trials (by their objective values), in trial-number order."""
    if not trials:
        return []
    mask = nondominated_mask(to_min([t.values for t in trials], directions))
    return sorted((t for t, keep in zip(trials, mask) if keep), key=lambda t: t.number)


def _metric(trial, name: str):
    metrics = trial.user_attrs.get("metrics") or {}
    return metrics.get(name)


def select(trials: Sequence, directions: Sequence[str], objective_names: Sequence[str],
           policy: str = "knee", *, min_throughput: float | None = None,
           max_state_bytes: float | None = None):
    """Pick one trial by ``policy`` among completed feasible ``trials`` that meet the filters.

    policies: ``knee`` (knee of the Pareto front of the eligible trials), ``best-quality``,
    ``fastest`` (highest throughput), ``smallest-state``. Filters use the trial's metrics, so
    they work whether or not the metric is an objective. Raises ValueError when nothing fits.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy {policy!r} not allowed (allowed: {', '.join(POLICIES)})")
    pool = list(trials)
    if not pool:
        raise ValueError("no completed feasible trial to select from")
    if min_throughput is not None:
        pool = [t for t in pool if (_metric(t, "throughput") or -math.inf) >= min_throughput]
    if max_state_bytes is not None:
        pool = [t for t in pool if (_metric(t, "state_bytes") if _metric(t, "state_bytes") is not None
                                    else math.inf) <= max_state_bytes]
    if not pool:
        wanted = []
        if min_throughput is not None:
            wanted.append(f"throughput >= {min_throughput:g}")
        if max_state_bytes is not None:
            wanted.append(f"state_bytes <= {max_state_bytes:g}")
        raise ValueError(f"no completed trial meets {' and '.join(wanted)}")
    key_metric = {"best-quality": ("quality", -1), "fastest": ("throughput", -1),
                  "smallest-state": ("state_bytes", 1)}
    if policy in key_metric:
        name, sign = key_metric[policy]
        rated = [t for t in pool if _metric(t, name) is not None]
        if not rated:
            raise ValueError(f"no eligible trial has the metric {name!r}")
        return min(rated, key=lambda t: (sign * _metric(t, name), t.number))
    front = pareto_front(pool, directions)
    return front[knee_index(to_min([t.values for t in front], directions))]
