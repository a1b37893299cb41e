"""Space file parsing (every error case), suggest() validity and constraints, baselines."""
import copy
import json

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attnsearch import search
from attnsearch.evaluators.memory import state_bytes
from attnsearch.space.search_space import Infeasible, SearchSpace, SpaceError

from search_spaces import TEST_SPACE

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _space(**changes):
    data = copy.deepcopy(TEST_SPACE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_default_space_loads_and_every_baseline_fits():
    space = search.default_space()
    names = [b[0] for b in space.baselines(search.throughput_fn(space))]
    assert names == ["transformer", "gemma3", "command_a", "jamba", "qwen3_next", "linear"]


def test_yaml_and_json_files_load(tmp_path):
    (tmp_path / "s.json").write_text(json.dumps(TEST_SPACE))
    a = search.load_space(tmp_path / "s.json")
    import yaml
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(TEST_SPACE))
    b = search.load_space(str(tmp_path / "s.yaml"))
    assert a.fingerprint() == b.fingerprint()
    assert a.source.endswith("s.json")


def test_fingerprint_changes_with_the_space():
    a = search.load_space(_space())
    b = search.load_space(_space(mechanisms={"full": {}, "mamba2": {}}))
    assert a.fingerprint() != b.fingerprint()


T = TEST_SPACE["target"]


@pytest.mark.parametrize("data, field, allowed", [
    ([1, 2], "the space must be a mapping", None),
    (_space(colour="red"), "colour: unknown field", "target"),
    (_space(target=None), "target: required field is missing", "d_model"),
    (_space(target={**T, "d_model": 0}), "target.d_model: must be an integer >= 1", None),
    (_space(target={**T, "n_heads": "four"}), "target.n_heads", None),
    (_space(target={k: v for k, v in T.items() if k != "context_len"}), "target.context_len: required", None),
    (_space(target={**T, "dtype": "int8"}), "target.dtype", "bf16"),
    (_space(target={**T, "gpu": "TPUv9"}), "target.gpu: unknown GPU", "H100"),
    (_space(target={**T, "depth": 3}), "target.depth: unknown field", "d_model"),
    (_space(mechanisms=None), "mechanisms: required field is missing", "full"),
    (_space(mechanisms={}), "mechanisms: at least one mechanism", "full"),
    (_space(mechanisms={"fulll": {}}), "mechanisms.fulll: unknown mechanism", "sliding_window"),
    (_space(mechanisms=["full", "full"]), "mechanisms: a mechanism is listed twice", None),
    (_space(mechanisms={"sliding_window": {"windw": 3}}), "mechanisms.sliding_window.windw: unknown field", "window"),
    (_space(mechanisms={"sliding_window": {"window": 0}}), "mechanisms.sliding_window.window", "integer in"),
    (_space(mechanisms={"sliding_window": {"window": []}}), "empty list of choices", None),
    (_space(mechanisms={"sliding_window": {"window": [64, 64]}}), "duplicate choices", None),
    (_space(mechanisms={"sliding_window": {"window": {"low": 900, "high": 100}}}), "low 900 is above high 100", None),
    (_space(mechanisms={"sliding_window": {"window": {"low": 100}}}), "needs both low and high", None),
    (_space(mechanisms={"sliding_window": {"window": {"low": 1, "high": 9, "lo": 1}}}), "unknown range key", "low"),
    (_space(mechanisms={"linear": {"feature_map": {"low": 1, "high": 2}}}), "range is not possible", None),
    (_space(mechanisms={"linear": {"feature_map": "tanh"}}), "mechanisms.linear.feature_map", "elu"),
    (_space(mechanisms={"mamba2": {"kernel": {"chunk_size": 48}}}), "mechanisms.mamba2.kernel.chunk_size", "power of two"),
    (_space(mechanisms={"mamba2": {"kernel": {"warps": 4}}}), "mechanisms.mamba2.kernel.warps: unknown field", "chunk_size"),
    (_space(mechanisms={"mamba2": {"chunk_size": 64}}), "mechanisms.mamba2.chunk_size: unknown field", "kernel"),
    (_space(layout={"mode": "spiral"}), "layout.mode", "per_layer, pattern"),
    (_space(layout={"mode": "per_layer", "periods": [2]}), "layout.periods: only used with mode: pattern", None),
    (_space(layout={"mode": "pattern", "periods": [0]}), "layout.periods[0]", None),
    (_space(layout={"mode": "pattern", "periods": []}), "layout.periods: must be a non-empty list", None),
    (_space(objectives=["quality", "speed"]), "objectives.speed: unknown objective", "throughput"),
    (_space(objectives=["quality", "quality"]), "objectives.quality: listed twice", None),
    (_space(objectives={"quality": "up"}), "direction 'up' not allowed", "maximize, minimize"),
    (_space(objectives=[]), "objectives: at least one objective", None),
    (_space(sampler={"name": "cmaes"}), "sampler.name: unknown sampler", "tpe, nsga2, gp, random"),
    (_space(sampler={"name": "tpe", "population_size": 8}), "sampler.population_size: only for the nsga2", None),
    (_space(constraints={"min_full_layers": 3, "max_full_layers": 1}), "min_full_layers 3 > max_full_layers 1", None),
    (_space(constraints={"min_full_layers": 1}, mechanisms={"mamba2": {}}), "'full' is not an allowed mechanism", None),
    (_space(constraints={"min_full_layers": 9}), "more than the 8 layers", None),
    (_space(constraints={"max_state_bytes": 10}), "max_state_bytes: the smallest possible state", None),
    (_space(constraints={"min_throughput": 1e12}), "min_throughput: the fastest possible layout", None),
    (_space(constraints={"max_full": 1}), "constraints.max_full: unknown field", "min_full_layers"),
    (_space(evaluation={"throughput": "guess"}), "evaluation.throughput", "estimated"),
    (_space(evaluation={"tune_kernels": "yes"}), "evaluation.tune_kernels: must be true or false", None),
    (_space(evaluation={"tune_trials": 0}), "evaluation.tune_trials: must be an integer >= 1", None),
    (_space(evaluation={"tune_budget_s": -5}), "evaluation.tune_budget_s: must be a positive number", None),
    (_space(proxy={"stepz": 1}), "proxy.stepz", None),
    (_space(seed=-1), "seed: must be an integer >= 0", None),
])
def test_bad_space_names_file_field_and_allowed(data, field, allowed):
    with pytest.raises(SpaceError) as info:
        search.load_space(_from(data))
    msg = str(info.value)
    assert msg.startswith("space.yaml: "), msg
    assert field in msg, msg
    if allowed:                       # what is allowed is named ("allowed: ..." or "must be ...")
        assert allowed in msg, msg
    assert "\n" not in msg


