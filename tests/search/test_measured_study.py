"""Measured mode inside a study: the driver benchmarks each new layer kind once (as its own Ray
task, before the proxy), composes later trials from the benchmark cache, keeps the tuned kernel
configs with the trials and the export, and fails a trial whose benchmark fails.

The benchmark task here is ``search.testing.cpu_bench_task``: the real per-part timing and
composition code on the CPU with a stand-in tuner (real GPU timings run in benchmarks/)."""
import json

import optuna
from optuna.trial import TrialState

from attnsearch import search
from attnsearch.models import build_model
from attnsearch.search.export import export_trial
from attnsearch.search.testing import cpu_bench_task, synthetic_evaluate
from attnsearch.storage.bench_cache import BenchCache

MEASURED_SPACE = {
    "target": {"d_model": 32, "n_layers": 4, "n_heads": 2, "head_dim": 16, "vocab_size": 64,
               "context_len": 32, "batch_tokens": 64, "dtype": "fp32", "gpu": "H100"},
    "layout": {"mode": "pattern", "periods": [1, 2]},
    "mechanisms": {"full": {}, "sliding_window": {"window": [8, 16]}, "gla": {}},
    "objectives": ["quality", "throughput"],
    "evaluation": {"throughput": "measured"},
    "sampler": {"name": "tpe", "seed": 0},
}


def _study(url, name):
    return optuna.load_study(study_name=name, storage=search.study.optuna_storage(url))


def test_measured_study_caches_tunes_and_exports(ray_session, sqlite_url, study_name, tmp_path):
    space = search.load_space(MEASURED_SPACE)
    result = search.run_study(space, study_name, sqlite_url, n_trials=8, workers=2, evaluate=synthetic_evaluate,
                              bench_task=cpu_bench_task, enqueue_baselines=False)
    assert result.stop_reason == "budget" and result.complete == 8, result
    summary = result.measured
    # 3 layer kinds (+ windows) over 8 trials: most trials come straight from the cache
    assert summary["trials_benchmarked"] + summary["trials_composed_from_cache"] + result.reused == 8
    assert 1 <= summary["bench_tasks"] < 8 and summary["trials_composed_from_cache"] >= 1
    assert 0 < summary["hit_rate"] < 1 and summary["gpu"] == "cpu-test"
    study = _study(sqlite_url, study_name)
    assert study.user_attrs["measured_speed"]["bench_tasks"] == summary["bench_tasks"]
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
            and "reused_from" not in t.user_attrs]
    for t in done:
        m = t.user_attrs["metrics"]
        assert m["throughput_mode"] == "measured" and t.values[1] == m["throughput"] > 0
        assert m["decode_tokens_per_s"] > 0 and m["prefill_tokens_per_s"] > 0
        assert m["throughput_estimated"] > 0                 # the roofline figure stays beside it
        configs = t.user_attrs["run"]["kernel_configs"]
        for layer, cfg in zip(t.user_attrs["arch"]["layers"], configs):
            assert cfg == ({"chunk_size": 32} if layer["mechanism"] == "gla" else {})
    sources = {t.user_attrs["metrics"]["bench_source"] for t in done}
    assert sources == {"cache", "benchmark"}
    assert len(BenchCache(sqlite_url)) > 0                    # the driver stored the task's records
    # the export carries the tuned kernels, and build_model builds with them
    gla = [t for t in done if any(l["mechanism"] == "gla" for l in t.user_attrs["arch"]["layers"])]
    if gla:
        doc = export_trial(study_name, sqlite_url, trial_number=gla[0].number)
        tuned = [l for l in doc["layers"] if l["mechanism"] == "gla"]
        assert tuned and all(l["kernel_config"] == {"chunk_size": 32} and l["kernel_tuning"] == "tuned"
                             for l in tuned)
        path = tmp_path / "best.json"
        path.write_text(json.dumps(doc))
        model = build_model(str(path))
        chunks = {m.chunk_size for m in model.modules() if hasattr(m, "chunk_size")}
        assert chunks == {32}                                  # every GLA mixer runs the tuned chunk

    # a resumed study starts from the database's cache: nothing is timed again
    stored = len(BenchCache(sqlite_url))
    again = search.run_study(space, study_name, sqlite_url, n_trials=12, workers=2, evaluate=synthetic_evaluate,
                             bench_task=cpu_bench_task, enqueue_baselines=False)
    assert again.complete == 4, again
    assert again.measured["part_misses"] == 0 and len(BenchCache(sqlite_url)) == stored
    assert again.measured["part_hits"] > 0 or again.reused == 4      # (all four may repeat known layouts)


def test_failed_benchmark_fails_its_trial_only(ray_session, sqlite_url, study_name):
    def _failing_bench(request):          # nested: Ray ships it by value (test modules are not importable there)
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    space = search.load_space(MEASURED_SPACE)
    result = search.run_study(space, study_name, sqlite_url, n_trials=3, workers=2, evaluate=synthetic_evaluate,
                              bench_task=_failing_bench, enqueue_baselines=False)
    assert result.stop_reason == "budget" and result.failed == 3
    trials = _study(sqlite_url, study_name).get_trials(deepcopy=False)
    reasons = [t.user_attrs["fail_reason"] for t in trials if t.state == TrialState.FAIL]
    assert len(reasons) == 3, reasons
    assert all(r.startswith("benchmark: ") and "illegal memory access" in r for r in reasons), reasons


