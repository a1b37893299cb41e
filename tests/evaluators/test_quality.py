import json
import math
import random

import pytest

from attnsearch.evaluators import ranking
from attnsearch.evaluators import tasks as T
from attnsearch.evaluators.proxy import fit_chunks, pick_layers, proxy_arch, scale_params
from attnsearch.evaluators.quality import ProxySpec, QualityResult, evaluate_quality, lr_at, task_score
from attnsearch.space.arch import ArchConfig
from attnsearch.space.presets import preset

TARGET = dict(d_model=256, n_layers=12, n_heads=4, head_dim=64, max_seq_len=4096)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("def f(x):\n    return x + 1\n" * 200)
    return str(path)


def tiny_proxy(corpus, **changes):
    base = dict(d_model=16, n_layers=2, n_heads=1, head_dim=16, steps=4, batch=2, eval_sequences=4,
                eval_tokens=64, eval_batch=4, curve_points=2, corpus=corpus,
                tasks={"mqar": T.MQARSpec(seq_len=16, num_kv_pairs=2),
                       "selective_copy": T.SelectiveCopySpec(seq_len=16, num_tokens=3),
                       "noisy_recall": T.NoisyRecallSpec(seq_len=16, num_keys=2),
                       "lm": T.LMSpec(seq_len=16)})
    base.update(changes)
    return ProxySpec(**base)


# ----------------------------------------------------------------------------- proxy scaling

def test_pick_layers_keeps_every_kind_and_its_order():
    gemma = preset("gemma3", **TARGET)                  # SSSSSF SSSSSF
    picked = pick_layers(list(gemma.layers), 4)
    assert [l.mechanism for l in picked].count("full") == 1
    assert [l.mechanism for l in picked].count("sliding_window") == 3
    jamba = preset("jamba", **{**TARGET, "n_layers": 16})  # MMMMMMMF x2
    names = [l.mechanism for l in pick_layers(list(jamba.layers), 4)]
    assert names.count("full") == 1 and names.count("mamba2") == 3
    mixed = ArchConfig.from_layout("FFFFFFAAQQ", d_model=64, n_heads=2, head_dim=32)
    names = [l.mechanism for l in pick_layers(list(mixed.layers), 5)]
    assert names == ["full", "full", "full", "linear", "gated_deltanet"]
    # deeper than the target: tiled
    assert [l.mechanism for l in pick_layers(list(mixed.layers[:2]), 3)] == ["full"] * 3


def test_scale_params_fits_windows_and_blocks_to_proxy_context():
    ratio = 64 / 4096
    assert scale_params("sliding_window", {"window": 1024}, ratio, 64) == {"window": 16}
    assert scale_params("sliding_window", {"window": 8}, ratio, 64)["window"] == 4     # floor
    p = scale_params("block_topk", {"block_size": 64, "top_k": 8}, ratio, 64)
    assert p["block_size"] == 16 and p["top_k"] >= 1
    p = scale_params("bigbird", {"block_size": 128, "window": 192, "num_global_blocks": 2,
                                 "num_random_blocks": 2, "seed": 3}, 1.0, 512)
    assert p == {"block_size": 128, "window": 192, "num_global_blocks": 2, "num_random_blocks": 2, "seed": 3}


def test_proxy_arch_keeps_mechanisms_and_sets_proxy_dims():
    arch = preset("qwen3_next", **TARGET).with_layers(
        [{"mechanism": "gated_deltanet", "kernel_config": {"chunk_size": 32}}] * 3 + ["full"])
    p = proxy_arch(arch, d_model=32, n_layers=None, n_heads=2, head_dim=16, seq_len=64, vocab_size=256)
    assert p.layout_string() == "QQQF"
    assert (p.d_model, p.n_heads, p.head_dim, p.v_head_dim, p.vocab_size, p.max_seq_len) == (32, 2, 16, 16, 256, 64)
    assert all(l.kernel_config is None for l in p.layers)


# ----------------------------------------------------------------------------- spec and schedule

@pytest.mark.parametrize("bad", [
    dict(device="tpu"), dict(task_weights={"nope": 1.0}), dict(task_weights={"lm": -1.0}),
    dict(tasks={}), dict(steps=0), dict(lr=0), dict(bogus=1),
    dict(task_batch={"nope": 4}), dict(task_batch={"lm": 0}),
])
def test_proxy_spec_rejects_bad_fields(bad):
    with pytest.raises(ValueError):
        ProxySpec(**bad)


