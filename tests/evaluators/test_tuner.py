"""Auto-tuner search and skip logic with fake kernels and a fake timer (no GPU, no timing)."""
import pytest
import torch

from attnsearch.evaluators import tuner
from attnsearch.models import build_mixer
from attnsearch.space import ArchConfig, LayerSpec
from attnsearch.storage.bench_cache import BenchKey, BenchStats, MemoryBenchCache

ENV = {"gpu": "FakeGPU", "versions": {"torch": "t", "triton": "x", "attnsearch": "a"}}


def fake_cost(config) -> float:
    """A made-up time landscape with one best point (a=2, b=2, c=4)."""
    return 1.0 + abs(config["a"] - 2) + 0.5 * abs(config.get("b", 2) - 2) + 0.1 * abs(config.get("c", 4) - 4)


class FakeKernel:
    """run_factory + timer pair: records which configs were launched and timed."""

    def __init__(self, fail_launch=lambda c: None):
        self.launched, self.timed = [], []
        self.fail_launch = fail_launch

    def factory(self, config):
        def fn():
            reason = self.fail_launch(config)
            if reason:
                raise RuntimeError(reason)
            self.launched.append(dict(config))
        fn.config = dict(config)
        return fn

    def timer(self, fn):
        self.timed.append(fn.config)
        t = fake_cost(fn.config)
        return BenchStats(t, t * 0.99, t * 1.01, 10)


def key_for(config):
    return BenchKey(gpu=ENV["gpu"], versions=ENV["versions"], op="fake.train", mechanism={"mechanism": "x"},
                    shape={"T": 1}, dtype="bf16", config=config)


def test_enumerate_and_size():
    space = {"b": (1, 2), "a": (1, 2, 3)}
    configs = tuner.enumerate_configs(space)
    assert tuner.space_size(space) == 6 == len(configs)
    assert configs[0] == {"a": 1, "b": 1} and {"a": 3, "b": 2} in configs
    assert tuner.space_size({}) == 1 and tuner.enumerate_configs({}) == [{}]


def test_exhaustive_skips_invalid_and_failed_launches_with_reasons():
    space = {"a": (1, 2, 3), "b": (1, 2, 4)}

    def validate(c):
        if c["a"] * c["b"] > 8:
            raise ValueError(f"a * b = {c['a'] * c['b']} exceeds 8")

    k = FakeKernel(fail_launch=lambda c: "out of resources: shared memory" if c == {"a": 2, "b": 4} else None)
    result = tuner.tune_configs(space, {"a": 1, "b": 1}, run_factory=k.factory, timer=k.timer,
                                validate=validate, op="fake")
    assert result.method == "exhaustive" and result.space_size == 9
    assert k.timed[0] == {"a": 1, "b": 1}                      # the default is the baseline, timed first
    skipped = {tuple(sorted(t.config.items())): t.skipped for t in result.skipped}
    assert skipped[(("a", 3), ("b", 4))] == "a * b = 12 exceeds 8"
    assert skipped[(("a", 2), ("b", 4))] == "RuntimeError: out of resources: shared memory"
    assert len(k.timed) == 9 - 2
    assert {"a": 3, "b": 4} not in k.launched                   # invalid configs never launch
    assert result.best_config == {"a": 2, "b": 2}
    assert result.best_stats.median_ms == pytest.approx(1.0)
    assert result.default_stats.median_ms == pytest.approx(2.5)
    assert result.speedup == pytest.approx(2.5)
    d = result.to_dict()
    assert d["n_skipped"] == 2 and d["n_timed"] == 7


def test_cache_hits_are_not_timed_again():
    cache = MemoryBenchCache()
    space = {"a": (1, 2, 3), "b": (1, 2)}
    first = FakeKernel()
    tuner.tune_configs(space, {"a": 1, "b": 1}, run_factory=first.factory, timer=first.timer,
                       cache=cache, key_for=key_for)
    assert len(first.timed) == 6 and cache.misses == 6 and len(cache.new_records()) == 6
    second = FakeKernel()
    result = tuner.tune_configs(space, {"a": 1, "b": 1}, run_factory=second.factory, timer=second.timer,
                                cache=cache, key_for=key_for)
    assert second.timed == [] and second.launched == [] and cache.hits == 6
    assert all(t.cached for t in result.trials) and result.best_config == {"a": 2, "b": 2}


