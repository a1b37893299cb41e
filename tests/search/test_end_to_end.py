"""One real study: proxy training through evaluators.quality in Ray tasks (tiny proxy, 6 trials)."""
import optuna
from optuna.trial import TrialState

from attnsearch import search
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
    rows = search.pareto_table(study_name, sqlite_url, all=True)
    assert sum(1 for r in rows if r["baseline"]) == 5
    assert search.select_trial(study_name, sqlite_url, "knee")["pareto"]
