"""Studies in the storage: create or resume, samplers, study attributes, summaries, deletion.

Study attributes written at creation (all JSON, readable in optuna-dashboard):
``space`` (the normalised space), ``space_fingerprint``, ``objectives``, ``directions``,
``target``, ``hv_reference`` ({"objectives", "point_min"}), ``hv_history`` ([[trial, hv], ...] in
the order the trials *finished*, as the driver knew it then; for a history in trial-number order
use ``search.hypervolume_history(name, url)``, computed from the trials), ``attnsearch_version``,
``created_at``. Metric names are set on the study so the dashboard
labels its axes.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from attnsearch import __version__
from attnsearch.space.catalogue import mechanism
from attnsearch.space.search_space import SearchSpace
from attnsearch.storage import StorageError, forget_study, optuna_storage, redact_url, resolve_url, utcnow

from . import pareto
from .errors import StudyError

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ----------------------------------------------------------------------------- samplers

def nsga2_population(workers: int, minimum: int = 8) -> int:
    """The smallest multiple of ``workers`` that is at least ``minimum``: each generation then
    fills the workers evenly (NSGA-II with fewer trials than a population is random search)."""
    workers = max(1, int(workers))
    return workers * math.ceil(minimum / workers)


def make_sampler(space: SearchSpace, workers: int = 1):
    spec = space.sampler
    seed = spec.seed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if spec.name == "nsga2":
            return optuna.samplers.NSGAIISampler(
                population_size=spec.options.get("population_size", nsga2_population(workers)), seed=seed)
        if spec.name == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.options.get("n_startup_trials", 10))
        # TPE as the space file documents it: multivariate (+ group, for the conditional
        # per-mechanism parameters), constant liar for parallel workers (running trials count
        # as bad points, so parallel asks spread out). With one worker there is nothing running
        # to lie about, and the liar's re-read of the running trials would only cost time.
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                          constant_liar=max(1, int(workers)) > 1,
                                          n_startup_trials=spec.options.get("n_startup_trials", 10))


# ----------------------------------------------------------------------------- reference point

def hv_reference(space: SearchSpace) -> list[float]:
    """The study's fixed hypervolume reference point, in minimisation form.

    From the space alone, so that hypervolume is comparable from the first trial on: quality
    and throughput are non-negative (reference 0); state bytes are bounded by 1.1x the largest
    state any allowed mechanism can have in every layer.
    """
    out = []
    for name, direction in space.objectives:
        if name == "state_bytes":
            proto = space.build([_first_layer(space)] * space.target.n_layers)
            worst = max(mechanism(m).state_bytes(proto, l.params, space.target.context_len, space.target.dtype_bytes)
                        for m, mc in space.mechanisms.items() for l in mc.corner_layers())
            value = 1.1 * worst * space.target.n_layers
        else:
            value = 0.0
        out.append(value * (-1.0 if direction == pareto.MAXIMIZE else 1.0))
    return out


def _first_layer(space):
    from attnsearch.space.arch import LayerSpec

    return LayerSpec(mechanism=next(iter(space.mechanisms)))


# ----------------------------------------------------------------------------- create / load

def open_storage(storage_url: str | None):
    url = resolve_url(storage_url)
    return url, optuna_storage(url)


def create_or_load(space: SearchSpace, study_name: str, storage_url: str | None = None, *, workers: int = 1,
                   allow_space_change: bool = False) -> optuna.Study:
    """The study of that name, created with the space's objectives if it does not exist.

    An existing study must have been made with the same space (fingerprint) unless
    ``allow_space_change``; its objectives must match in any case.
    """
    if not isinstance(study_name, str) or not study_name.strip():
        raise StudyError(f"study name must be a non-empty string, got {study_name!r}")
    url, storage = open_storage(storage_url)
    directions = space.directions
    sampler = make_sampler(space, workers)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except KeyError:
        study = None
    if study is not None:
        attrs = study.user_attrs
        if attrs.get("objectives") and attrs["objectives"] != space.objective_names \
                or pareto.study_directions(study) != directions:
            raise StudyError(f"study {study_name!r} has objectives {attrs.get('objectives')} "
                             f"{pareto.study_directions(study)}, the space asks for {space.objective_names} {directions}")
        old = attrs.get("space_fingerprint")
        if old is not None and old != space.fingerprint() and not allow_space_change:
            raise StudyError(f"study {study_name!r} exists with a different space; "
                             "use another study name or resume with the space it was made with")
        return study
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, sampler=sampler,
                                    directions=directions, load_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:   # a concurrent driver made it first
        return create_or_load(space, study_name, storage_url, workers=workers,
                              allow_space_change=allow_space_change)
    if "space_fingerprint" not in study.user_attrs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(space.objective_names)
        for key, value in {
            "space": space.to_dict(), "space_source": space.source, "space_fingerprint": space.fingerprint(),
            "objectives": space.objective_names, "directions": directions,
            "target": space.target.to_dict(),
            "hv_reference": {"objectives": space.objective_names, "point_min": hv_reference(space)},
            "hv_history": [], "attnsearch_version": __version__, "created_at": utcnow().isoformat(),
        }.items():
            study.set_user_attr(key, value)
    return study


def load_study(study_name: str, storage_url: str | None = None) -> optuna.Study:
    url, storage = open_storage(storage_url)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise StudyError(f"no study named {study_name!r} in {redact_url(url)}") from None


# ----------------------------------------------------------------------------- summaries

@dataclass
class StudySummary:
    name: str
    objectives: list[str]
    directions: list[str]
    n_trials: int
    n_complete: int
    n_failed: int
    n_running: int
    n_pruned: int
    n_waiting: int
    front_size: int
    hypervolume: float | None
    best: dict = field(default_factory=dict)       # objective -> best value among completed
    target: dict = field(default_factory=dict)
    created_at: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def summarize(study: optuna.Study) -> StudySummary:
    trials = study.get_trials(deepcopy=False)
    counts = {s: 0 for s in TrialState}
    for t in trials:
        counts[t.state] += 1
    attrs = study.user_attrs
    names = attrs.get("objectives") or [f"objective_{i}" for i in range(len(study.directions))]
    directions = pareto.study_directions(study)
    done = pareto.completed_feasible(study)
    # a reused trial repeats its original's point (same architecture): the original stands for
    # both, as in the Pareto table, so the front counts each architecture once
    front = pareto.pareto_front([t for t in done if "reused_from" not in t.user_attrs], directions)
    hv = None
    ref = (attrs.get("hv_reference") or {}).get("point_min")
    if front and ref:
        hv = pareto.hypervolume(pareto.to_min([t.values for t in front], directions), ref)
    best = {}
    for i, (name, d) in enumerate(zip(names, directions)):
        vals = [t.values[i] for t in done]
        if vals:
            best[name] = max(vals) if d == pareto.MAXIMIZE else min(vals)
    return StudySummary(
        name=study.study_name, objectives=names, directions=directions, n_trials=len(trials),
        n_complete=counts[TrialState.COMPLETE], n_failed=counts[TrialState.FAIL],
        n_running=counts[TrialState.RUNNING], n_pruned=counts[TrialState.PRUNED],
        n_waiting=counts[TrialState.WAITING], front_size=len(front), hypervolume=hv, best=best,
        target=attrs.get("target", {}), created_at=attrs.get("created_at"))


def list_studies(storage_url: str | None = None) -> list[dict]:
    """Every study in the storage: name, trial counts by state, objectives (cheap: one query)."""
    url, storage = open_storage(storage_url)
    out = []
    for s in optuna.get_all_study_summaries(storage=storage, include_best_trial=False):
        out.append({"name": s.study_name, "n_trials": s.n_trials,
                    "directions": [d.name.lower() for d in s.directions],
                    "objectives": s.user_attrs.get("objectives"),
                    "created_at": s.user_attrs.get("created_at") or (s.datetime_start.isoformat()
                                                                     if s.datetime_start else None)})
    return out


def delete_study(study_name: str, storage_url: str | None = None) -> None:
    url, storage = open_storage(storage_url)
    try:
        optuna.delete_study(study_name=study_name, storage=storage)
    except KeyError:
        raise StudyError(f"no study named {study_name!r} in {redact_url(url)}") from None
    forget_study(url, study_name)


__all__ = ["StudyError", "StorageError", "create_or_load", "load_study", "summarize", "StudySummary",
           "list_studies", "delete_study", "make_sampler", "nsga2_population", "hv_reference"]
