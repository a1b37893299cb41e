"""Benchmark cache: key composition, hit/miss, never re-timing a stored key, list/clear."""
import sqlalchemy as sa

import pytest

from attnsearch.storage import get_engine
from attnsearch.storage.bench_cache import (BenchCache, BenchKey, BenchStats, MemoryBenchCache,
                                            canonical_json, stats_from_samples)

VERSIONS = {"torch": "2.11.0", "triton": "3.6.0", "attnsearch": "0.1.0"}


def key(**changes) -> BenchKey:
    base = dict(gpu="NVIDIA H200", versions=dict(VERSIONS), op="softmax_attention",
                mechanism={"mechanism": "sliding_window", "params": {"window": 512}},
                shape={"batch": 2, "seq_len": 4096, "n_heads": 8, "head_dim": 64}, dtype="bf16",
                config={"BLOCK_M": 128, "BLOCK_N": 64})
    base.update(changes)
    return BenchKey(**base)


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path / 'cache.db'}"


def test_canonical_json_ignores_dict_order():
    a = key(config={"BLOCK_M": 128, "BLOCK_N": 64}, shape={"seq_len": 4096, "batch": 2, "n_heads": 8, "head_dim": 64})
    b = key(config={"BLOCK_N": 64, "BLOCK_M": 128})
    assert a.canonical() == b.canonical() and a.digest() == b.digest()
    assert canonical_json({"b": 1, "a": (1, 2)}) == '{"a":[1,2],"b":1}'


@pytest.mark.parametrize("change", [
    {"gpu": "NVIDIA H100 80GB HBM3"},
    {"versions": {**VERSIONS, "torch": "2.12.0"}},
    {"versions": {**VERSIONS, "triton": "3.7.0"}},
    {"versions": {**VERSIONS, "attnsearch": "0.2.0"}},
    {"op": "mixer.train"},
    {"mechanism": {"mechanism": "sliding_window", "params": {"window": 1024}}},
    {"shape": {"batch": 4, "seq_len": 4096, "n_heads": 8, "head_dim": 64}},
    {"dtype": "fp16"},
    {"config": {"BLOCK_M": 64, "BLOCK_N": 64}},
    {"config": {}},
])
def test_every_key_part_changes_the_digest(change):
    assert key(**change).digest() != key().digest()


def test_stats_from_samples_median_and_spread():
    s = stats_from_samples([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median_ms, s.p20_ms, s.p80_ms, s.count) == (3.0, 2.0, 4.0, 5)
    assert s.spread_ms == 2.0
    with pytest.raises(ValueError, match="at least one"):
        stats_from_samples([])
    with pytest.raises(ValueError, match="median_ms"):
        BenchStats(float("nan"), 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="gpu"):
        key(gpu="")


def test_db_cache_hit_miss_and_no_retiming(url):
    cache = BenchCache(url)
    calls = []

    def measure():
        calls.append(1)
        return BenchStats(1.5, 1.4, 1.6, 100)

    stats, hit = cache.get_or_time(key(), measure)
    assert not hit and stats.median_ms == 1.5 and len(calls) == 1
    stats, hit = cache.get_or_time(key(config={"BLOCK_N": 64, "BLOCK_M": 128}), measure)
    assert hit and stats == BenchStats(1.5, 1.4, 1.6, 100) and len(calls) == 1
    # a different GPU or version misses and is timed
    _, hit = cache.get_or_time(key(gpu="NVIDIA H100"), measure)
    assert not hit and len(calls) == 2
    _, hit = cache.get_or_time(key(versions={**VERSIONS, "triton": "3.7.0"}), measure)
    assert not hit and len(calls) == 3
    assert (cache.hits, cache.misses) == (1, 3) and cache.hit_rate == 0.25
    # storing a key that is already there keeps the first timing
    assert cache.put(key(), BenchStats(9.0, 9.0, 9.0, 1)) is False
    assert BenchCache(url).get(key()).median_ms == 1.5
    assert len(cache) == 3


def test_db_cache_list_clear_and_round_trip(url):
    cache = BenchCache(url)
    cache.put(key(), BenchStats(1.0, 0.9, 1.1, 10))
    cache.put(key(op="mixer.train"), BenchStats(2.0, 1.9, 2.1, 10))
    cache.put(key(gpu="NVIDIA H100"), BenchStats(3.0, 2.9, 3.1, 10))
    rows = cache.rows()
    assert [r["op"] for r in rows] == ["softmax_attention", "mixer.train", "softmax_attention"]
    assert rows[0]["config"] == {"BLOCK_M": 128, "BLOCK_N": 64} and rows[0]["triton"] == "3.6.0"
    assert len(cache.rows(gpu="NVIDIA H100")) == 1
    # records seed a memory cache that then hits without timing
    mem = MemoryBenchCache(cache.records())
    assert mem.lookup(key(op="mixer.train")).median_ms == 2.0 and mem.hits == 1
    assert cache.clear(gpu="NVIDIA H100") == 1
    assert cache.clear(op="mixer.train") == 1
    assert cache.clear() == 1 and len(cache) == 0


def test_table_created_idempotently_beside_the_other_tables(url):
    BenchCache(url)
    BenchCache(url)
    names = set(sa.inspect(get_engine(url)).get_table_names())
    assert {"attnsearch_bench_cache", "attnsearch_schema"} <= names


def test_memory_cache_returns_only_new_records_which_the_driver_stores(url):
    seeded = [{"key": key().to_dict(), "stats": BenchStats(1.0, 1.0, 1.0, 3).to_dict()}]
    mem = MemoryBenchCache(seeded)
    mem.get_or_time(key(), lambda: pytest.fail("a seeded key must not be timed"))
    mem.get_or_time(key(dtype="fp32"), lambda: BenchStats(4.0, 3.0, 5.0, 7))
    new = mem.new_records()
    assert len(new) == 1 and new[0]["key"]["dtype"] == "fp32"
    db = BenchCache(url)
    assert db.store_records(new) == 1 and db.store_records(new) == 0
    assert db.get(key(dtype="fp32")) == BenchStats(4.0, 3.0, 5.0, 7)



@pytest.mark.postgres
def test_two_machines_share_the_cache_through_postgres(pg_url):
    import uuid

    gpu = f"test-gpu-{uuid.uuid4().hex[:8]}"          # private rows: the database may be shared
    a, b = BenchCache(pg_url), BenchCache(pg_url)
    try:
        assert a.put(key(gpu=gpu), BenchStats(1.0, 0.9, 1.1, 5)) is True
        assert b.put(key(gpu=gpu), BenchStats(7.0, 7.0, 7.0, 1)) is False     # the first timing stays
        stats, hit = b.get_or_time(key(gpu=gpu), lambda: pytest.fail("must not time a shared key again"))
        assert hit and stats.median_ms == 1.0
        assert [r["gpu"] for r in b.rows(gpu=gpu)] == [gpu]
    finally:
        assert a.clear(gpu=gpu) == 1
