"""The ask/tell driver on a real (session-wide) Ray cluster, with the synthetic evaluation."""
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from attnsearch import search
from attnsearch.search.testing import synthetic_evaluate
from search_spaces import TEST_SPACE

HERE = Path(__file__).parent


def _trials(name, url):
    return optuna.load_study(study_name=name, storage=search.study.optuna_storage(url)).get_trials(deepcopy=False)


def _check_no_loss_no_duplicates(trials, budget):
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counted_fail = [t for t in trials if t.state == TrialState.FAIL
                    and t.user_attrs.get("fail_kind") not in ("stale", "interrupted", "over_budget")]
    assert len(complete) + len(counted_fail) == budget
    # one result per lineage: a re-enqueued trial never completes twice
    lineages = Counter(t.user_attrs.get("lineage", t.number) for t in complete)
    assert max(lineages.values()) == 1
    # every trial failed as stale/interrupted was re-enqueued exactly once
    retried = Counter(t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs)
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_kind") in ("stale", "interrupted"):
            assert retried[t.number] == 1, t.number
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert len({t.number for t in trials}) == len(trials)


def _run_6(url, name, space):
    events = []
    result = search.run_study(space, name, url, n_trials=6, workers=2, evaluate=synthetic_evaluate,
                              progress_callback=events.append)
    assert result.stop_reason == "budget" and result.complete == 6 and result.failed == 0
    trials = _trials(name, url)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        a = t.user_attrs
        assert a["layout"] and len(a["layout"]) == 8
        assert a["arch"]["n_layers"] == 8
        assert {"quality", "throughput", "state_bytes", "param_count"} <= set(a["metrics"])
        assert a["metrics"]["throughput_mode"] == "estimated"
        if "reused_from" not in a:
            w = a["run"]["worker"]
            assert w["node_id"] and w["host"] and w["device"].startswith("cpu") and "optuna" in w["versions"]
            assert a["run"]["timings"]["evaluate_s"] >= 0
        assert a["driver_id"] == result.driver_id
    # the literature baselines come first, marked
    baselines = [t.user_attrs.get("baseline") for t in sorted(trials, key=lambda t: t.number)]
    assert baselines[:5] == ["transformer", "gemma3", "command_a", "jamba", "qwen3_next"]
    summary = search.load_study_summary(name, url)
    assert summary.n_complete == 6 and summary.front_size >= 1 and summary.hypervolume > 0
    history = search.hypervolume_history(name, url)
    assert [h[0] for h in history] == sorted(t.number for t in trials) or len(history) == 6
    assert all(b[1] >= a[1] for a, b in zip(history, history[1:]))     # never decreases
    assert events and events[-1].counted == 6 and events[-1].front_size == summary.front_size
    table = search.pareto_table(name, url)
    assert table and all(r["pareto"] for r in table) and any(r["baseline"] for r in table)
    return result


def test_six_trial_study_sqlite(ray_session, sqlite_url, study_name, test_space):
    _run_6(sqlite_url, study_name, test_space)
    # resuming with a larger budget: baselines are not enqueued again, numbers continue
    search.run_study(test_space, study_name, sqlite_url, n_trials=8, workers=2, evaluate=synthetic_evaluate)
    trials = _trials(study_name, sqlite_url)
    assert len(trials) == 8
    assert Counter(t.user_attrs.get("baseline") for t in trials if t.user_attrs.get("baseline"))["transformer"] == 1
    assert search.list_studies(sqlite_url)[0]["name"] == study_name
    row = search.select_trial(study_name, sqlite_url, "best-quality")
    assert row["layout"] == "FFFFFFFF"
    search.delete_study(study_name, sqlite_url)
    assert search.list_studies(sqlite_url) == []
    with pytest.raises(search.StudyError, match="no study named"):
        search.load_study_summary(study_name, sqlite_url)


@pytest.mark.postgres
def test_six_trial_study_postgres(ray_session, pg_url, study_name, test_space):
    _run_6(pg_url, study_name, test_space)
    search.delete_study(study_name, pg_url)