def test_tpe_for_large_spaces_respects_the_budget_and_skips_invalid():
    space = {"a": (1, 2, 3, 4, 5), "b": (1, 2, 3, 4, 5), "c": (1, 2, 4, 8, 16)}   # 125 points

    def validate(c):
        if c["c"] == 16:
            raise ValueError("c=16 is not allowed here")

    k = FakeKernel()
    result = tuner.tune_configs(space, {"a": 5, "b": 5, "c": 1}, run_factory=k.factory, timer=k.timer,
                                validate=validate, exhaustive_limit=32, n_trials=20, seed=1)
    assert result.method == "tpe" and result.space_size == 125
    assert k.timed[0] == {"a": 5, "b": 5, "c": 1}               # default enqueued first
    assert 0 < len(k.timed) <= 20
    assert all(c["c"] != 16 for c in k.timed)
    assert all(t.skipped == "c=16 is not allowed here" for t in result.skipped)
    assert result.best_stats.median_ms == min(fake_cost(c) for c in k.timed)
    assert result.best_stats.median_ms < result.default_stats.median_ms
    with pytest.raises(ValueError, match="n_trials"):
        tuner.tune_configs(space, {}, run_factory=k.factory, timer=k.timer, n_trials=0)


def test_checked_winner_falls_back_to_next_fastest_then_default():
    space = {"a": (1, 2, 3)}
    k = FakeKernel()
    result = tuner.tune_configs(space, {"a": 1}, run_factory=k.factory, timer=k.timer)
    assert result.best_config == {"a": 2}
    bad = {2}

    def check(config):
        ok = config["a"] not in bad
        return {"config": config, "rel_err": 0.0 if ok else 1.0, "tolerance": 0.03, "ok": ok}

    checked = tuner.checked_winner(result, check)
    assert checked.best_config in ({"a": 1}, {"a": 3}) and checked.check["ok"]
    assert any(t.skipped and t.skipped.startswith("wrong output") for t in checked.trials)
    result = tuner.tune_configs(space, {"a": 1}, run_factory=k.factory, timer=k.timer)
    bad = {1, 2, 3}
    checked = tuner.checked_winner(result, check)
    assert checked.best_config == {"a": 1} and not checked.check["ok"]


def _tiny_arch(mechanism, params=None, kernel_config=None):
    layer = LayerSpec(mechanism=mechanism, params=params or {}, kernel_config=kernel_config)
    return ArchConfig(d_model=32, n_heads=2, head_dim=16, n_layers=1, layers=[layer], max_seq_len=128)


def test_capture_and_run_a_real_op_on_cpu_with_the_torch_backend():
    arch = _tiny_arch("gated_deltanet", kernel_config={"chunk_size": 16})
    call = tuner.capture_layer_op(arch, arch.layers[0], batch=2, seq_len=40, dtype=torch.float32, device="cpu")
    assert call.op == "delta_rule" and call.args[0].shape == (2, 40, 2, 16)
    assert call.kwargs["chunk_size"] == 16
    # the op space of a linear op carries chunk_size; split_config makes it an op argument
    assert "chunk_size" in tuner.op_space("delta_rule")
    assert tuner.split_config("delta_rule", {"chunk_size": 32, "BLOCK_V": 64}) == ({"chunk_size": 32}, {"BLOCK_V": 64})
    make = tuner.run_factory(call, backend="torch")
    timed = []
    result = tuner.tune_configs({"chunk_size": (16, 32)}, {"chunk_size": 16}, run_factory=make,
                                timer=lambda fn: timed.append(fn) or BenchStats(1.0, 1.0, 1.0, 1))
    assert len(timed) == 2 and not result.skipped
    # each timed callable really ran forward + backward into fresh leaves
    leaves = [a for a in tuner._fresh_leaves(call)[0] if torch.is_tensor(a)]
    assert all(t.dtype == torch.float32 for t in leaves)


def test_validator_reports_the_backend_reason():
    arch = _tiny_arch("longformer", {"block_size": 16, "window": 7, "num_global_blocks": 1})
    call = tuner.capture_layer_op(arch, arch.layers[0], batch=1, seq_len=48, dtype=torch.float32, device="cpu")
    assert call.op == "softmax_attention" and call.kwargs["block_indices"] is not None
    check = tuner.validator(call)
    default = tuner.op_default("softmax_attention")
    check(default)                                         # the default is valid
    with pytest.raises(ValueError, match="BLOCK_M x BLOCK_N"):
        check({**default, "BLOCK_M": 256, "BLOCK_N": 256})