def test_budget_and_schedule():
    p = ProxySpec(steps=100, lr=1.0, warmup_fraction=0.1, min_lr_fraction=0.1)
    assert lr_at(0, 100, p) == pytest.approx(0.1)
    assert lr_at(9, 100, p) == pytest.approx(1.0)
    assert lr_at(99, 100, p) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(s, 100, p) >= lr_at(s + 1, 100, p) for s in range(10, 99))
    assert p.scaled_budget(8).total_steps() == 800
    tok = ProxySpec(tokens=10 * p.tokens_per_step())
    assert tok.total_steps() == 10 and tok.scaled_budget(2).total_steps() == 20


def test_task_batch_sets_one_tasks_batch_and_the_tokens_per_step():
    p = ProxySpec(batch=8, task_batch={"lm": 4})
    assert p.batch_of("lm") == 4 and p.batch_of("mqar") == 8
    assert p.tokens_per_step() == ProxySpec(batch=8).tokens_per_step() - 4 * p.tasks["lm"].seq_len


# ----------------------------------------------------------------------------- evaluate_quality

def test_result_fields_and_json(tiny_corpus):
    arch = ArchConfig.from_layout("SF", d_model=64, n_heads=2, head_dim=32, max_seq_len=256)
    r = evaluate_quality(arch, tiny_proxy(tiny_corpus))
    assert isinstance(r, QualityResult) and not r.diverged and r.reason is None
    assert set(r.metrics) == {"mqar", "selective_copy", "noisy_recall", "lm"}
    assert 0.0 <= r.score <= 1.0
    assert all(0.0 <= m["score"] <= 1.0 for m in r.metrics.values())
    assert "bpb" in r.metrics["lm"] and "accuracy" in r.metrics["mqar"]
    assert r.steps == 4 and r.tokens_seen == 4 * 2 * 16 * 4
    assert r.curve and r.curve[-1]["step"] == 4 and r.curve[-1]["tokens"] == r.tokens_seen
    assert r.layout == "SF" and r.n_params > 0 and r.wall_time_s > 0
    json.dumps(r.to_dict())


def test_task_batch_is_what_the_run_trains_on(tiny_corpus):
    arch = ArchConfig.from_layout("F", d_model=16, n_heads=1, head_dim=16, max_seq_len=256)
    proxy = tiny_proxy(tiny_corpus, task_batch={"lm": 1, "mqar": 3})
    r = evaluate_quality(arch, proxy)
    assert r.tokens_seen == 4 * (1 + 3 + 2 + 2) * 16 == proxy.steps * proxy.tokens_per_step()


def test_same_seed_same_result(tiny_corpus):
    arch = ArchConfig.from_layout("AK", d_model=64, n_heads=2, head_dim=32, max_seq_len=256)
    a = evaluate_quality(arch, tiny_proxy(tiny_corpus, seed=3))
    b = evaluate_quality(arch, tiny_proxy(tiny_corpus, seed=3))
    c = evaluate_quality(arch, tiny_proxy(tiny_corpus, seed=4))
    assert a.score == b.score and a.metrics == b.metrics
    assert [p["loss"] for p in a.curve] == [p["loss"] for p in b.curve]
    assert [p["loss"] for p in a.curve] != [p["loss"] for p in c.curve]


def test_absurd_learning_rate_comes_back_diverged_not_raised(tiny_corpus):
    arch = ArchConfig.from_layout("FF", d_model=64, n_heads=2, head_dim=32, max_seq_len=256)
    r = evaluate_quality(arch, tiny_proxy(tiny_corpus, lr=1e9, steps=30, warmup_fraction=0.0, grad_clip=None))
    assert r.diverged and r.score == 0.0
    assert r.reason and ("non-finite" in r.reason or "exploded" in r.reason)
    assert r.steps < 30


def test_wall_time_limit_stops_early_but_still_scores(tiny_corpus):
    arch = ArchConfig.from_layout("F", d_model=64, n_heads=2, head_dim=32, max_seq_len=256)
    r = evaluate_quality(arch, tiny_proxy(tiny_corpus, steps=10_000, max_wall_time_s=1e-9))
    assert r.stopped_early and not r.diverged and "max_wall_time_s" in r.reason
    assert r.steps < 10_000 and set(r.metrics) == {"mqar", "selective_copy", "noisy_recall", "lm"}


