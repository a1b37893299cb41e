"""benchmarks/linear_session.py's adoption of candidates for the table (LINEAR_ADOPT): per slot and op group, the
fastest candidate that passed its gradient checks and slowed no op of that group."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import linear_session as ls  # noqa: E402


def _rel(fwd, fwdbwd):
    return {"fwd": fwd, "fwdbwd": fwdbwd}


VS_DEFAULT = {
    # both groups: retention / Mamba-2 (linear_attention) and gated delta (delta_rule)
    "s16_fold4": {"retention": _rel(0.90, 1.0), "mamba2": _rel(0.85, 1.0), "gated_delta": _rel(0.97, 1.0)},
    "s16_fold3": {"retention": _rel(0.88, 1.0), "mamba2": _rel(0.90, 1.0), "gated_delta": _rel(1.03, 1.0)},
    "s16_fold4_train": {"retention": _rel(0.90, 0.95), "mamba2": _rel(0.85, 0.93)},
    "dg_weak2": {"mamba2": _rel(1.0, 0.92)},
    "dg_one_sum": {"mamba2": _rel(1.0, 0.95)},
    "gla_reload": {"gla": _rel(1.0, 1.02)},
    "dbwd_gated_w4": {"gated_delta": _rel(1.0, 0.96)},
}
PASSED = ["scale16 fold4 linear:Hfixed", "scale16 fold4 delta:BTH", "scale16 fold3 linear:BTH", "dg_weak2",
          "gla_reload", "gated_w4 delta:H", "gated_w4 delta:BTH"]


def _results(failed=()):
    return [{"path": p, "ok": p not in failed} for p in PASSED]


def test_adopts_the_fastest_checked_candidate_per_slot_and_group():
    slots = [["s16_fold4_train", "s16_fold4", "s16_fold3"], ["dg_weak2", "dg_one_sum"], ["gla_reload"],
             ["dbwd_gated_w4"]]
    adopted, picks = ls.adopt(slots, VS_DEFAULT, _results())
    assert adopted == {"linear_attention": {"FUSED_SCALE16": 1, "FUSED_FOLD": 4, "FUSED_FWD": 3, "DG_WEAK": 2,
                                            "DG_ONE_SUM": 1},
                       "delta_rule": {"FUSED_SCALE16": 1, "FUSED_FOLD": 4, "gated_bwd_num_warps": 4}}
    by = {(p["slot"], p["group"]): p for p in picks}
    # s16_fold3 slowed gated delta: not taken for that group; dg_one_sum never ran its gradient check
    gd = {w["candidate"]: w for w in by[("s16_fold4_train|s16_fold4|s16_fold3", "delta_rule")]["scored"]}
    assert not gd["s16_fold3"]["ok"] and gd["s16_fold4"]["ok"]
    dg = {w["candidate"]: w for w in by[("dg_weak2|dg_one_sum", "linear_attention")]["scored"]}
    assert not dg["dg_one_sum"]["gradcheck"]
    # a candidate that gains nothing (GLA 1.02 in f+b) is not adopted
    assert by[("gla_reload", "linear_attention")]["adopted"] is None


def test_a_failed_or_missing_gradient_check_blocks_adoption():
    slots = [["s16_fold4_train", "s16_fold4"], ["dbwd_gated_w4"]]
    adopted, _ = ls.adopt(slots, VS_DEFAULT, _results(failed=("scale16 fold4 linear:Hfixed", "scale16 fold4 delta:BTH",
                                                                  "gated_w4 delta:BTH")))
    assert adopted == {}
    assert ls.gradchecks_passed(_results(), "gated_w4") and not ls.gradchecks_passed(_results(), "fold3")


def test_a_check_of_the_other_group_does_not_block_adoption():
    """Session 11: the gated delta rule's fp32 checks of the FOLD candidates ran out of time; linear attention's
    cases had passed, so linear attention may adopt them (the delta rule may not)."""
    slots = [["s16_fold4_train", "s16_fold4"]]
    adopted, _ = ls.adopt(slots, VS_DEFAULT, _results(failed=("scale16 fold4 delta:BTH",)))
    assert adopted == {"linear_attention": {"FUSED_SCALE16": 1, "FUSED_FOLD": 4, "FUSED_FWD": 3}}
    results = [{"path": "bwd_kdec", "op": "linear", "ok": True}, {"path": "bwd_kdec", "op": "delta", "ok": False}]
    assert ls.gradchecks_passed(results, "bwd_kdec", "linear_attention")
    assert not ls.gradchecks_passed(results, "bwd_kdec", "delta_rule") and not ls.gradchecks_passed(results, "bwd_kdec")


def test_slots_come_from_the_environment_and_unknown_names_exit(monkeypatch):
    monkeypatch.setenv("LINEAR_ADOPT", "s16_fold4_train|s16_fold4; dg_weak2 ;")
    assert ls.adopt_slots() == [["s16_fold4_train", "s16_fold4"], ["dg_weak2"]]
    monkeypatch.setenv("LINEAR_ADOPT", "s16_fold4|nonsense")
    with pytest.raises(SystemExit, match="nonsense"):
        ls.adopt_slots()
    monkeypatch.delenv("LINEAR_ADOPT")
    assert ls.adopt_slots() == []
