"""The search service: multi-objective Optuna studies driven over Ray, stored in one database.

Python API (what the CLI calls; every bad input is a ValueError with one line naming the field)::

    from attnsearch import search

    space = search.load_space("space.yaml")          # or a dict, or search.default_space()
    result = search.run_study(space, "my-study", storage_url="sqlite:///attnsearch.db",
                              n_trials=40, timeout=None, workers=2, ray_address=None,
                              device="cpu", progress_callback=print)
    result.stop_reason          # budget | timeout | stagnation | interrupted | stopped | exhausted
    search.list_studies(url)                          # [{"name", "n_trials", "objectives", ...}]
    search.load_study_summary("my-study", url)        # StudySummary (counts, front size, HV, best)
    search.pareto_table("my-study", url)              # rows of the Pareto front (all=True: every trial)
    search.select_trial("my-study", url, policy="knee", min_throughput=None, max_state_bytes=None)
    search.hypervolume_history("my-study", url)       # [[trial number, hypervolume], ...] by number
    search.delete_study("my-study", url)

- ``load_space`` parses and validates a space file (see ``attnsearch.space.search_space`` for the
  format), checks the GPU name against the cost model and refuses impossible constraints before
  anything is trained. ``default_space()`` is the small built-in CPU space.
- ``run_study`` creates the study or resumes it (same name, same space), enqueues the literature
  baselines once, and runs the ask/tell driver (``attnsearch.search.driver``) until ``n_trials``
  (study-wide), ``timeout`` seconds, or ``stagnation_trials`` trials without hypervolume gain.
  ``progress_callback(Progress)`` is called after every finished trial. Ctrl-C returns with
  ``stop_reason="interrupted"`` and the study resumable. ``evaluate=`` swaps the evaluation
  function run in the Ray tasks (tests use ``attnsearch.search.testing.synthetic_evaluate``).
- ``trial_timeout`` (or the space's ``evaluation.trial_timeout_s``) is counted from dispatch, so
  it includes queueing and worker start-up; a trial past it is cancelled (worker killed) and
  failed with ``fail_kind="timeout"``. Other ``fail_kind`` values: ``exception``, ``oom``,
  ``worker_crashed``, ``node_died``, ``diverged``, ``infeasible`` (PRUNED, nothing trained),
  ``stale`` / ``interrupted`` (re-enqueued, not counted), ``over_budget`` (not counted).
- Per-trial user attributes (JSON): ``driver_id``, ``layout``, ``arch`` (ArchConfig JSON), ``metrics``
  (quality, throughput, throughput_mode, state_bytes, param_count, n_full_layers),
  ``run`` ({"timings", "worker": {node_id, host, pid, device, versions}, "details",
  "constraints"}), ``quality_details`` (the proxy result without its loss curve: short enough
  for optuna-dashboard, which cuts attributes at 1,024 characters), ``baseline``, ``reused_from``, ``retry_of``/``lineage``/``attempt``,
  ``fail_kind``/``fail_reason``/``traceback``.
- Rows (``pareto_table``, ``select_trial``) are plain dicts: ``number``, ``state``, ``layout``,
  ``values`` ({objective: value}), ``metrics``, ``baseline`` (literature name or None),
  ``pareto`` (bool), ``arch`` (ArchConfig dict), ``fail_reason``, ``reused_from``, ``worker``.
- Storage URL: argument, else ``$ATTNSEARCH_STORAGE``, else ``sqlite:///attnsearch.db``.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import StudyError

if TYPE_CHECKING:   # names resolved lazily below (see __getattr__)
    from attnsearch.space.search_space import SearchSpace

    from .driver import Progress, RunResult
    from .study import StudySummary

__all__ = [
    "load_space", "default_space", "run_study", "list_studies", "load_study_summary", "delete_study",
    "pareto_table", "trial_rows", "select_trial", "hypervolume_history", "throughput_fn",
    "SearchSpace", "SpaceError", "StudyError", "StorageError", "Infeasible", "Progress", "RunResult",
    "StudySummary", "Driver", "pareto", "redact_url", "resolve_url", "arch_hash", "sweep_stale",
]

# Imported on first use, not with the package: `attnsearch show` must not pay for Optuna, the
# evaluators (cost model), Ray or torch at start-up. name -> (module, attribute or None: the module)
_LAZY = {
    "SearchSpace": ("attnsearch.space.search_space", "SearchSpace"),
    "SpaceError": ("attnsearch.space.search_space", "SpaceError"),
    "Infeasible": ("attnsearch.space.search_space", "Infeasible"),
    "StorageError": ("attnsearch.storage", "StorageError"),
    "redact_url": ("attnsearch.storage", "redact_url"),
    "resolve_url": ("attnsearch.storage", "resolve_url"),
    "Driver": ("attnsearch.search.driver", "Driver"),
    "Progress": ("attnsearch.search.driver", "Progress"),
    "RunResult": ("attnsearch.search.driver", "RunResult"),
    "arch_hash": ("attnsearch.search.driver", "arch_hash"),
    "sweep_stale": ("attnsearch.search.driver", "sweep_stale"),
    "StudySummary": ("attnsearch.search.study", "StudySummary"),
    "create_or_load": ("attnsearch.search.study", "create_or_load"),
    "load_study": ("attnsearch.search.study", "load_study"),
    "summarize": ("attnsearch.search.study", "summarize"),
    "pareto": ("attnsearch.search.pareto", None),
}


def __getattr__(name: str):
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value      # later look-ups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def throughput_fn(space: SearchSpace) -> Callable:
    """arch -> estimated tokens/s at the space's target (the cost model for constraints)."""
    from attnsearch.evaluators.throughput import estimate_throughput

    t = space.target
    return lambda arch: estimate_throughput(arch, t.context_len, t.batch_tokens, t.gpu, t.dtype).tokens_per_s


