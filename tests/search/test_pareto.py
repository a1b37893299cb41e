import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from attnsearch.search import pareto


def test_hypervolume_hand_computed_2d():
    # staircase of (1,3), (2,2), (3,1) under reference (4,4): 3*1 + 2*1 + 1*1 = 6
    assert pareto.hypervolume([[1, 3], [2, 2], [3, 1]], [4, 4]) == pytest.approx(6.0)
    # a dominated point and a point beyond the reference change nothing
    assert pareto.hypervolume([[1, 3], [2, 2], [3, 1], [3, 3], [5, 0]], [4, 4]) == pytest.approx(6.0)
    assert pareto.hypervolume([], [1, 1]) == 0.0


def test_hypervolume_sign_normalised_for_maximised_objectives():
    # quality up, throughput up: points (q, tps); reference (0, 0) in maximise terms
    values = [[0.9, 100.0], [0.5, 300.0]]
    pts = pareto.to_min(values, ["maximize", "maximize"])
    ref = pareto.to_min([0.0, 0.0], ["maximize", "maximize"])
    # union of [0,0.9]x[0,100] and [0,0.5]x[0,300] = 90 + 0.5*200 = 190
    assert pareto.hypervolume(pts, ref) == pytest.approx(190.0)


def _grid_hv(points, ref, n=40):
    """Brute force: fraction of grid cells dominated (cell centres), times the box volume."""
    pts = np.asarray(points, float)
    lo = pts.min(0)
    axes = [np.linspace(l, r, n, endpoint=False) + (r - l) / (2 * n) for l, r in zip(lo, ref)]
    cells = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(ref))
    covered = ((pts[None, :, :] <= cells[:, None, :]).all(-1)).any(1)
    return covered.mean() * np.prod(np.asarray(ref) - lo)


def test_hypervolume_3d_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, size=(7, 3))
    exact = pareto.hypervolume(pts, [1.0, 1.0, 1.0])
    assert exact == pytest.approx(_grid_hv(pts, [1.0, 1.0, 1.0], n=60), rel=0.03)


def test_nondominated_mask_and_duplicates():
    pts = np.array([[1, 2], [2, 1], [2, 2], [1, 2]])
    assert pareto.nondominated_mask(pts).tolist() == [True, True, False, True]


def test_reference_from_points_is_beyond_the_nadir():
    ref = pareto.reference_from_points([[1, 5], [3, 2]])
    assert ref == pytest.approx([3.2, 5.3])
    assert pareto.reference_from_points([[0, 0]]) == [0.1, 0.1]


def test_knee_is_the_balanced_point():
    front = [[0, 10], [1, 1], [10, 0]]
    assert pareto.knee_index(front) == 1


def test_last_improvement_gap():
    assert pareto.last_improvement_gap([[0, 1.0], [1, 2.0], [2, 2.0], [3, 2.0]]) == 2
    assert pareto.last_improvement_gap([]) == 0


def _trial(n, q, tps, state):
    return SimpleNamespace(number=n, values=[q, tps], constraints={},
                           user_attrs={"metrics": {"quality": q, "throughput": tps, "state_bytes": state}})


TRIALS = [_trial(0, 0.9, 100, 1000), _trial(1, 0.7, 250, 300), _trial(2, 0.5, 400, 10), _trial(3, 0.4, 150, 5)]
DIRS, NAMES = ["maximize", "maximize"], ["quality", "throughput"]


def test_front_and_policies():
    assert [t.number for t in pareto.pareto_front(TRIALS, DIRS)] == [0, 1, 2]
    assert pareto.select(TRIALS, DIRS, NAMES, "best-quality").number == 0
    assert pareto.select(TRIALS, DIRS, NAMES, "fastest").number == 2
    assert pareto.select(TRIALS, DIRS, NAMES, "smallest-state").number == 3
    assert pareto.select(TRIALS, DIRS, NAMES, "knee").number == 1
    assert pareto.select(TRIALS, DIRS, NAMES, "best-quality", min_throughput=200).number == 1
    assert pareto.select(TRIALS, DIRS, NAMES, "best-quality", max_state_bytes=50).number == 2


def test_selection_errors():
    with pytest.raises(ValueError, match="policy 'best' not allowed"):
        pareto.select(TRIALS, DIRS, NAMES, "best")
    with pytest.raises(ValueError, match="throughput >= 1e"):
        pareto.select(TRIALS, DIRS, NAMES, "knee", min_throughput=1e9)
    with pytest.raises(ValueError, match="no completed feasible trial"):
        pareto.select([], DIRS, NAMES, "knee")
    with pytest.raises(ValueError, match="direction"):
        pareto.to_min([1.0], ["up"])


def test_history_by_number_is_monotone_and_hand_computed():
    # minimisation form, reference (4, 4); trial numbers given out of order (finish order)
    numbers = [3, 0, 2, 1]
    points = [[1, 1], [3, 3], [2, 2], [3.5, 3.5]]
    history = pareto.history_by_number(numbers, points, [4, 4])
    assert [h[0] for h in history] == [0, 1, 2, 3]
    # #0: 1*1; #1 dominated by #0; #2: 2*2; #3: 3*3
    assert [h[1] for h in history] == pytest.approx([1.0, 1.0, 4.0, 9.0])
    assert all(b[1] >= a[1] for a, b in zip(history, history[1:]))
    assert pareto.history_by_number([], np.zeros((0, 2)), [4, 4]) == []
