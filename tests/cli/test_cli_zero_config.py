"""The zero-config run end to end (tiny test-only budget) and a clean Ctrl-C."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

# The test-only override: the built-in space with a proxy that trains for 2 steps
TINY_PROXY = json.dumps({"d_model": 16, "n_layers": 2, "n_heads": 1, "head_dim": 16, "steps": 2, "batch": 2,
                         "eval_sequences": 4, "eval_tokens": 1024, "eval_batch": 4, "corpus_max_bytes": 65536})


@pytest.fixture
def tiny_zero_config(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNSEARCH_STORAGE", raising=False)
    monkeypatch.setenv("ATTNSEARCH_ZERO_CONFIG_PROXY", TINY_PROXY)
    monkeypatch.setenv("ATTNSEARCH_ZERO_CONFIG_TRIALS", "3")
    return tmp_path


@pytest.mark.slow
def test_zero_config_run_then_show_export_build_and_plot(invoke, tiny_zero_config, ray_cluster):
    from attnsearch import search
    from attnsearch.models import build_model

    tmp = tiny_zero_config
    result = invoke("run")
    assert result.exit_code == 0, result.output
    out = result.output
    assert (tmp / "attnsearch.db").is_file()
    # live progress lines, the Pareto table and the next commands
    assert "trials 1/3" in out or "trials 2/3" in out
    for part in ("done", "running", "failed", "elapsed", "ETA", "front", "hypervolume",
                 "Pareto front", "tok/s", "attnsearch dashboard", "attnsearch export default"):
        assert part in out, part
    summary = search.load_study_summary("default", "sqlite:///attnsearch.db")
    assert summary.n_complete == 3
    rows = search.pareto_table("default", "sqlite:///attnsearch.db")
    for row in rows:
        assert row["layout"] in out
    assert "* transformer" in invoke("show", "default", "--all").output   # baselines run first

    assert invoke("export", "default").exit_code == 0
    model = build_model("best.json")
    assert model.config.layout_string() == json.loads((tmp / "best.json").read_text())["layout"]
    assert invoke("plot", "default").exit_code == 0
    assert (tmp / "pareto.png").stat().st_size > 10_000

    # running again resumes the same study: the budget is met, nothing is retrained
    again = invoke("run")
    assert again.exit_code == 0 and "already has its 3 trials" in again.output
    assert search.load_study_summary("default", "sqlite:///attnsearch.db").n_complete == 3


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path):
    env = {**os.environ, "ATTNSEARCH_ZERO_CONFIG_PROXY": TINY_PROXY, "ATTNSEARCH_ZERO_CONFIG_TRIALS": "500",
           "PYTHONUNBUFFERED": "1"}
    env.pop("ATTNSEARCH_STORAGE", None)
    log = tmp_path / "run.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "attnsearch.cli", "run"], cwd=tmp_path, env=env,
                                stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while log.read_text().count("\ntrials ") < 2:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    out = log.read_text()
    assert code == 130, out
    assert "Interrupted: stopped cleanly" in out and "Resume with: attnsearch run" in out
    assert "Traceback" not in out

    import optuna

    from attnsearch.storage import optuna_storage

    study = optuna.load_study(study_name="default", storage=optuna_storage(f"sqlite:///{tmp_path}/attnsearch.db"))
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states                     # nothing left dangling
    assert 2 <= states.count("COMPLETE") < 500
    for t in study.trials:
        if t.state.name == "FAIL":                     # handed back: failed as interrupted, re-enqueued
            assert t.user_attrs.get("fail_kind") == "interrupted"
