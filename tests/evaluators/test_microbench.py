"""Per-part microbenchmarks on the CPU with a fake timer: composition arithmetic, cache use,
rotation, and Ray timing isolation (no real timings here: those run in benchmarks/ on the GPU)."""
import time

import pytest

from attnsearch.evaluators import microbench as mb
from attnsearch.space import ArchConfig, LayerSpec
from attnsearch.storage.bench_cache import BenchStats, MemoryBenchCache

ENV = {"gpu": "FakeGPU", "versions": {"torch": "t", "triton": "x", "attnsearch": "a"}}


def tiny_arch(layers):
    specs = [LayerSpec(**layer) if isinstance(layer, dict) else LayerSpec(mechanism=layer) for layer in layers]
    return ArchConfig(d_model=32, n_heads=2, head_dim=16, n_layers=len(specs), layers=specs, vocab_size=50,
                      max_seq_len=64)


class FakeTimer:
    """Counts timings; each part gets a distinct made-up time from its call order."""

    def __init__(self):
        self.calls = 0

    def __call__(self, fn):
        fn()                                   # the callable really runs on the CPU
        self.calls += 1
        return BenchStats(float(self.calls), float(self.calls), float(self.calls), 1)


def test_compose_arithmetic():
    comp = mb.compose({"train": [1.0, 2.0, 3.0], "decode": [0.1, 0.1, 0.2]}, {"train": 0.5, "decode": 0.05},
                      {"train": 4.0, "decode": 0.3}, n_layers=3, batch=2, seq_len=1000)
    assert comp.step_ms["train"] == pytest.approx(1 + 2 + 3 + 3 * 0.5 + 4.0)        # 11.5 ms
    assert comp.tokens_per_s["train"] == pytest.approx(2 * 1000 / 0.0115)
    assert comp.step_ms["decode"] == pytest.approx(0.4 + 0.15 + 0.3)
    assert comp.tokens_per_s["decode"] == pytest.approx(2 / 0.00085)                   # one token per sequence
    assert mb.composition_error(11.5, 10.0) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="one time per layer"):
        mb.compose({"train": [1.0]}, {"train": 0.5}, {"train": 1.0}, n_layers=2, batch=1, seq_len=8)


