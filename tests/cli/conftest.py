"""Fixtures for the CLI tests: one Ray cluster per session, one synthetic study copied per test."""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
from cli_helpers import FAILING_TRIAL, SYNTH_STUDY, SYNTH_TRIALS, copy_db
from typer.testing import CliRunner


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def synth_db(tmp_path_factory, ray_cluster) -> Path:
    """A study of the built-in space scored by the synthetic evaluation (fast, deterministic):
    the six literature baselines, sampled layouts, and one trial that raises."""
    from attnsearch import search
    from attnsearch.search.dashboard import write_study_note
    from attnsearch.search.testing import synthetic_evaluate

    path = tmp_path_factory.mktemp("synth") / "synth.db"
    url = f"sqlite:///{path}"
    result = search.run_study(search.default_space(), SYNTH_STUDY, url, n_trials=SYNTH_TRIALS, workers=2,
                              evaluate=functools.partial(synthetic_evaluate, faults={FAILING_TRIAL: "raise"}))
    assert result.complete >= SYNTH_TRIALS - 1
    write_study_note(SYNTH_STUDY, url)
    return path


@pytest.fixture
def db(synth_db, tmp_path, monkeypatch) -> Path:
    """This test's own copy of the synthetic study database; the working directory is tmp_path."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ATTNSEARCH_STORAGE", raising=False)
    return copy_db(synth_db, tmp_path / "study.db")


@pytest.fixture
def url(db) -> str:
    return f"sqlite:///{db}"


@pytest.fixture
def invoke():
    from attnsearch.cli import app

    runner = CliRunner()

    def run(*args, input=None, env=None):
        return runner.invoke(app, [str(a) for a in args], input=input, env=env)

    return run
