"""benchmarks/proxy_fidelity.py's bookkeeping: when recall emerged, and the rank figures of stored runs."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))
import proxy_fidelity as pf  # noqa: E402


def _run(preset, factor, seed, score, mqar_curve, noisy_curve=None):
    noisy_curve = noisy_curve or mqar_curve
    curve = [{"step": 10.0 * (i + 1), "lm": 3.0, "mqar": m, "noisy_recall": n}
             for i, (m, n) in enumerate(zip(mqar_curve, noisy_curve))]
    metrics = {t: {"loss": 1.0, "score": score, **({"bpb": 3.0} if t == "lm" else {"accuracy": 0.5})}
               for t in ("lm", "mqar", "noisy_recall")}
    return {"preset": preset, "factor": factor, "seed": seed, "score": score, "metrics": metrics, "curve": curve,
            "diverged": False, "cpu_time_s": 1.0, "wall_time_s": 1.0, "target_layout": "FF", "layout": "FF"}


def test_recall_step_needs_every_recall_task_below_the_threshold():
    run = _run("x", 1.0, 0, 0.1, [1.4, 0.4, 0.2, 0.1], [1.4, 1.0, 0.3, 0.1])
    assert pf.recall_step(run) == 30.0          # mqar was there at step 20, noisy recall only at 30
    assert pf.recall_step(run, threshold=0.15) == 40.0
    assert pf.recall_step(_run("x", 1.0, 0, 0.1, [1.4, 1.3, 1.39])) is None
    assert pf.recall_step({"metrics": {"lm": {}}, "curve": [{"step": 1, "lm": 0.1}]}) is None


def test_summarise_pairs_seeds_and_reports_recall_steps():
    runs = []
    for i, name in enumerate(["a", "b", "c", "d"]):
        for seed in (0, 1):
            runs.append(_run(name, 1.0, seed, 0.1 * i + 0.01 * seed, [1.4, 1.4]))
            recalled = [1.4, 0.3] if name == "d" and seed == 1 else [1.4, 1.4]
            runs.append(_run(name, 8.0, seed, 0.2 * i + 0.02 * seed, recalled))
    report = pf.summarise(runs, 8.0)
    assert report["spearman"] == pytest.approx(1.0)
    assert report["short_seed_spearman"] == pytest.approx(1.0)
    assert report["long_seed_spearman"] == pytest.approx(1.0)
    row = {r["preset"]: r for r in report["rows"]}["d"]
    assert row["long_recall_steps"] == [None, 20.0] and row["short_recall_steps"] == [None, None]
    assert row["short_score"] == pytest.approx(0.305)