def test_target_shape_and_rotation():
    assert mb.TargetShape.from_target(4096, 65536) == mb.TargetShape(16, 4096, "bf16")
    assert mb.TargetShape.from_target(4096).batch == 1
    with pytest.raises(ValueError, match="seq_len"):
        mb.TargetShape.from_target(1)
    with pytest.raises(ValueError, match="dtype"):
        mb.TargetShape.from_target(64, dtype="int8")
    L2 = 50 * 2 ** 20
    assert mb.rotation_count(2 * L2, L2) == 1                   # overflows L2: no rotation needed
    assert mb.rotation_count(L2 // 2, L2) == 4                  # spans 2x L2
    assert mb.rotation_count(1024, L2) == mb.MAX_ROTATED_SETS
    seen = []
    fn = mb.rotating(lambda: [object()], lambda inputs: seen.append(id(inputs)), l2=10 ** 9)
    for _ in range(2 * fn.n_sets):
        fn()
    assert len(set(seen)) == fn.n_sets > 1 and seen[:fn.n_sets] == seen[fn.n_sets:]


def test_measure_parts_times_each_distinct_part_once_and_composes():
    arch = tiny_arch(["sliding_window", "sliding_window", {"mechanism": "deltanet", "kernel_config": {"chunk_size": 16}},
                      "sliding_window"])
    cache, timer = MemoryBenchCache(), FakeTimer()
    shape = mb.TargetShape(2, 40, "fp32")
    comp = mb.measure_parts(arch, shape, cache=cache, timer=timer, device="cpu", environment=ENV)
    # 2 distinct mixers x 3 phases + dense x 3 + head x 3
    assert timer.calls == 12 and cache.misses == 12 and cache.hits == 0   # repeated layers: looked up once
    assert comp.mixer_ms["train"][0] == comp.mixer_ms["train"][1] == comp.mixer_ms["train"][3]
    assert comp.mixer_ms["train"][2] != comp.mixer_ms["train"][0]
    for phase in mb.PHASES:
        expected = sum(comp.mixer_ms[phase]) + 4 * comp.dense_ms[phase] + comp.head_ms[phase]
        assert comp.step_ms[phase] == pytest.approx(expected)
    assert comp.tokens_per_s["train"] == pytest.approx(80 / (comp.step_ms["train"] / 1e3))
    # everything is cached now: a second measurement times nothing
    again = mb.measure_parts(arch, shape, cache=cache, timer=timer, device="cpu", environment=ENV)
    assert timer.calls == 12 and again.step_ms == comp.step_ms
    # a new kernel config for one layer, or a new GPU, misses
    arch2 = arch.with_layers([*arch.layers[:2], {"mechanism": "deltanet", "kernel_config": {"chunk_size": 32}},
                              arch.layers[3]])
    mb.measure_parts(arch2, shape, cache=cache, timer=timer, device="cpu", environment=ENV)
    assert timer.calls == 15
    mb.measure_parts(arch, shape, cache=cache, timer=timer, device="cpu", environment={**ENV, "gpu": "Other"})
    assert timer.calls == 27


def test_records_flow_back_to_a_new_cache():
    arch = tiny_arch(["full", "retnet"])
    first = MemoryBenchCache()
    mb.measure_parts(arch, mb.TargetShape(1, 24, "fp32"), cache=first, timer=FakeTimer(), device="cpu",
                     environment=ENV, phases=("train",))
    seeded = MemoryBenchCache(first.new_records())
    timer = FakeTimer()
    mb.measure_parts(arch, mb.TargetShape(1, 24, "fp32"), cache=seeded, timer=timer, device="cpu",
                     environment=ENV, phases=("train",))
    assert timer.calls == 0 and seeded.hit_rate == 1.0
    with pytest.raises(ValueError, match="phase"):
        mb.measure_parts(arch, mb.TargetShape(1, 24, "fp32"), device="cpu", environment=ENV, phases=("eval",))


def test_measured_mode_without_a_gpu_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        mb.measured_throughput(tiny_arch(["full"]), 32)


def test_bench_task_options():
    opts = mb.bench_task_options(gpu=True, cluster_resources={"GPU": 1.0, "bench_slot": 1.0})
    assert opts["num_gpus"] == 1 and opts["resources"] == {"bench_slot": 1} and opts["max_retries"] == 0
    assert "resources" not in mb.bench_task_options(gpu=True, cluster_resources={"GPU": 1.0})
    assert mb.node_resources(1) == {"bench_slot": 1} and mb.node_resources(0) == {}
    assert mb.node_resources(4) == {"bench_slot": 4}             # one slot per GPU


def test_ray_isolation_and_the_driver_side_service(tmp_path):
    """One logical GPU and one bench slot: proxies hold GPU fractions and overlap each other;
    benchmark tasks take the whole GPU and the slot, so their intervals overlap nothing. The
    service seeds each task with the cached records and stores what the task timed."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("a Ray cluster is already running in this process")

    def interval(request):            # nested: Ray ships it by value (test modules are not importable there)
        start = time.time()
        time.sleep(request["sleep"])
        return {"kind": "proxy", "start": start, "end": time.time()}

    def fake_benchmark(request):
        from attnsearch.storage.bench_cache import BenchKey, BenchStats, MemoryBenchCache

        start = time.time()
        cache = MemoryBenchCache(request["known"])
        key = BenchKey(gpu="FakeGPU", versions={}, op="mixer.train", mechanism={"m": request["arch"]["name"]},
                       shape={}, dtype="bf16")
        cache.get_or_time(key, lambda: time.sleep(0.2) or BenchStats(2.0, 1.9, 2.1, 5))
        comp = {"tokens_per_s": {"train": 1000.0, "prefill": 3000.0, "decode": 50.0}, "step_ms": {"train": 2.0}}
        return {"result": {"tokens_per_s": 1000.0, "detail": {"gpu": "FakeGPU", "composition": comp}},
                "new_records": cache.new_records(), "hits": cache.hits, "misses": cache.misses,
                "started_at": start, "ended_at": time.time()}

    ray.init(num_cpus=2, num_gpus=1, resources=mb.node_resources(1), include_dashboard=False,
             log_to_driver=False, configure_logging=False)
    try:
        url = f"sqlite:///{tmp_path / 'svc.db'}"
        service = mb.MeasuredThroughputService(url, seq_len=64, task=fake_benchmark, tune=False)
        proxy = ray.remote(interval).options(num_cpus=0, num_gpus=0.25, max_retries=0)
        bench = ray.remote(interval).options(**{**mb.bench_task_options(gpu=True), "num_cpus": 0})
        assert mb.bench_task_options(gpu=True)["resources"] == {"bench_slot": 1}
        raw = [bench.remote({"sleep": 0.3}) for _ in range(2)]       # two benchmarks asked at once
        refs = [proxy.remote({"sleep": 0.5}) for _ in range(3)]
        first = service(tiny_arch(["full"]).model_copy(update={"name": "a"}))
        refs += [proxy.remote({"sleep": 0.5}) for _ in range(3)]
        second = service(tiny_arch(["full"]).model_copy(update={"name": "a"}))
        proxies = ray.get(refs, timeout=120)
        raw = ray.get(raw, timeout=120)
    finally:
        ray.shutdown()
    assert first["throughput"] == 1000.0 and first["throughput_mode"] == "measured"
    assert first["decode_tokens_per_s"] == 50.0
    assert (first["bench_cache_misses"], second["bench_cache_hits"]) == (1, 1)
    assert service.hit_rate == 0.5 and len(service.db) == 1        # the driver side stored the record

    def overlap(a, b):
        return a[0] < b[1] and b[0] < a[1]

    spans = [(p["start"], p["end"]) for p in proxies]
    benches = service.intervals + [(r["start"], r["end"]) for r in raw]
    assert len(benches) == 4
    assert not any(overlap(a, b) for i, a in enumerate(benches) for b in benches[i + 1:])
    for bench in benches:
        assert not any(overlap(bench, p) for p in spans), "a benchmark shared its GPU with a proxy"
    assert any(overlap(a, b) for i, a in enumerate(spans) for b in spans[i + 1:])   # proxies do share


def test_decode_keys_name_how_decode_was_timed():
    arch = ArchConfig.from_layout("FS", layer_params={"sliding_window": {"window": 4}}, d_model=16, n_heads=2,
                                  head_dim=8, vocab_size=32, max_seq_len=64)
    shape = mb.TargetShape.from_target(64, 64, "fp32")
    gpu = {"gpu": "NVIDIA H200", "versions": {"torch": "x"}}
    cpu = {"gpu": "cpu", "versions": {"torch": "x"}}
    assert (mb.decode_timing(gpu), mb.decode_timing(cpu)) == ("cuda_graph", "eager")
    for key_of in (lambda env, p: mb.mixer_key(env, arch, arch.layers[1], p, shape),
                   lambda env, p: mb.dense_key(env, arch, p, shape),
                   lambda env, p: mb.head_key(env, arch, p, shape)):
        assert key_of(gpu, "decode").op.endswith(".decode[cuda_graph]")
        assert key_of(cpu, "decode").op.endswith(".decode[eager]")
        assert key_of(gpu, "train").op.endswith(".train")          # only decode is replayed from a graph
        # the timing method is in the op itself, not only implied by the GPU name
        assert key_of(gpu, "decode").op != key_of(cpu, "decode").op


def test_captured_replays_one_recorded_step(monkeypatch):
    """``captured`` warms ``fn`` on a side stream, records it once in a CUDA graph and returns a
    plain callable that replays that graph (CUDA stand-ins here: the CPU has no graphs)."""
    import contextlib

    import torch

    log = []

    class FakeGraph:
        def replay(self):
            log.append("replay")

    class FakeStream:
        def wait_stream(self, other):
            log.append("wait")

    @contextlib.contextmanager
    def recording(graph):
        log.append("capture-start")
        yield
        log.append("capture-end")

    monkeypatch.setattr(torch.cuda, "Stream", FakeStream)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", recording)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", FakeStream)
    replay = mb.captured(lambda: log.append("step"))
    assert log == ["wait", "step", "step", "wait", "capture-start", "step", "capture-end"]
    log.clear()
    replay()
    replay()
    assert log == ["replay", "replay"]                  # replays never run the Python step again