def _from(data):
    """Load through the text path, as a file would be."""
    return SearchSpace.from_text(json.dumps(data), source="space.yaml")


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("target: [1, 2\n")
    with pytest.raises(SpaceError, match=r"bad.yaml: malformed YAML/JSON at line"):
        search.load_space(bad)
    with pytest.raises(SpaceError, match="no such space file"):
        search.load_space(tmp_path / "missing.yaml")


def test_yaml_never_runs_code(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("target: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(SpaceError, match="evil.yaml: malformed YAML"):
        search.load_space(evil)


def _sample(space, seed, n=30):
    """(arch or Infeasible) for n random trials of an in-memory study."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed),
                                directions=space.directions)
    fn = search.throughput_fn(space)
    out = []
    for _ in range(n):
        trial = study.ask()
        try:
            out.append((trial, space.suggest(trial, throughput_fn=fn)))
        except Infeasible as exc:
            out.append((trial, exc))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), mode=st.sampled_from(["per_layer", "pattern"]),
       min_full=st.integers(0, 2), extra_full=st.integers(0, 4), state_frac=st.floats(0.2, 1.5))
def test_suggest_yields_only_valid_configs_meeting_constraints(seed, mode, min_full, extra_full, state_frac):
    base = search.load_space(_space(layout={"mode": mode}))
    full_state = state_bytes(base.build(["full"] * 8), base.target.context_len)
    cons = {"min_full_layers": min_full, "max_full_layers": min_full + extra_full,
            "max_state_bytes": state_frac * full_state}
    try:
        space = search.load_space(_space(layout={"mode": mode}, constraints=cons))
    except SpaceError as exc:       # impossible constraints are refused up front
        assert "constraints" in str(exc)
        return
    for trial, got in _sample(space, seed, n=15):
        if isinstance(got, Infeasible):
            assert any(v > 0 for v in got.constraints.values())
            continue
        n_full = sum(l.mechanism == "full" for l in got.layers)
        assert got.n_layers == 8 and len(got.layers) == 8
        assert cons["min_full_layers"] <= n_full <= cons["max_full_layers"]
        assert state_bytes(got, 4096) <= cons["max_state_bytes"]
        assert {l.mechanism for l in got.layers} <= set(space.mechanisms)
        for l in got.layers:
            if l.mechanism == "sliding_window":
                assert l.params["window"] in (1024, 4096)
        if mode == "pattern":
            p = trial.params.get("period", 1)
            assert all(got.layers[i] == got.layers[i % p] for i in range(8))


@pytest.mark.parametrize("name, cls", [("tpe", "TPESampler"), ("nsga2", "NSGAIISampler"), ("gp", "GPSampler"),
                                       ("random", "RandomSampler")])
def test_samplers_and_nsga2_population_follows_workers(name, cls):
    from attnsearch.search.study import make_sampler, nsga2_population

    space = search.load_space(_space(sampler={"name": name, "seed": 7}))
    assert type(make_sampler(space, workers=3)).__name__ == cls
    assert nsga2_population(3) == 9 and nsga2_population(1) == 8 and nsga2_population(16) == 16
    if name == "nsga2":
        assert make_sampler(space, workers=3)._population_size == 9
        fixed = search.load_space(_space(sampler={"name": "nsga2", "population_size": 20}))
        assert make_sampler(fixed, workers=3)._population_size == 20


def test_kernel_params_auto_fixed_searched():
    space = search.load_space(_space(mechanisms={
        "mamba2": {"kernel": {"chunk_size": [32, 128]}},
        "gated_deltanet": {"kernel": {"chunk_size": 128}},
        "gla": {"kernel": {"chunk_size": "auto"}}}, layout={"mode": "per_layer"}))
    seen = set()
    for trial, arch in _sample(space, 0, n=10):
        for l in arch.layers:
            kc = l.kernel_config
            if l.mechanism == "mamba2":
                seen.add(kc["chunk_size"])
            elif l.mechanism == "gated_deltanet":
                assert kc == {"chunk_size": 128}
            else:
                assert kc is None          # auto: never sampled, tuned later
    assert seen == {32, 128}
    assert not any("gla" in k and "kernel" in k for t, _ in _sample(space, 1, 5) for k in t.params)


def test_range_parameters_sample_inside_the_range():
    space = search.load_space(_space(mechanisms={
        "sliding_window": {"window": {"low": 100, "high": 3000, "log": True}},
        "longformer": {"block_size": {"low": 32, "high": 128}}}, layout={"mode": "per_layer"}))
    windows, blocks = set(), set()
    for _, arch in _sample(space, 3, n=10):
        for l in arch.layers:
            if l.mechanism == "sliding_window":
                windows.add(l.params["window"])
            else:
                blocks.add(l.params["block_size"])
    assert windows and all(100 <= w <= 3000 for w in windows)
    assert blocks <= {32, 64, 128}


@pytest.mark.parametrize("mode", ["per_layer", "pattern"])
def test_baseline_params_reproduce_the_preset(mode):
    from attnsearch.space.presets import preset

    space = search.load_space(_space(layout={"mode": mode}))
    fits = space.baselines(search.throughput_fn(space))
    # pure linear is not in the space; gemma3's 5:1 over 8 layers is period 8 (= every layer)
    assert [n for n, _, _ in fits] == ["transformer", "gemma3", "command_a", "jamba", "qwen3_next"]
    for name, params, arch in fits:
        got = space.suggest(optuna.trial.FixedTrial(params), search.throughput_fn(space))
        assert got.layout_string() == preset(name, **space.target.dims()).layout_string()
        assert {**got.to_dict(), "name": ""} == {**arch.to_dict(), "name": ""}


def test_baselines_outside_the_space_or_constraints_are_left_out():
    space = search.load_space(_space(mechanisms={"full": {}, "sliding_window": {"window": [512]}}))
    assert [n for n, _, _ in space.baselines(search.throughput_fn(space))] == ["transformer"]
    space = search.load_space(_space(constraints={"max_full_layers": 2}))
    assert "transformer" not in [n for n, _, _ in space.baselines(search.throughput_fn(space))]


def test_min_throughput_needs_a_cost_model():
    space = search.load_space(_space(constraints={"min_throughput": 1.0}))
    trial = optuna.trial.FixedTrial(space.params_for(space.build(["full"] * 8)))
    with pytest.raises(ValueError, match="throughput estimator"):
        space.suggest(trial)
