"""The fault suite: for every fault a real cluster produces, the study completes its budget with
no completed trial lost and no duplicate (or, for a database that cannot be written, stops with
one clear error and nothing corrupted). Scenarios live in fault_scenarios.py (shared with
benchmarks/fault_table.py); each test checks its row and the fault-specific evidence."""
from __future__ import annotations

import pytest

import fault_scenarios as fs
from attnsearch.search.driver import MAX_ATTEMPTS


def _no_loss_no_duplicate(row, budget):
    assert row.lost == 0, row
    assert row.duplicated == 0, row
    assert row.completed + row.failed == budget, row
    assert not [t for t in row.trials if t.state.name in ("RUNNING", "WAITING")]


def _failed(row):
    return {t.number: t.user_attrs for t in row.trials
            if t.state.name == "FAIL" and t.user_attrs.get("fail_kind") not in fs.NOT_COUNTED}


def test_trial_raising(ray_session, sqlite_url, tmp_path, record_row):
    row = fs.trial_raises(sqlite_url, tmp_path)
    record_row(row)
    _no_loss_no_duplicate(row, 6)
    failed = _failed(row)
    assert list(failed) == [2]
    assert failed[2]["fail_kind"] == "exception" and "injected failure in trial 2" in failed[2]["fail_reason"]
    assert "RuntimeError" in failed[2]["traceback"]
    assert row.completed == 5 and row.recovery_s is not None


def test_nan_and_inf_losses(ray_session, sqlite_url, tmp_path, record_row):
    row = fs.nan_inf_losses(sqlite_url, tmp_path)
    record_row(row)
    _no_loss_no_duplicate(row, 7)
    failed = _failed(row)
    assert sorted(failed) == [1, 3, 5]
    for number, value in ((1, "nan"), (3, "inf"), (5, "-inf")):
        assert failed[number]["fail_kind"] == "diverged"
        assert value in failed[number]["fail_reason"]
    # a non-finite value never reaches Optuna's tables or the Pareto front
    for t in row.trials:
        if t.state.name == "COMPLETE":
            assert all(v == v and abs(v) != float("inf") for v in t.values)


def test_worker_sigkilled_mid_trial(ray_session, sqlite_url, tmp_path, record_row):
    row = fs.worker_sigkill(sqlite_url, tmp_path, victim=2)
    record_row(row)
    _no_loss_no_duplicate(row, 6)
    failed = _failed(row)
    assert list(failed) == [2], failed
    assert failed[2]["fail_kind"] == "worker_crashed" and "worker process died" in failed[2]["fail_reason"]
    assert row.extra["killed_pid"] and row.extra["stop_reason"] == "budget"
    assert row.recovery_s is not None


def test_proxy_past_its_time_limit_is_killed(ray_session, sqlite_url, tmp_path, record_row):
    row = fs.proxy_time_limit(sqlite_url, tmp_path, victim=1, limit_s=8.0)
    record_row(row)
    _no_loss_no_duplicate(row, 5)
    failed = _failed(row)
    assert list(failed) == [1]
    assert failed[1]["fail_kind"] == "timeout"
    assert "exceeded the trial time limit of 8 s" in failed[1]["fail_reason"]
    # the process that was "training" for an hour is gone, not left running in the background
    assert fs.wait_for(lambda: not fs._alive(row.extra["pid"]), timeout=30)