def test_time_budget_stops_after_the_default_with_a_fake_clock():
    now = [0.0]

    def clock():
        return now[0]

    k = FakeKernel()

    def timer(fn):
        now[0] += 10.0                      # every timing costs 10 fake seconds
        return k.timer(fn)

    result = tuner.tune_configs({"a": (1, 2, 3), "b": (1, 2)}, {"a": 3, "b": 1}, run_factory=k.factory,
                                timer=timer, time_budget_s=25.0, clock=clock)
    assert k.timed[0] == {"a": 3, "b": 1} and len(k.timed) == 3 and result.budget_exhausted
    result = tuner.tune_configs({"a": (1, 2, 3, 4, 5), "b": (1, 2, 3, 4, 5), "c": (1, 2, 4)}, {"a": 1, "b": 1, "c": 1},
                                run_factory=k.factory, timer=timer, time_budget_s=15.0, clock=clock,
                                exhaustive_limit=8, n_trials=20)
    assert result.method == "tpe" and result.budget_exhausted and result.default_stats is not None
    assert sum(1 for t in result.trials if t.stats) == 2


def test_a_check_that_cannot_run_counts_as_failed():
    k = FakeKernel()
    result = tuner.tune_configs({"a": (1, 2)}, {"a": 1}, run_factory=k.factory, timer=k.timer)

    def check(config):
        raise RuntimeError("CUDA out of memory in the torch reference")

    checked = tuner.checked_winner(result, check)
    assert checked.best_config == {"a": 1} and checked.check["ok"] is False
    assert all(t.skipped.startswith("check failed: RuntimeError: CUDA out of memory") for t in checked.trials)


def test_a_config_that_faults_the_gpu_stops_the_search_naming_it():
    """After an illegal memory access nothing else can run in the process: the search stops with
    the faulting config in the message instead of skipping every later config."""
    def run_factory(config):
        def fn():
            if config["BLOCK"] == 64:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return fn

    with pytest.raises(RuntimeError, match=r"linear_attention config \{'BLOCK': 64\} faulted the GPU"):
        tuner.tune_configs({"BLOCK": [32, 64, 128]}, {"BLOCK": 32}, run_factory=run_factory,
                     timer=lambda fn: (fn(), BenchStats(1.0, 1.0, 1.0, 1))[1], op="linear_attention")


def test_families_search_each_kernel_family_with_the_others_at_their_best():
    """Kernel families add up in time, so a coordinate search over them finds the optimum of a
    separable landscape with far fewer launches than the product space."""
    families = [{"a": [0, 1, 2, 3]}, {"b": [0, 2, 4], "c": [2, 4]}]
    kernel = FakeKernel()
    result = tuner.tune_families(families, {"a": 0, "b": 0, "c": 2}, run_factory=kernel.factory,
                                 timer=kernel.timer, op="fake")
    assert result.best_config == {"a": 2, "b": 2, "c": 4}
    assert kernel.timed[0] == {"a": 0, "b": 0, "c": 2}                  # the default first
    assert len(kernel.timed) == 4 + 6 - 1 < 4 * 6                        # the family winner is not re-timed
    assert result.speedup == pytest.approx(fake_cost({"a": 0, "b": 0, "c": 2}) / 1.0)
    assert result.method == "families(exhaustive,exhaustive)" and result.space_size == 10


def test_mechanism_families_add_gate_path_variants():
    """Gated mechanisms also search their gate paths' opt-in variants, small families after the op's own;
    pinned keys stay out, and ungated mechanisms get none."""
    base = tuner.op_families("linear_attention")
    mamba = tuner.op_families("linear_attention", mechanism="mamba2")
    assert mamba[:len(base)] == base and len(mamba) == len(base) + 3
    assert mamba[len(base)] == {"FUSED_FOLD": [2, 3, 4, 5], "FUSED_SCALE16": [0, 1]}
    assert mamba[-2] == {"DG_WEAK": [0, 1, 2], "DG_ONE_SUM": [0, 1], "BWD_KDEC": [0, 1], "DG_PREFIX": [0, 1]}
    assert mamba[-1] == {"SCAN_SCALE16": [0, 1], "prep_bwd_num_warps": [0, 2, 8]}
    assert tuner.op_families("linear_attention", mechanism="linear") == base
    assert tuner.op_families("linear_attention", mechanism="gla")[-1] == {"GLA_BWD_SPLIT": [0, 1],
                                                                          "GLA_BWD_RELOAD": [0, 1],
                                                                          "prep_bwd_num_warps": [0, 4, 8]}
    pinned = tuner.op_families("linear_attention", fixed={"FUSED_FOLD": 2}, mechanism="retnet")[len(base)]
    assert "FUSED_FOLD" not in pinned and pinned["FUSED_SCALE16"] == [0, 1]
    gdn = tuner.op_families("delta_rule", mechanism="gated_deltanet")[-1]
    assert gdn == {"FUSED_FOLD": [2, 3, 4, 5], "FUSED_SCALE16": [0, 1]}
    from attnsearch.space.catalogue import mechanism
    for mech, fams in tuner.MECHANISM_FAMILIES.items():
        op = mechanism(mech).op
        assert op in ("linear_attention", "delta_rule")  # a catalogue name, of a linear op
        for fam in fams:
            assert tuner.space_size(fam) <= tuner.EXHAUSTIVE_LIMIT, mech
            assert set(fam) <= set(tuner.op_space(op)), mech  # keys the op accepts


