"""Study summaries agree with the Pareto table; the hypervolume history by trial number."""
from __future__ import annotations

import pytest
from search_spaces import TEST_SPACE

from attnsearch import search
from attnsearch.search.study import create_or_load
from attnsearch.search.table import study_table

# (quality, throughput, reused_from): #2 and #3 repeat #0 and #1 (same architecture, reused)
TRIALS = [(0.9, 100.0, None), (0.5, 300.0, None), (0.9, 100.0, 0), (0.5, 300.0, 1), (0.4, 50.0, None),
          (0.7, 250.0, None)]


@pytest.fixture
def study_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'summary.db'}"
    study = create_or_load(search.load_space(TEST_SPACE), "summary", url)
    for quality, throughput, reused in TRIALS:
        trial = study.ask()
        trial.set_user_attr("layout", "FFFFFFFF")
        if reused is not None:
            trial.set_user_attr("reused_from", reused)
        study.tell(trial, [quality, throughput])
    return url


def test_summary_front_counts_each_architecture_once(study_url):
    summary = search.load_study_summary("summary", study_url)
    table = study_table("summary", study_url)
    assert summary.n_complete == len(TRIALS)
    # #0, #1 and #5 are non-dominated; their reused repeats #2, #3 are not counted again
    assert summary.front_size == 3 == table.front_size == len(search.pareto_table("summary", study_url))
    assert sorted(r["number"] for r in table.rows) == [0, 1, 5]
    assert summary.hypervolume == pytest.approx(table.hypervolume)


def test_hypervolume_history_by_trial_number(study_url):
    history = search.hypervolume_history("summary", study_url)
    assert [h[0] for h in history] == [0, 1, 4, 5]                     # reused trials left out
    # reference (0, 0): 0.9*100; + 0.5*(300-100); unchanged; + (0.7-0.5)*(250-100)
    assert [h[1] for h in history] == pytest.approx([90.0, 190.0, 190.0, 220.0])
    assert history[-1][1] == pytest.approx(search.load_study_summary("summary", study_url).hypervolume)
    tab = study_table("summary", study_url, every=True, history=True)
    assert tab.hv_by_number == history
    with pytest.raises(ValueError, match="order"):
        search.hypervolume_history("summary", study_url, order="sideways")
