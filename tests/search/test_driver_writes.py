"""The driver's own database writes, without Ray: the owner written with a new trial, one-transaction
attribute writes (SQLite and PostgreSQL), and the budget check that only trials numbered past the
budget need."""
import optuna
import pytest
from optuna.trial import TrialState

from attnsearch import search
from attnsearch.search.driver import Driver, _ask_owned, _set_trial_attrs
from attnsearch.storage import optuna_storage


def _study(url, name):
    return optuna.create_study(storage=optuna_storage(url), study_name=name, directions=["maximize", "maximize"])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'w.db'}"
    return request.getfixturevalue("pg_url")


def test_a_new_trial_carries_its_owner_from_creation(url, study_name):
    study = _study(url, study_name)
    trial = _ask_owned(study, {"driver_id": "d1"})
    # read back through a fresh storage view: the row and its owner are in the database
    frozen = optuna.load_study(study_name=study_name, storage=optuna_storage(url)).get_trials()[0]
    assert frozen.state == TrialState.RUNNING and frozen.user_attrs == {"driver_id": "d1"}
    assert trial.number == 0 and frozen._trial_id == trial._trial_id
    x = trial.suggest_categorical("x", ["a", "b"])       # an ordinary Trial: suggest and tell work
    study.tell(trial, [1.0, 2.0])
    done = study.get_trials()[0]
    assert done.params == {"x": x} and done.values == [1.0, 2.0] and done.user_attrs["driver_id"] == "d1"
    optuna.delete_study(study_name=study_name, storage=optuna_storage(url))


def test_a_queued_trial_is_popped_and_gets_its_owner(url, study_name):
    study = _study(url, study_name)
    study.enqueue_trial({"x": "b"}, user_attrs={"baseline": "pure"})
    trial = _ask_owned(study, {"driver_id": "d2"})
    assert trial.suggest_categorical("x", ["a", "b"]) == "b"
    frozen = study.get_trials()
    assert len(frozen) == 1 and frozen[0].user_attrs == {"baseline": "pure", "driver_id": "d2"}
    optuna.delete_study(study_name=study_name, storage=optuna_storage(url))


def test_attributes_and_constraints_in_one_write_and_never_after_the_end(url, study_name):
    study = _study(url, study_name)
    trial = study.ask()
    _set_trial_attrs(study, trial._trial_id, {"a": 1, "arch": {"layers": [{"mechanism": "full"}] * 3}})
    _set_trial_attrs(study, trial._trial_id, {"a": 2, "b": "x"}, constraints={"full_min": -1.0, "state": 0.5})
    frozen = study.get_trials()[0]
    assert frozen.user_attrs == {"a": 2, "arch": {"layers": [{"mechanism": "full"}] * 3}, "b": "x"}
    assert frozen.system_attrs["constraints"] == [-1.0, 0.5]
    study.tell(trial, [1.0, 1.0])
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError, match="Trial#0 has already finished"):
        _set_trial_attrs(study, trial._trial_id, {"late": True})
    with pytest.raises(KeyError):
        _set_trial_attrs(study, 10 ** 9, {"a": 1})
    assert "late" not in study.get_trials()[0].user_attrs
    optuna.delete_study(study_name=study_name, storage=optuna_storage(url))


class _FakeTrial:
    def __init__(self, number):
        self.number = number


def test_only_trials_numbered_past_the_budget_need_the_exact_check(sqlite_url, study_name):
    driver = Driver(search.default_space(), study_name, sqlite_url, enqueue_baselines=False)
    driver.n_trials = 5
    assert not driver._may_be_over_budget(_FakeTrial(4))      # at most 5 trials are numbered <= 4
    assert driver._may_be_over_budget(_FakeTrial(5))          # checked even by a driver that seems alone
    driver.n_trials = None
    assert not driver._may_be_over_budget(_FakeTrial(100))


def test_past_the_budget_the_count_includes_a_driver_that_came_and_went(sqlite_url, study_name):
    """A driver that believes it is alone still fails a trial numbered past the budget when
    another driver's trials (that driver gone meanwhile) used the budget up."""
    space = search.default_space()
    driver = Driver(space, study_name, sqlite_url, enqueue_baselines=False)
    driver.n_trials, driver._shared = 3, False
    study = driver.study
    for value in (0.1, 0.2, 0.3):                             # "another driver" completed 3 trials
        t = study.ask()
        space.suggest(t)
        study.tell(t, [value, 1.0])
    trial = _ask_owned(study, {"driver_id": driver.driver_id})
    assert trial.number == 3 and driver._may_be_over_budget(trial) and driver._over_budget(trial)
    frozen = study.get_trials()[3]
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["fail_kind"] == "over_budget"