def test_batch_rows_cuts_batch_led_tensors_only():
    q = torch.randn(3, 10, 2, 4)
    decay = torch.tensor([-0.1, -0.2])          # per head: stays whole
    state = torch.randn(3, 2, 4, 4)
    call = tuner.CapturedOp("linear_attention", (q, q, q, decay), {"initial_state": state, "chunk_size": 16})
    row = tuner.batch_rows(call)
    assert [a.shape[0] for a in row.args[:3]] == [1, 1, 1] and row.args[3].shape == (2,)
    assert row.kwargs["initial_state"].shape == (1, 2, 4, 4) and row.kwargs["chunk_size"] == 16
    assert torch.equal(row.args[0], q[:1])


class _GradientScaled(torch.autograd.Function):
    """Identity forward, backward scaled: an op whose output is right and whose gradients are not."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


@pytest.mark.parametrize("mech, params", [("mamba2", {}), ("retnet", {}), ("gated_deltanet", {})])
def test_check_against_torch_compares_gradients_too(monkeypatch, mech, params):
    """A config that only breaks the backward passes an output check; the gradient check (first batch row,
    every input) catches it and names the gradient. The real triton kernels (interpreter) pass both."""
    from attnsearch import kernels

    arch = _tiny_arch(mech, params, kernel_config={"chunk_size": 16})
    call = tuner.capture_layer_op(arch, arch.layers[0], batch=2, seq_len=40, dtype=torch.float32, device="cpu")
    good = tuner.check_against_torch(call, {}, "fp32")
    assert good["ok"] and good["rel_err"] < 1e-4 and good["grad_rel_err"] < 1e-4, good
    real = getattr(kernels, call.op)

    def broken_backward(*args, backend="auto", config=None, **kwargs):
        broken = bool((config or {}).get("BROKEN"))
        config = {k: v for k, v in (config or {}).items() if k != "BROKEN"} or None
        out = real(*args, backend=backend, config=config, **kwargs)
        if backend != "triton" or not broken:
            return out
        o, *rest = out if isinstance(out, tuple) else (out,)
        o = _GradientScaled.apply(o, 1.5)
        return (o, *rest) if isinstance(out, tuple) else o

    monkeypatch.setattr(kernels, call.op, broken_backward)
    monkeypatch.setattr(tuner, "split_config", lambda op, config: ({}, dict(config)))
    bad = tuner.check_against_torch(call, {"BROKEN": 1}, "fp32")
    assert bad["rel_err"] < 1e-4 and not bad["ok"]
    assert bad["grad_rel_err"] == pytest.approx(0.5, rel=1e-3) and bad["worst_grad"]
    assert tuner._failed_check(bad).startswith(f"wrong gradient ({bad['worst_grad']})")
    outputs_only = tuner.check_against_torch(call, {"BROKEN": 1}, "fp32", gradients=False)
    assert outputs_only["ok"] and "grad_rel_err" not in outputs_only


def test_families_respect_pinned_keys_and_valid_values():
    fams = tuner.op_families("linear_attention", fixed={"chunk_size": 128, "num_warps": 4},
                             valid={"chunk_size": (16, 32, 64, 128), "BLOCK_K": (16, 32, 64), "num_warps": (4, 8),
                                    "num_stages": (1, 2, 3), "OUT_BLOCK_K": (64,)})
    keys = set().union(*fams)
    assert "chunk_size" not in keys and "num_warps" not in keys          # pinned by the space
    assert fams[0]["BLOCK_K"] == [64] and fams[0]["num_stages"] == [2, 3]  # 128 is not a valid BLOCK_K here
    assert "BLOCK_V" not in keys                                          # not in this op's space at all
    for op in tuner.OP_NAMES:                                             # every family fits an exhaustive search
        for fam in tuner.op_families(op):
            assert tuner.space_size(fam) <= tuner.EXHAUSTIVE_LIMIT
