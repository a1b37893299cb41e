"""Benchmark cache: one timing per (GPU, software versions, op, mechanism params, shape, dtype,
kernel config), kept in the same database as everything else.

A key is a :class:`BenchKey`; its canonical JSON (sorted keys, no spaces) is stored beside a
SHA-256 of it, and the hash is unique: a key already in the table is never timed again, and two
drivers racing to store the same key keep the first row. Studies on many machines share the
table through PostgreSQL.

Two caches with one interface (``get``, ``put``, ``get_or_time``, ``hits``/``misses``):

- :class:`BenchCache`: the table in the database at a storage URL (the driver, the ``tune`` and
  ``cache`` commands, benchmarks).
- :class:`MemoryBenchCache`: a dict, seeded from plain records (a Ray task gets the records the
  driver knows, times only what is missing, and returns the new records for the driver to
  store: workers never write the database).
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Callable, Iterable

import sqlalchemy as sa
from sqlalchemy import JSON, DateTime, Float, Integer, String, Text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from .tables import Base

__all__ = ["BenchKey", "BenchStats", "BenchRecord", "BenchCache", "MemoryBenchCache", "canonical_json",
           "software_versions", "current_gpu_name", "ensure_table", "stats_from_samples"]


def canonical_json(value) -> str:
    """Deterministic JSON: sorted keys, no spaces, tuples as lists (equal dicts -> equal text)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _jsonable(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"benchmark key value {value!r} ({type(value).__name__}) is not JSON-serialisable")


@dataclass(frozen=True)
class BenchKey:
    """Everything a timing depends on. ``versions`` holds torch, triton and attnsearch versions."""
    gpu: str
    versions: dict
    op: str                                  # e.g. "softmax_attention", "mixer.train", "dense.decode"
    mechanism: dict                          # {"mechanism": name, "params": {...}} ({} for dense parts)
    shape: dict                              # dims, batch, seq_len, ...
    dtype: str
    config: dict = field(default_factory=dict)   # kernel config ({} = the backend's defaults)

    def __post_init__(self):
        for name in ("gpu", "op", "dtype"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"BenchKey.{name} must be a non-empty string, got {getattr(self, name)!r}")
        for name in ("versions", "mechanism", "shape", "config"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"BenchKey.{name} must be a dict, got {type(getattr(self, name)).__name__}")

    def to_dict(self) -> dict:
        return asdict(self)

    def canonical(self) -> str:
        return canonical_json(self.to_dict())

    def digest(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()

    def config_key(self) -> str:
        return canonical_json(self.config)


@dataclass(frozen=True)
class BenchStats:
    """A timing in milliseconds: median and spread (20th and 80th percentile) over ``count`` runs."""
    median_ms: float
    p20_ms: float
    p80_ms: float
    count: int

    def __post_init__(self):
        for name in ("median_ms", "p20_ms", "p80_ms"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"BenchStats.{name} must be a finite time >= 0 ms, got {value!r}")
        if not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"BenchStats.count must be a positive integer, got {self.count!r}")

    @property
    def spread_ms(self) -> float:
        return self.p80_ms - self.p20_ms

    def to_dict(self) -> dict:
        return asdict(self)


def stats_from_samples(samples_ms: Iterable[float]) -> BenchStats:
    """Median and 20/80th percentiles (nearest rank on the sorted samples)."""
    xs = sorted(float(x) for x in samples_ms)
    if not xs:
        raise ValueError("samples_ms must hold at least one timing")

    def pct(p):
        return xs[min(len(xs) - 1, max(0, int(round(p * (len(xs) - 1)))))]

    return BenchStats(statistics.median(xs), pct(0.2), pct(0.8), len(xs))


class BenchRecord(Base):
    """One cached timing (see the module docstring)."""

    __tablename__ = "attnsearch_bench_cache"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    gpu: Mapped[str] = mapped_column(String(128), index=True)
    torch_version: Mapped[str] = mapped_column(String(64))
    triton_version: Mapped[str] = mapped_column(String(64))
    attnsearch_version: Mapped[str] = mapped_column(String(64))
    op: Mapped[str] = mapped_column(String(64), index=True)
    mechanism: Mapped[dict] = mapped_column(JSON)
    shape: Mapped[dict] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(16))
    config_key: Mapped[str] = mapped_column(Text)
    key_json: Mapped[str] = mapped_column(Text)
    median_ms: Mapped[float] = mapped_column(Float)
    p20_ms: Mapped[float] = mapped_column(Float)
    p80_ms: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)

    def stats(self) -> BenchStats:
        return BenchStats(self.median_ms, self.p20_ms, self.p80_ms, self.count)

    def to_row(self) -> dict:
        return {"key_hash": self.key_hash, "gpu": self.gpu, "torch": self.torch_version,
                "triton": self.triton_version, "attnsearch": self.attnsearch_version, "op": self.op,
                "mechanism": self.mechanism, "shape": self.shape, "dtype": self.dtype,
                "config": json.loads(self.config_key), "median_ms": self.median_ms, "p20_ms": self.p20_ms,
                "p80_ms": self.p80_ms, "count": self.count,
                "created_at": self.created_at.isoformat() if self.created_at else None}


def ensure_table(engine) -> None:
    """Create the cache table if missing (idempotent; also when the shared schema was created
    before this module was imported)."""
    BenchRecord.__table__.create(engine, checkfirst=True)


# ----------------------------------------------------------------------------- environment

