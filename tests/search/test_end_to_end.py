"""One real study: proxy training through evaluators.quality in Ray tasks (tiny proxy, 6 trials)."""
import json

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from attnsearch import search
from attnsearch.storage import get_engine
from search_spaces import TEST_SPACE

TINY_PROXY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "head_dim": 16, "steps": 4, "batch": 4,
              "eval_sequences": 8, "eval_batch": 8,
              "tasks": {"mqar": {"kind": "mqar", "seq_len": 32, "num_kv_pairs": 4}}}


def test_real_six_trial_study(ray_session, sqlite_url, study_name):
    space = search.load_space({**TEST_SPACE, "proxy": TINY_PROXY})
    result = search.run_study(space, study_name, sqlite_url, n_trials=6, workers=2)
    assert result.stop_reason == "budget" and result.complete + result.failed == 6
    study = optuna.load_study(study_name=study_name, storage=search.study.optuna_storage(sqlite_url))
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 6, [t.user_attrs.get("fail_reason") for t in trials]
    for t in done:
        if "reused_from" in t.user_attrs:
            continue
        details = t.user_attrs["run"]["details"]["quality"]
        assert 0.0 <= t.values[0] <= 1.0 and t.values[0] == details["score"]
        assert details["steps"] == 4 and not details["diverged"]
        assert t.user_attrs["run"]["timings"]["quality_s"] > 0
        # the dashboard shows attributes as JSON cut at 1,024 characters: the short form fits
        short = t.user_attrs["quality_details"]
        assert short["score"] == details["score"] and "mqar" in short["metrics"]
        assert len(json.dumps(short)) <= 1024
    # stored as JSON objects (not Python repr strings), as the dashboard reads them
    engine = get_engine(sqlite_url)
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT key, value_json FROM trial_user_attributes "
                                      "WHERE key IN ('run', 'quality_details', 'metrics', 'arch')")).all()
    assert stored
    for key, value in stored:
        decoded = json.loads(value)
        assert isinstance(decoded, dict), (key, value[:80])
        if key == "run" and "details" in decoded:
            assert isinstance(decoded["details"]["quality"]["curve"], list)
    rows = search.pareto_table(study_name, sqlite_url, all=True)
    assert sum(1 for r in rows if r["baseline"]) == 5
    assert search.select_trial(study_name, sqlite_url, "knee")["pareto"]
