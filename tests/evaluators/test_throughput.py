import pytest

from attnsearch.evaluators import throughput as tp
from attnsearch.space.catalogue import mechanism
from attnsearch.space.presets import preset

TARGET = dict(d_model=2048, n_layers=24, n_heads=16, head_dim=128, vocab_size=32000, max_seq_len=32768)


def test_gpu_table_has_the_required_parts():
    for name in ("H100", "H200", "A100", "L40S"):
        g = tp.gpu(name)
        assert g.bf16_flops > 1e14 and g.bandwidth > 5e11
    assert tp.gpu("H200").bandwidth > tp.gpu("H100").bandwidth
    with pytest.raises(ValueError, match="unknown GPU 'V100'.*allowed: H100"):
        tp.gpu("V100")


def test_estimate_is_labelled_and_ranks_long_context_layouts():
    results = {n: tp.estimate_throughput(preset(n, **TARGET), 32768, 524288, "H100")
               for n in ("transformer", "gemma3", "jamba", "linear")}
    assert all(r.mode == "estimated" and r.detail["gpu"] == "H100" for r in results.values())
    # at 32k context, quadratic attention is the slowest; pure linear the fastest
    assert results["transformer"].tokens_per_s < results["gemma3"].tokens_per_s < results["linear"].tokens_per_s
    assert results["transformer"].tokens_per_s < results["jamba"].tokens_per_s
    r = results["gemma3"]
    assert r.batch == 16 and r.seq_len == 32768
    assert r.tokens_per_s == pytest.approx(r.batch * r.seq_len / r.step_time_s)


def test_roofline_by_hand_for_one_layer():
    # one full-attention layer: the step is the sum of max(flops/peak, bytes/bw) of its parts, x3
    arch = preset("transformer", **{**TARGET, "n_layers": 1})
    hw = tp.gpu("A100")
    r = tp.estimate_throughput(arch, 4096, 4096, "A100")
    c = mechanism("full").cost(arch, {}, 4096, 1)
    mixer = 3 * max(c.flops / (hw.bf16_flops * tp.MATMUL_EFFICIENCY), c.bytes / (hw.bandwidth * tp.BANDWIDTH_EFFICIENCY))
    assert r.detail["mixer_s"][0] == pytest.approx(mixer)
    assert r.step_time_s == pytest.approx(mixer + r.detail["mlp_s"] + r.detail["norms_s"] + r.detail["embed_head_s"])


def test_faster_gpu_is_faster_and_fp32_is_slower():
    arch = preset("qwen3_next", **TARGET)
    h100 = tp.estimate_throughput(arch, 8192, 65536, "H100").tokens_per_s
    assert tp.estimate_throughput(arch, 8192, 65536, "A100").tokens_per_s < h100
    assert tp.estimate_throughput(arch, 8192, 65536, "H100", "fp32").tokens_per_s < h100


def test_measured_cpu_times_forward_and_backward():
    arch = preset("qwen3_next", d_model=64, n_layers=2, n_heads=2, head_dim=32, vocab_size=100, max_seq_len=64)
    r = tp.evaluate_throughput(arch, "measured-cpu", seq_len=32, cpu_batch=2)
    assert r.mode == "measured-cpu" and r.tokens_per_s > 0 and r.batch == 2 and r.seq_len == 32
    assert len(r.detail["step_times_s"]) == 3


def test_measured_gpu_is_a_clear_seam():
    arch = preset("transformer", **{**TARGET, "n_layers": 2})
    # without a GPU (here), 'measured' is a clear error, whether the GPU microbenchmark module has
    # registered itself or the placeholder is still in place
    with pytest.raises(ValueError, match="'measured'"):
        tp.evaluate_throughput(arch, "measured", seq_len=1024)
    with pytest.raises(ValueError, match="throughput mode 'fast' not allowed"):
        tp.evaluate_throughput(arch, "fast", seq_len=1024)
    seen = {}

    def fake(arch, seq_len, **kw):
        seen.update(kw, seq_len=seq_len)
        return tp.ThroughputResult(1.0, "measured", 1.0, 1, seq_len)
    old = tp._MODES["measured"]
    tp.register_mode("measured", fake)
    try:
        assert tp.evaluate_throughput(arch, "measured", seq_len=1024, gpu_name="H200").mode == "measured"
        assert seen["gpu_name"] == "H200" and seen["seq_len"] == 1024
    finally:
        tp.register_mode("measured", old)