def test_driver_sigkilled_three_times_and_resumed(ray_session, sqlite_url, tmp_path, record_row):
    address = ray_session.get_runtime_context().gcs_address
    budget = 24
    row = fs.driver_sigkill_resume(sqlite_url, tmp_path, address, budget=budget, kills=3)
    record_row(row)
    _no_loss_no_duplicate(row, budget)      # includes: every trial completed before a kill still is
    assert row.completed == budget and row.failed == 0
    stale = [t for t in row.trials if t.user_attrs.get("fail_kind") == "stale"]
    # every trial in flight at a kill was failed as stale (and re-run, below); the test kills while one runs,
    # but that one can finish just before the signal lands, so the count is read from the timestamps
    in_flight = {n for kill in row.extra["in_flight"] for n in kill}
    assert in_flight and in_flight <= {t.number for t in stale}, (row.extra["in_flight"], [t.number for t in stale])
    assert all("died while the trial was running" in t.user_attrs["fail_reason"] for t in stale)
    retried = {t.user_attrs["retry_of"] for t in row.trials if "retry_of" in t.user_attrs}
    # a lineage killed with its driver MAX_ATTEMPTS times is not retried again (three kills in a
    # row can do that), and its reason says so
    capped = {t.number for t in stale if int(t.user_attrs.get("attempt", 1)) >= MAX_ATTEMPTS}
    assert {t.number for t in stale} - capped <= retried
    assert all("not re-enqueued" in t.user_attrs["fail_reason"] for t in stale if t.number in capped)
    # every kill that left work behind was recovered from (a trial completed after it)
    recoveries, done = row.extra["recoveries_s"], row.extra["done_at_kill"]
    assert all(r is not None for r, d in zip(recoveries, done) if d < budget), (recoveries, done)
    assert recoveries[0] is not None                                        # the first kill always leaves work


@pytest.mark.postgres
def test_postgres_restarted_mid_study(ray_session, pg_url, tmp_path, record_row):
    why_not = fs.can_restart_postgres()
    if why_not:
        pytest.skip(why_not)
    row = fs.postgres_restart(pg_url, tmp_path, budget=10)
    record_row(row)
    assert row.extra["rc"] == 0, row.extra["err"]
    assert row.extra["stop_reason"] == "budget"
    _no_loss_no_duplicate(row, 10)
    assert row.completed == 10 and row.recovery_s is not None


def _mount_or_skip(fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except RuntimeError as exc:
        if "cannot" in str(exc) and "mount" in str(exc):
            pytest.skip(str(exc))
        raise


def test_database_read_only(ray_session, tmp_path, record_row):
    row = _mount_or_skip(fs.database_read_only, tmp_path, budget=6)
    record_row(row)
    # resuming on the read-only database: one clear line that says why, no half-written study
    error = row.extra["error"]
    assert "read-only" in error.lower() or "readonly" in error.lower(), error
    assert "\n" not in error
    assert row.extra["integrity"] == "ok"
    # the CLI on the read-only database: it works, or it says why in one line (exit code 2)
    out = row.extra["cli_show_output"]
    assert row.extra["cli_show_exit"] == 0 or (row.extra["cli_show_exit"] == 2 and "Traceback" not in out
                                               and out.startswith("Error: ")), out
    # writable again: the study resumes and finishes its budget, the first trials untouched
    _no_loss_no_duplicate(row, 6)


def test_database_disk_full(ray_session, tmp_path, record_row):
    row = _mount_or_skip(fs.database_disk_full, tmp_path, budget=40)
    record_row(row)
    error = row.extra["error"]
    assert "full" in error.lower(), error
    assert "\n" not in error
    assert row.extra["integrity"] == "ok"
    assert row.extra["complete_before"] >= 1          # it really filled up mid-study
    _no_loss_no_duplicate(row, 40)


@pytest.mark.slow
def test_ray_node_removed_from_a_two_node_cluster(tmp_path, record_row):
    row = fs.ray_node_removed(tmp_path, budget=8)
    record_row(row)
    _no_loss_no_duplicate(row, 8)
    assert row.extra["nodes_before"] == 2 and row.extra["nodes_after"] == 1
    assert row.extra["stop_reason"] == "budget"
    failed = _failed(row)
    assert list(failed) == [row.extra["victim_trial"]]
    assert failed[row.extra["victim_trial"]]["fail_kind"] in ("node_died", "worker_crashed")