def load_space(source: "str | Path | dict | SearchSpace") -> SearchSpace:
    """A validated SearchSpace (file path, dict, or SearchSpace)."""
    from attnsearch.evaluators.throughput import GPUS
    from attnsearch.space.search_space import SearchSpace, SpaceError

    if isinstance(source, SearchSpace):
        space = source
    elif isinstance(source, dict):
        space = SearchSpace.from_dict(source)
    else:
        space = SearchSpace.load(source)
    if space.target.gpu not in GPUS:
        raise SpaceError(f"{space.source}: target.gpu: unknown GPU {space.target.gpu!r} "
                         f"(allowed: {', '.join(GPUS)})")
    reason = space.impossible_reason(throughput_fn(space))
    if reason:
        raise SpaceError(reason)
    return space


def default_space() -> SearchSpace:
    """The small built-in space the zero-config run uses (CPU, minutes)."""
    from attnsearch.space.search_space import default_space_path

    return load_space(default_space_path())


def run_study(space: "SearchSpace | str | Path | dict", study_name: str, storage_url: str | None = None,
              n_trials: int | None = None, timeout: float | None = None, workers: int = 1,
              ray_address: str | None = None, device: str = "cpu",
              progress_callback: Callable[[Progress], None] | None = None, *,
              evaluate: Callable[[dict], dict] | None = None, stagnation_trials: int | None = None,
              trial_timeout: float | None = None, allow_space_change: bool = False,
              should_stop: Callable[[], bool] | None = None, stale_after_s: float = 120.0,
              enqueue_baselines: bool = True, bench_task: Callable[[dict], dict] | None = None) -> RunResult:
    """Create or resume ``study_name`` and run it (see the module docstring)."""
    from attnsearch.storage import resolve_url

    from .driver import Driver

    space = load_space(space)
    if n_trials is None and timeout is None and stagnation_trials is None and should_stop is None:
        raise ValueError("give at least one stop condition: n_trials, timeout or stagnation_trials")
    if stagnation_trials is not None and (not isinstance(stagnation_trials, int) or stagnation_trials < 1):
        raise ValueError(f"stagnation_trials must be an integer >= 1, got {stagnation_trials!r}")
    url = resolve_url(storage_url)
    driver = Driver(space, study_name, url, workers=workers, device=device, evaluate=evaluate,
                    trial_timeout_s=trial_timeout, stale_after_s=stale_after_s,
                    allow_space_change=allow_space_change, enqueue_baselines=enqueue_baselines,
                    bench_task=bench_task)
    return driver.run(n_trials=n_trials, timeout=timeout, stagnation_trials=stagnation_trials,
                      progress_callback=progress_callback, should_stop=should_stop, ray_address=ray_address)


def list_studies(storage_url: str | None = None) -> list[dict]:
    from .study import list_studies as _list_studies

    return _list_studies(storage_url)


def load_study_summary(study_name: str, storage_url: str | None = None) -> StudySummary:
    from .study import load_study, summarize

    return summarize(load_study(study_name, storage_url))


