"""`attnsearch cache list|clear` and `attnsearch tune` (the tuner itself is swapped for a fake:
real tuning needs a GPU and runs in benchmarks/tune_h200.py)."""
import json

import pytest
from typer.testing import CliRunner

from attnsearch import cli_tune
from attnsearch.cli import app
from attnsearch.space import ArchConfig
from attnsearch.storage.bench_cache import BenchCache, BenchKey, BenchStats

runner = CliRunner()
VERSIONS = {"torch": "2.11.0", "triton": "3.6.0", "attnsearch": "0.1.0"}


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'cli.db'}"


def _fill(url):
    cache = BenchCache(url)
    for gpu, op, ms in (("NVIDIA H200", "mixer.train", 1.25), ("NVIDIA H200", "dense.train", 0.5),
                        ("NVIDIA H100", "mixer.train", 2.0)):
        cache.put(BenchKey(gpu=gpu, versions=VERSIONS, op=op, mechanism={"mechanism": "full", "params": {}},
                           shape={"batch": 1, "seq_len": 4096}, dtype="bf16", config={"BLOCK_M": 128}),
                  BenchStats(ms, ms * 0.9, ms * 1.1, 50))
    return cache


def test_cache_list_and_json(url):
    result = runner.invoke(app, ["cache", "list", "--storage", url])
    assert result.exit_code == 0 and "empty" in result.output
    _fill(url)
    result = runner.invoke(app, ["cache", "list", "--storage", url])
    assert result.exit_code == 0, result.output
    assert "3 entries" in result.output and "NVIDIA H100" in result.output and "1.25" in result.output
    result = runner.invoke(app, ["cache", "list", "--storage", url, "--gpu", "NVIDIA H200", "--op", "mixer.train",
                                 "--json"])
    rows = json.loads(result.output)
    assert [(r["gpu"], r["op"], r["median_ms"]) for r in rows] == [("NVIDIA H200", "mixer.train", 1.25)]


def test_cache_clear_with_filter_and_confirmation(url):
    _fill(url)
    result = runner.invoke(app, ["cache", "clear", "--storage", url, "--gpu", "NVIDIA H100"], input="n\n")
    assert result.exit_code == 1 and len(BenchCache(url)) == 3
    result = runner.invoke(app, ["cache", "clear", "--storage", url, "--gpu", "NVIDIA H100", "--yes"])
    assert result.exit_code == 0 and "deleted 1 entry" in result.output
    result = runner.invoke(app, ["cache", "clear", "--storage", url, "-y"])
    assert "deleted 2 entries" in result.output and len(BenchCache(url)) == 0


def test_cache_bad_storage_url_is_one_line():
    result = runner.invoke(app, ["cache", "list", "--storage", "mysql://u@h/db"])
    assert result.exit_code == 1 and "not supported" in result.output and "Traceback" not in result.output


def _config(tmp_path):
    arch = ArchConfig.from_layout("SSN", d_model=64, n_heads=2, head_dim=32, max_seq_len=1024)
    path = tmp_path / "arch.json"
    arch.to_json(path)
    return arch, path


def test_tune_writes_tuned_json_and_prints_the_table(tmp_path, url, monkeypatch):
    arch, path = _config(tmp_path)
    seen = {}

    def fake_tune_arch(a, seq_len, batch_tokens, dtype, *, cache, n_trials, progress, time_budget_s):
        seen.update(seq_len=seq_len, batch_tokens=batch_tokens, dtype=dtype, n_trials=n_trials,
                    cache_url=cache.url, budget=time_budget_s)
        configs = [{"BLOCK_M": 64, "BLOCK_N": 64}, {"BLOCK_M": 64, "BLOCK_N": 64}, {"chunk_size": 32, "BLOCK_V": 64}]
        tuned = a.with_layers([{**l.model_dump(), "kernel_config": c} for l, c in zip(a.layers, configs)])
        stats = {"median_ms": 2.0, "p20_ms": 1.9, "p80_ms": 2.1, "count": 10}
        ops = {json.dumps({"mechanism": "sliding_window", "params": {}}): {
            "op": "softmax_attention", "method": "tpe", "space_size": 390625, "n_timed": 24, "n_skipped": 3,
            "default_stats": stats, "best_stats": {**stats, "median_ms": 1.0}, "speedup": 2.0,
            "check": {"ok": True, "rel_err": 0.004}}}
        progress("sliding_window: tpe")
        return {"arch": tuned, "kernel_configs": configs, "ops": ops, "batch": 4, "seq_len": seq_len}

    monkeypatch.setattr(cli_tune, "tune_arch", fake_tune_arch)
    out = tmp_path / "tuned.json"
    result = runner.invoke(app, ["tune", str(path), "--seq-len", "512", "--batch-tokens", "2048",
                                 "--storage", url, "--out", str(out), "--trials", "8", "--budget-s", "30",
                                 "--report", str(tmp_path / "search.json")])
    assert result.exit_code == 0, result.output
    assert seen == {"seq_len": 512, "batch_tokens": 2048, "dtype": "bf16", "n_trials": 8, "cache_url": url,
                    "budget": 30.0}
    report = json.loads((tmp_path / "search.json").read_text())
    assert report["seq_len"] == 512 and report["budget_s"] == 30.0
    assert [r["speedup"] for r in report["ops"].values()] == [2.0]
    tuned = ArchConfig.from_json(out)
    assert tuned.layers[2].kernel_config == {"chunk_size": 32, "BLOCK_V": 64}
    assert tuned.layers[0].params == arch.layers[0].params
    assert "x2.00" in result.output and "ok" in result.output and f"wrote {out}" in result.output
    # default output path and default sequence length (the config's max_seq_len)
    result = runner.invoke(app, ["tune", str(path), "--storage", url])
    assert result.exit_code == 0 and seen["seq_len"] == 1024
    assert (tmp_path / "arch.tuned.json").is_file()


def test_tune_rejects_bad_input_with_one_line(tmp_path, url):
    _, path = _config(tmp_path)
    result = runner.invoke(app, ["tune", str(tmp_path / "missing.json"), "--storage", url])
    assert result.exit_code == 1 and "no such config file" in result.output
    result = runner.invoke(app, ["tune", str(path), "--seq-len", "4096", "--storage", url])
    assert result.exit_code == 1 and "--seq-len must be in [2, 1024]" in result.output
    result = runner.invoke(app, ["tune", str(path), "--seq-len", "512", "--batch-tokens", "100", "--storage", url])
    assert result.exit_code == 1 and "--batch-tokens" in result.output
    result = runner.invoke(app, ["tune", str(path), "--dtype", "int8", "--storage", url])
    assert result.exit_code == 1 and "--dtype" in result.output
    result = runner.invoke(app, ["tune", str(path), "--budget-s", "0", "--storage", url])
    assert result.exit_code == 1 and "--budget-s must be a positive number" in result.output


def test_tune_without_a_gpu_says_so(tmp_path, url):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    _, path = _config(tmp_path)
    result = runner.invoke(app, ["tune", str(path), "--storage", url])
    assert result.exit_code == 1 and "needs a CUDA GPU" in result.output
