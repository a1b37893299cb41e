"""benchmarks/linear.py's timing rows: rounds alternate between ours and fla, the median is kept."""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

import linear as lb  # noqa: E402


def _row(rounds, fla_fails=False):
    calls = []
    clock = {"ours": iter([3.0, 1.0, 2.0, 30.0, 10.0, 20.0]), "fla": iter([4.0, 6.0, 5.0, 40.0, 60.0, 50.0])}

    def make(who):
        def maker(op, x):
            if who == "fla" and fla_fails:
                raise RuntimeError("refused on this GPU")
            return who
        return maker

    def timed_fn(fn, x, bwd):
        calls.append((fn, bwd))
        return next(clock[fn])

    row = lb.time_row({}, [("ours", make("ours")), ("fla", make("fla"))], "linear", None, timed_fn,
                      tokens=1000, floor_ms=0.5, rounds=rounds)
    return row, calls


def test_rounds_alternate_and_keep_the_median():
    row, calls = _row(rounds=3)
    # ours and fla alternate inside each mode, so that a drift falls on both
    assert [who for who, _ in calls] == ["ours", "fla"] * 6
    assert [bwd for _, bwd in calls] == [False] * 6 + [True] * 6
    assert row["ours_fwd_ms"] == 2.0 and row["fla_fwd_ms"] == 5.0
    assert row["ours_fwdbwd_ms"] == 20.0 and row["fla_fwdbwd_ms"] == 50.0
    assert row["ours_fwd_rounds_ms"] == [3.0, 1.0, 2.0]
    assert row["ratio_fwd_vs_fla"] == 0.4 and row["ratio_fwdbwd_vs_fla"] == 0.4
    assert row["ours_fwd_vs_floor"] == 4.0


def test_a_refusing_side_is_recorded_and_the_other_still_timed():
    row, calls = _row(rounds=3, fla_fails=True)
    assert all(who == "ours" for who, _ in calls) and len(calls) == 6
    assert row["fla_fwd_ms"] is None and "refused" in row["fla_fwd_error"]
    assert row["ratio_fwd_vs_fla"] is None and row["ours_fwd_ms"] == 2.0


def test_one_round_keeps_the_old_row_shape():
    row, _ = _row(rounds=1)
    assert row["ours_fwd_ms"] == 3.0 and "ours_fwd_rounds_ms" not in row