def test_a_faulted_cuda_worker_leaves_after_replying(ray_session):
    """A CUDA fault poisons the process's GPU context: the trial fails with the reason, and the
    Ray worker process exits right after replying so no later trial lands in it."""
    import time

    import psutil

    from attnsearch.search.worker import run_evaluation

    def faulting(request):          # nested: Ray ships it by value
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    def fine(request):
        return {"metrics": {"quality": 0.5}}

    remote = ray_session.remote(run_evaluation).options(num_cpus=1, max_retries=0)
    bad = ray_session.get(remote.remote(faulting, {"device": "cuda"}), timeout=60)
    assert bad["status"] == "fail" and "illegal memory access" in bad["reason"]
    good = ray_session.get(remote.remote(fine, {"device": "cpu"}), timeout=60)
    assert good["status"] == "ok"
    deadline = time.monotonic() + 30
    while psutil.pid_exists(bad["worker"]["pid"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not psutil.pid_exists(bad["worker"]["pid"])
    # a CPU trial's exception (no GPU context to lose) keeps its worker
    kept = ray_session.get(remote.remote(faulting, {"device": "cpu"}), timeout=60)
    time.sleep(3)
    assert psutil.pid_exists(kept["worker"]["pid"])


def test_a_faulting_layer_kind_fails_only_its_trials(ray_session, sqlite_url, study_name):
    """Waiting trials are benchmarked together; when that joint task fails, the driver retries
    one trial at a time, so only the trials using the faulting layer kind fail."""
    def gla_faults(request):        # nested: Ray ships it by value
        if any(layer["mechanism"] == "gla" for layer in request["arch"]["layers"]):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return cpu_bench_task(request)

    space = search.load_space(MEASURED_SPACE)
    result = search.run_study(space, study_name, sqlite_url, n_trials=8, workers=4, evaluate=synthetic_evaluate,
                              bench_task=gla_faults, enqueue_baselines=False)
    assert result.stop_reason == "budget"
    trials = [t for t in _study(sqlite_url, study_name).get_trials(deepcopy=False)
              if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(trials) == 8
    for t in trials:
        uses_gla = any(layer["mechanism"] == "gla" for layer in t.user_attrs["arch"]["layers"])
        assert (t.state == TrialState.FAIL) == uses_gla, (t.number, t.user_attrs.get("layout"))
        if uses_gla:
            assert t.user_attrs["fail_reason"].startswith("benchmark: ")


def test_untuned_measured_study_exports_default_kernels(ray_session, sqlite_url, study_name):
    """With tune_kernels: false nothing is labelled tuned: the export says the layers run the
    kernels' per-GPU defaults."""
    space = search.load_space({**MEASURED_SPACE, "evaluation": {"throughput": "measured", "tune_kernels": False}})
    result = search.run_study(space, study_name, sqlite_url, n_trials=3, workers=2, evaluate=synthetic_evaluate,
                              bench_task=cpu_bench_task, enqueue_baselines=False)
    assert result.complete == 3 and result.measured["part_misses"] > 0
    done = [t for t in _study(sqlite_url, study_name).get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    assert all("kernel_configs" not in t.user_attrs["run"] for t in done)
    doc = export_trial(study_name, sqlite_url, policy="knee")
    assert {l["kernel_tuning"] for l in doc["layers"]} == {"default"}


def test_a_joint_benchmark_is_split_over_the_benchmarking_slots(ray_session, sqlite_url, study_name, monkeypatch):
    """With two benchmarking slots (two GPUs), the waiting trials' layer kinds go to two benchmark
    tasks at once, each with its own share of the kinds; every trial still composes its speed."""
    from attnsearch.evaluators.tuner import layer_signature
    from attnsearch.search import driver as driver_module
    from attnsearch.search.measured import MeasuredSpeed

    submitted = []
    real_submit = MeasuredSpeed.submit

    def spy(self, arch):
        submitted.append([layer_signature(layer) for layer in arch.layers])
        return real_submit(self, arch)

    monkeypatch.setattr(MeasuredSpeed, "submit", spy)
    monkeypatch.setattr(driver_module.Driver, "_bench_slots", lambda self: 2)
    space = search.load_space(MEASURED_SPACE)
    result = search.run_study(space, study_name, sqlite_url, n_trials=6, workers=3, evaluate=synthetic_evaluate,
                              bench_task=cpu_bench_task)
    assert result.stop_reason == "budget" and result.complete == 6 and result.failed == 0, result
    joint = [(a, b) for a, b in zip(submitted, submitted[1:]) if a and b and not set(a) & set(b)]
    assert joint, submitted                                  # one union, dealt to two tasks
    assert result.measured["bench_tasks"] == len(submitted)
    for t in _study(sqlite_url, study_name).get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            assert t.user_attrs["metrics"]["throughput_mode"] == "measured"


def test_split_deals_layer_kinds_round_robin():
    from attnsearch.space import ArchConfig

    arch = ArchConfig.from_layout("FSGN", d_model=32, n_heads=2, head_dim=16, max_seq_len=64)
    from attnsearch.search.measured import MeasuredSpeed

    assert [p.layout_string() for p in MeasuredSpeed.split(arch, 2)] == ["FG", "SN"]
    assert [p.layout_string() for p in MeasuredSpeed.split(arch, 8)] == ["F", "S", "G", "N"]
    assert MeasuredSpeed.split(arch, 1) == [arch]