def test_task_weights_weight_the_score(tiny_corpus):
    arch = ArchConfig.from_layout("F", d_model=64, n_heads=2, head_dim=32, max_seq_len=256)
    r = evaluate_quality(arch, tiny_proxy(tiny_corpus, task_weights={"mqar": 0, "selective_copy": 0,
                                                                    "noisy_recall": 0, "lm": 1}))
    assert r.score == pytest.approx(r.metrics["lm"]["score"])


def test_recall_score_is_zero_at_the_guess_among_context_values_and_one_when_certain():
    mqar = T.MQARSpec(seq_len=32, num_kv_pairs=4, num_values=16)
    assert task_score(mqar, math.log(4)) == pytest.approx(0.0)       # the plateau: no recall yet
    assert task_score(mqar, math.log(256)) == 0.0                     # worse than the plateau: clipped
    assert task_score(mqar, 0.0) == 1.0
    assert task_score(mqar, 0.5 * math.log(4)) == pytest.approx(0.5)
    assert task_score(mqar, float("nan")) == 0.0
    lm = T.LMSpec(seq_len=32)
    assert task_score(lm, 4.0 * math.log(2), unigram_bits=4.0) == pytest.approx(0.0)   # unigram bpb
    assert task_score(lm, 2.0 * math.log(2), unigram_bits=4.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="unigram_bits"):
        task_score(lm, 1.0)


def test_default_proxy_spec_is_the_measured_budget():
    # benchmarks/results/proxy_fidelity.json was measured at these; change both together
    p = ProxySpec()
    assert (p.d_model, p.n_layers, p.steps, p.batch, p.lr) == (32, 4, 600, 8, 1e-2)
    assert {n: s.seq_len for n, s in p.tasks.items()} == {"mqar": 32, "noisy_recall": 32, "lm": 64}


# ----------------------------------------------------------------------------- rank correlation

def test_own_rank_correlations_match_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for n in (3, 7, 12, 30):
        x = [rng.randint(0, 5) for _ in range(n)]
        y = [xi + rng.randint(-3, 3) for xi in x]
        if len(set(x)) < 2 or len(set(y)) < 2:
            continue
        assert ranking.spearman_own(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
        assert ranking.kendall_own(x, y) == pytest.approx(stats.kendalltau(x, y).statistic)


def test_rank_correlation_extremes_and_errors():
    x = [0.1, 0.5, 0.3, 0.9]
    assert ranking.spearman_own(x, x) == pytest.approx(1.0)
    assert ranking.kendall_own(x, [-v for v in x]) == pytest.approx(-1.0)
    assert ranking.average_ranks([3, 1, 3]) == [2.5, 1.0, 2.5]
    assert math.isnan(ranking.spearman_own([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        ranking.spearman([1, 2], [1])


def test_cpu_chunks_fit_the_shortest_task_and_leave_softmax_layers_alone():
    arch = ArchConfig.from_layout("FAN", d_model=32, n_heads=2, head_dim=16, max_seq_len=64)
    for lens, chunk in (([16, 64], 16), ([32, 64], 32), ([100], 64), ([8], 16)):
        fitted = fit_chunks(arch, lens)
        assert [layer.kernel_config for layer in fitted.layers] == [None, {"chunk_size": chunk}, {"chunk_size": chunk}]
        assert fitted.layout_string() == "FAN"


def test_score_weights_weight_the_score_but_not_the_training():
    spec = ProxySpec()
    # the default: noisy recall is trained (weight 1) but not scored
    assert spec.weight("noisy_recall") == 1.0 and spec.score_weight("noisy_recall") == 0.0
    assert spec.quality_score({"lm": 0.2, "mqar": 0.6, "noisy_recall": 0.9}) == pytest.approx(0.4)
    both = ProxySpec(score_weights={"noisy_recall": 1.0})
    assert both.quality_score({"lm": 0.2, "mqar": 0.6, "noisy_recall": 0.9}) == pytest.approx(1.7 / 3)
    # tasks without noisy recall: the default score weights do not apply, the task weights do
    only = ProxySpec(tasks={"lm": T.LMSpec(seq_len=16)}, task_weights={"lm": 2.0})
    assert only.quality_score({"lm": 0.3}) == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [dict(score_weights={"nope": 1.0}), dict(score_weights={"lm": -1.0}),
                                 dict(score_weights={"lm": 0.0, "mqar": 0.0, "noisy_recall": 0.0})])
def test_invalid_score_weights_raise(bad):
    with pytest.raises(ValueError, match="score_weights"):
        ProxySpec(**bad)