def test_failures_are_recorded_and_the_study_completes(ray_session, sqlite_url, study_name):
    # trial 1 raises, 2 kills its worker process, 3 diverges, 4 runs out of memory, 5 hangs past
    # the trial time limit, 6 returns an infinite quality. Per-layer random sampling: no two
    # trials share an architecture (a twin would reuse a result instead of hitting its fault).
    test_space = search.load_space({**TEST_SPACE, "layout": {"mode": "per_layer"},
                                    "sampler": {"name": "random", "seed": 3}})
    evaluate = functools.partial(synthetic_evaluate,
                                 faults={1: "raise", 2: "kill", 3: "diverge", 4: "oom", 5: "hang", 6: "inf"})
    result = search.run_study(test_space, study_name, sqlite_url, n_trials=9, workers=2, evaluate=evaluate,
                              trial_timeout=12.0, enqueue_baselines=False)
    assert result.stop_reason == "budget"
    trials = {t.number: t for t in _trials(study_name, sqlite_url)}
    kinds = {n: (t.state, t.user_attrs.get("fail_kind"), t.user_attrs.get("fail_reason")) for n, t in trials.items()}
    assert kinds[1][:2] == (TrialState.FAIL, "exception") and "injected failure" in kinds[1][2]
    assert kinds[2][:2] == (TrialState.FAIL, "worker_crashed") and "worker process died" in kinds[2][2]
    assert kinds[3][:2] == (TrialState.FAIL, "diverged") and "NaN" in kinds[3][2]
    assert kinds[4][:2] == (TrialState.FAIL, "oom") and "MemoryError" in kinds[4][2]
    assert kinds[5][:2] == (TrialState.FAIL, "timeout") and "time limit of 12 s" in kinds[5][2]
    assert kinds[6][:2] == (TrialState.FAIL, "diverged")
    assert "traceback" in trials[1].user_attrs
    # a failed trial that was a twin of nothing still leaves the others complete
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 3
    _check_no_loss_no_duplicates(list(trials.values()), 9)


def test_identical_architectures_reuse_results(ray_session, sqlite_url, study_name):
    # one possible architecture: every trial after the first reuses trial 0's metrics
    space = search.load_space({**TEST_SPACE, "mechanisms": {"full": {}}, "layout": {"mode": "per_layer"}})
    result = search.run_study(space, study_name, sqlite_url, n_trials=4, workers=2,
                              evaluate=functools.partial(synthetic_evaluate, sleep_s=0.3))
    trials = sorted(_trials(study_name, sqlite_url), key=lambda t: t.number)
    assert all(t.state == TrialState.COMPLETE for t in trials) and len(trials) == 4
    evaluated = [t for t in trials if "reused_from" not in t.user_attrs]
    assert len(evaluated) == 1 and result.reused == 3
    assert {tuple(t.values) for t in trials} == {tuple(evaluated[0].values)}
    assert all(t.user_attrs["reused_from"] == evaluated[0].number for t in trials if t is not evaluated[0])


def test_infeasible_samples_are_pruned_with_constraints(ray_session, sqlite_url, study_name):
    space = search.load_space({**TEST_SPACE, "layout": {"mode": "per_layer"},
                               "constraints": {"max_full_layers": 1}, "sampler": {"name": "random", "seed": 1}})
    search.run_study(space, study_name, sqlite_url, n_trials=5, workers=2, evaluate=synthetic_evaluate)
    trials = _trials(study_name, sqlite_url)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 5
    assert all(t.user_attrs["layout"].count("F") <= 1 for t in done)
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert t.user_attrs["fail_kind"] == "infeasible" and t.constraints["0"] > 0
            assert t.user_attrs["layout"].count("F") > 1
        else:
            assert t.constraints["0"] <= 0         # recorded for every trial: the sampler learns