def delete_study(study_name: str, storage_url: str | None = None) -> None:
    from .study import delete_study as _delete_study

    _delete_study(study_name, storage_url)


def _row(trial, names: list[str], on_front: set[int]) -> dict:
    a = trial.user_attrs
    return {
        "number": trial.number, "state": trial.state.name,
        "layout": a.get("layout"),
        "values": dict(zip(names, trial.values)) if trial.values is not None else None,
        "metrics": a.get("metrics", {}), "baseline": a.get("baseline"),
        "pareto": trial.number in on_front, "arch": a.get("arch"),
        "fail_reason": a.get("fail_reason"), "fail_kind": a.get("fail_kind"),
        "reused_from": a.get("reused_from"), "retry_of": a.get("retry_of"),
        "worker": (a.get("run") or {}).get("worker"), "timings": (a.get("run") or {}).get("timings", {}),
        "kernel_configs": (a.get("run") or {}).get("kernel_configs"),
        "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
    }


def trial_rows(study_name: str, storage_url: str | None = None, *, pareto_only: bool = True) -> list[dict]:
    """Trials as rows (see module docstring); the Pareto front only unless ``pareto_only=False``."""
    from . import pareto
    from .study import load_study

    study = load_study(study_name, storage_url)
    names = study.user_attrs.get("objectives") or [f"objective_{i}" for i in range(len(study.directions))]
    directions = pareto.study_directions(study)
    # a reused trial repeats its original's point: the original stands for both on the front
    front = pareto.pareto_front([t for t in pareto.completed_feasible(study) if "reused_from" not in t.user_attrs],
                                directions)
    on_front = {t.number for t in front}
    trials = front if pareto_only else study.get_trials(deepcopy=False)
    return [_row(t, names, on_front) for t in trials]


def pareto_table(study_name: str, storage_url: str | None = None, *, all: bool = False) -> list[dict]:
    return trial_rows(study_name, storage_url, pareto_only=not all)


def select_trial(study_name: str, storage_url: str | None = None, policy: str = "knee", *,
                 min_throughput: float | None = None, max_state_bytes: float | None = None,
                 trial_number: int | None = None) -> dict:
    """One trial row by policy (knee | best-quality | fastest | smallest-state) among completed
    feasible trials meeting the filters, or the given ``trial_number`` (must be COMPLETE)."""
    from . import pareto
    from .study import load_study

    study = load_study(study_name, storage_url)
    names = study.user_attrs.get("objectives") or [f"objective_{i}" for i in range(len(study.directions))]
    directions = pareto.study_directions(study)
    done = pareto.completed_feasible(study)
    if not done:
        raise StudyError(f"study {study_name!r} has no completed trial yet")
    on_front = {t.number for t in pareto.pareto_front(done, directions)}
    if trial_number is not None:
        match = [t for t in done if t.number == trial_number]
        if not match:
            raise StudyError(f"trial {trial_number} of study {study_name!r} is not a completed feasible trial")
        return _row(match[0], names, on_front)
    chosen = pareto.select(done, directions, names, policy, min_throughput=min_throughput,
                           max_state_bytes=max_state_bytes)
    return _row(chosen, names, on_front)


def hypervolume_history(study_name: str, storage_url: str | None = None, order: str = "number") -> list[list[float]]:
    """[[trial number, hypervolume], ...].

    ``order="number"`` (default): in trial-number order, entry n being the hypervolume of the
    completed feasible trials numbered <= n, computed from the trials (never decreases; what
    a plot against trial numbers needs). ``order="finish"``: the driver's record (study attr
    ``hv_history``) in the order trials finished, the hypervolume known at that moment (what
    the stagnation stop uses; with parallel workers the numbers are not sorted)."""
    from . import pareto
    from .study import load_study

    if order not in ("number", "finish"):
        raise ValueError(f"order: {order!r} not allowed (allowed: number, finish)")
    study = load_study(study_name, storage_url)
    if order == "finish":
        return list(study.user_attrs.get("hv_history", []))
    ref = (study.user_attrs.get("hv_reference") or {}).get("point_min")
    done = [t for t in pareto.completed_feasible(study) if "reused_from" not in t.user_attrs]
    if not ref or not done:
        return []
    directions = pareto.study_directions(study)
    return pareto.history_by_number([t.number for t in done], pareto.to_min([t.values for t in done], directions), ref)