def software_versions() -> dict:
    """torch, triton and attnsearch versions (part of every key: a new release re-times)."""
    import importlib.metadata as md

    import attnsearch

    out = {"attnsearch": attnsearch.__version__}
    for pkg in ("torch", "triton"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "none"
    return out


def current_gpu_name(device=None) -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    return torch.cuda.get_device_name(device)


# ----------------------------------------------------------------------------- caches

class _CacheBase:
    """Hit/miss bookkeeping shared by both caches."""

    def __init__(self):
        self.hits = 0
        self.misses = 0

    def get(self, key: BenchKey) -> BenchStats | None:
        raise NotImplementedError

    def put(self, key: BenchKey, stats: BenchStats) -> bool:
        raise NotImplementedError

    def lookup(self, key: BenchKey) -> BenchStats | None:
        """get() that counts a hit or a miss."""
        found = self.get(key)
        if found is None:
            self.misses += 1
        else:
            self.hits += 1
        return found

    def get_or_time(self, key: BenchKey, measure: Callable[[], BenchStats]) -> tuple[BenchStats, bool]:
        """(stats, hit): the cached timing, or ``measure()`` stored under the key."""
        found = self.lookup(key)
        if found is not None:
            return found, True
        stats = measure()
        self.put(key, stats)
        return stats, False

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


def _record_dict(key: BenchKey, stats: BenchStats) -> dict:
    return {"key": key.to_dict(), "stats": stats.to_dict()}


def _key_from_dict(d: dict) -> BenchKey:
    return BenchKey(**d)


class MemoryBenchCache(_CacheBase):
    """In-process cache; ``new_records()`` are the timings made here (plain dicts)."""

    def __init__(self, records: Iterable[dict] = ()):
        super().__init__()
        self._known: dict[str, BenchStats] = {}
        self._new: dict[str, dict] = {}
        for rec in records:
            key = _key_from_dict(rec["key"])
            self._known[key.digest()] = BenchStats(**rec["stats"])

    def get(self, key):
        return self._known.get(key.digest())

    def put(self, key, stats):
        digest = key.digest()
        if digest in self._known:
            return False
        self._known[digest] = stats
        self._new[digest] = _record_dict(key, stats)
        return True

    def new_records(self) -> list[dict]:
        return list(self._new.values())

    def __len__(self):
        return len(self._known)


class BenchCache(_CacheBase):
    """The cache table in the database at ``url`` (``None``: ``$ATTNSEARCH_STORAGE`` or the default)."""

    def __init__(self, url: str | None = None):
        super().__init__()
        from . import get_engine, resolve_url

        self.url = resolve_url(url)
        self.engine = get_engine(self.url)
        ensure_table(self.engine)

    def _session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def get(self, key):
        with self._session() as s:
            row = s.scalar(sa.select(BenchRecord).where(BenchRecord.key_hash == key.digest()))
            return None if row is None else row.stats()

    def put(self, key, stats) -> bool:
        """Store a timing; False when the key was already there (the first timing stays)."""
        from . import utcnow

        v = key.versions
        row = BenchRecord(key_hash=key.digest(), gpu=key.gpu, torch_version=str(v.get("torch", "")),
                          triton_version=str(v.get("triton", "")),
                          attnsearch_version=str(v.get("attnsearch", "")), op=key.op,
                          mechanism=key.mechanism, shape=key.shape, dtype=key.dtype,
                          config_key=key.config_key(), key_json=key.canonical(), median_ms=stats.median_ms,
                          p20_ms=stats.p20_ms, p80_ms=stats.p80_ms, count=stats.count, created_at=utcnow())
        with self._session() as s:
            if s.scalar(sa.select(BenchRecord.id).where(BenchRecord.key_hash == row.key_hash)) is not None:
                return False
            s.add(row)
            try:
                s.commit()
            except IntegrityError:          # another driver stored it a moment ago
                s.rollback()
                return False
        return True

    def store_records(self, records: Iterable[dict]) -> int:
        """Store plain records returned by workers; the number that were new."""
        return sum(self.put(_key_from_dict(r["key"]), BenchStats(**r["stats"])) for r in records)

    def records(self, gpu: str | None = None, op: str | None = None) -> list[dict]:
        """Every cached entry as {"key", "stats"} (what a MemoryBenchCache is seeded with)."""
        with self._session() as s:
            rows = s.scalars(self._select(gpu, op)).all()
            return [{"key": json.loads(r.key_json), "stats": r.stats().to_dict()} for r in rows]

    def rows(self, gpu: str | None = None, op: str | None = None) -> list[dict]:
        with self._session() as s:
            return [r.to_row() for r in s.scalars(self._select(gpu, op).order_by(BenchRecord.id)).all()]

    def clear(self, gpu: str | None = None, op: str | None = None) -> int:
        """Delete entries (all, or those of one GPU and/or op); the number deleted."""
        stmt = sa.delete(BenchRecord)
        if gpu is not None:
            stmt = stmt.where(BenchRecord.gpu == gpu)
        if op is not None:
            stmt = stmt.where(BenchRecord.op == op)
        with self._session() as s:
            n = s.execute(stmt).rowcount
            s.commit()
        return int(n or 0)

    def __len__(self):
        with self._session() as s:
            return int(s.scalar(sa.select(sa.func.count(BenchRecord.id))))

    @staticmethod
    def _select(gpu, op):
        stmt = sa.select(BenchRecord)
        if gpu is not None:
            stmt = stmt.where(BenchRecord.gpu == gpu)
        if op is not None:
            stmt = stmt.where(BenchRecord.op == op)
        return stmt