def test_interrupt_leaves_the_study_resumable(ray_session, sqlite_url, study_name, test_space):
    def stop_after_two(progress):
        if progress.complete >= 2:
            raise KeyboardInterrupt

    evaluate = functools.partial(synthetic_evaluate, sleep_s=0.3)
    result = search.run_study(test_space, study_name, sqlite_url, n_trials=6, workers=2, evaluate=evaluate,
                              progress_callback=stop_after_two)
    assert result.stop_reason == "interrupted"
    trials = _trials(study_name, sqlite_url)
    assert any(t.user_attrs.get("fail_kind") == "interrupted" for t in trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    search.run_study(test_space, study_name, sqlite_url, n_trials=6, workers=2, evaluate=evaluate)
    _check_no_loss_no_duplicates(_trials(study_name, sqlite_url), 6)


def test_stop_conditions_timeout_and_stagnation(ray_session, sqlite_url, study_name):
    space = search.load_space({**TEST_SPACE, "mechanisms": {"full": {}}, "layout": {"mode": "per_layer"}})
    result = search.run_study(space, study_name, sqlite_url, stagnation_trials=3, workers=1,
                              evaluate=synthetic_evaluate)
    assert result.stop_reason == "stagnation" and result.complete == 4   # 1 improvement + 3 without
    result = search.run_study(search.load_space(dict(TEST_SPACE)), study_name + "-t", sqlite_url, timeout=1.0,
                              workers=1, evaluate=functools.partial(synthetic_evaluate, sleep_s=0.4))
    assert result.stop_reason == "timeout" and 1 <= result.complete <= 4
    with pytest.raises(ValueError, match="stop condition"):
        search.run_study(space, study_name, sqlite_url)
    with pytest.raises(ValueError, match="workers"):
        search.run_study(space, study_name, sqlite_url, n_trials=1, workers=0)


def test_a_study_refuses_a_different_space(ray_session, sqlite_url, study_name, test_space):
    search.run_study(test_space, study_name, sqlite_url, n_trials=1, evaluate=synthetic_evaluate)
    other = search.load_space({**TEST_SPACE, "mechanisms": {"full": {}, "mamba2": {}}})
    with pytest.raises(search.StudyError, match="different space"):
        search.run_study(other, study_name, sqlite_url, n_trials=2, evaluate=synthetic_evaluate)


def _driver_proc(url, name, n, workers, sleep_s, address):
    return subprocess.Popen(
        [sys.executable, str(HERE / "driver_proc.py"), json.dumps(TEST_SPACE), name, url, str(n), str(workers),
         str(sleep_s), address], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(HERE)})


def _wait_for(fn, timeout=90):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if fn():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting")


def test_killed_driver_resumes_without_loss_or_duplicates(ray_session, sqlite_url, study_name, test_space):
    address = ray_session.get_runtime_context().gcs_address
    search.run_study(test_space, study_name, sqlite_url, n_trials=1, evaluate=synthetic_evaluate)   # create it
    proc = _driver_proc(sqlite_url, study_name, 8, 2, 0.4, address)

    def some_done_some_running():
        trials = _trials(study_name, sqlite_url)
        done = sum(t.state == TrialState.COMPLETE for t in trials)
        running = sum(t.state == TrialState.RUNNING and "driver_id" in t.user_attrs for t in trials)
        return done >= 3 and running >= 1
    try:
        _wait_for(some_done_some_running)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [t for t in _trials(study_name, sqlite_url) if t.state == TrialState.RUNNING]
    search.run_study(test_space, study_name, sqlite_url, n_trials=8, workers=2,
                     evaluate=functools.partial(synthetic_evaluate, sleep_s=0.1))
    trials = _trials(study_name, sqlite_url)
    stale = [t for t in trials if t.user_attrs.get("fail_kind") == "stale"]
    assert stale and all("died" in t.user_attrs["fail_reason"] for t in stale)
    _check_no_loss_no_duplicates(trials, 8)


@pytest.mark.postgres
def test_two_drivers_share_a_postgres_study(ray_session, pg_url, study_name, test_space):
    address = ray_session.get_runtime_context().gcs_address
    search.run_study(test_space, study_name, pg_url, n_trials=1, evaluate=synthetic_evaluate)      # create it
    procs = [_driver_proc(pg_url, study_name, 9, 1, 0.3, address) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    trials = _trials(study_name, pg_url)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    mine = [set(o["trials_run"]) for o in outs]
    assert not (mine[0] & mine[1]) and mine[0] and mine[1]          # both drivers worked, no overlap
    assert len(mine[0]) + len(mine[1]) + 1 == sum(t.state == TrialState.COMPLETE for t in trials)
    _check_no_loss_no_duplicates(trials, 9)
    search.delete_study(study_name, pg_url)
