"""One database URL for everything: Optuna's tables and ours.

- ``resolve_url(url)``: the URL given, else ``$ATTNSEARCH_STORAGE``, else ``sqlite:///attnsearch.db``.
- ``get_engine(url)``: a SQLAlchemy 2 engine, one per URL per process. SQLite gets WAL mode
  (readers such as optuna-dashboard keep reading while the driver writes), a 30 s busy timeout
  and ``synchronous=NORMAL`` (safe against a killed process; only power loss can drop the last
  commits). PostgreSQL (``postgresql+psycopg://``) gets explicit pool settings and pre-ping, so a
  restarted server costs a reconnect instead of a dead driver.
- ``optuna_storage(url)``: Optuna's ``RDBStorage`` on the same URL with the same settings.
- ``init_schema(engine)``: creates our tables idempotently and checks the schema version
  (``tables.py``: schema version, driver heartbeats, one-shot study events; the kernel
  benchmark cache of ``bench_cache.py`` shares the same declarative base and version).
- ``redact_url(url)``: the URL with its password hidden, for every message and log line.

Only the search driver writes; Ray workers return plain dicts and never open the database.
"""
from __future__ import annotations

import os
import threading
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from .tables import SCHEMA_VERSION, Base, DriverRecord, SchemaInfo, StudyEvent

__all__ = [
    "DEFAULT_STORAGE_URL", "SCHEMA_VERSION", "StorageError", "resolve_url", "redact_url",
    "get_engine", "optuna_storage", "init_schema", "session", "claim_event", "utcnow",
    "DriverRecord", "StudyEvent", "SchemaInfo",
]

DEFAULT_STORAGE_URL = "sqlite:///attnsearch.db"
SQLITE_BUSY_TIMEOUT_S = 30
# A driver holds at most a couple of connections; the headroom serves the dashboard-free CLI
# readers that share the process. pool_recycle bounds the life of a connection a server or a
# proxy may have silently dropped.
POSTGRES_POOL = dict(pool_size=4, max_overflow=4, pool_timeout=30, pool_recycle=1800,
                     pool_pre_ping=True)

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_optuna: dict[str, object] = {}
_schema_ready: set[str] = set()


class StorageError(ValueError):
    """The storage URL cannot be used; the message never contains a password."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def resolve_url(url: str | None = None) -> str:
    return url or os.environ.get("ATTNSEARCH_STORAGE") or DEFAULT_STORAGE_URL


def redact_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not even parseable: show only the scheme
        return url.split("://", 1)[0] + "://***" if "://" in url else "***"


def _kind(url: str) -> str:
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise StorageError(f"storage URL {redact_url(url)!r} is not a database URL "
                           "(allowed: sqlite:///PATH or postgresql+psycopg://USER:PASS@HOST/DB)") from None
    if backend not in ("sqlite", "postgresql"):
        raise StorageError(f"storage URL {redact_url(url)!r}: backend {backend!r} not supported "
                           "(allowed: sqlite, postgresql+psycopg)")
    return backend


def engine_kwargs(url: str) -> dict:
    """create_engine keyword arguments for this URL (shared by our engine and Optuna's)."""
    if _kind(url) == "sqlite":
        database = make_url(url).database
        if not database or database == ":memory:":
            raise StorageError("storage URL must name a SQLite file (sqlite:///PATH); an in-memory "
                               "database cannot be shared by the driver and the dashboard")
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    driver = make_url(url).get_driver_name()
    if driver != "psycopg":
        raise StorageError(f"storage URL {redact_url(url)!r}: use postgresql+psycopg:// "
                           f"(driver {driver!r} is not supported; pg8000 breaks past 32,767 trials)")
    return {**POSTGRES_POOL, "connect_args": {"connect_timeout": 10}}


def _sqlite_pragmas(dbapi_connection, _record):
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _prepare(engine: Engine, url: str) -> Engine:
    if _kind(url) == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _check_connect(engine: Engine, url: str) -> None:
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
        raise StorageError(f"cannot open storage {redact_url(url)!r}: {reason}") from None


def get_engine(url: str | None = None) -> Engine:
    """Our engine for this URL (cached per process); tables are created on first use."""
    url = resolve_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _prepare(sa.create_engine(url, **engine_kwargs(url)), url)
            _check_connect(engine, url)
            _engines[url] = engine
    init_schema(engine, url)
    return engine


def init_schema(engine: Engine, url: str | None = None) -> None:
    """Create our tables if missing and check the schema version (idempotent, race-safe)."""
    key = url or str(engine.url)
    if key in _schema_ready:
        return
    try:
        Base.metadata.create_all(engine)
    except SQLAlchemyError:
        # Another process created them between the check and the CREATE: fine if they exist now.
        Base.metadata.create_all(engine)
    with Session(engine) as s:
        row = s.get(SchemaInfo, 1)
        if row is None:
            try:
                s.add(SchemaInfo(id=1, version=SCHEMA_VERSION, created_at=utcnow()))
                s.commit()
            except IntegrityError:
                s.rollback()
                row = s.get(SchemaInfo, 1)
        if row is not None and row.version > SCHEMA_VERSION:
            raise StorageError(f"database schema version {row.version} is newer than this "
                               f"attnsearch understands ({SCHEMA_VERSION}); upgrade attnsearch")
    _schema_ready.add(key)


def optuna_storage(url: str | None = None):
    """Optuna's RDBStorage on the same URL (cached per process), our tables created too."""
    import optuna

    url = resolve_url(url)
    get_engine(url)  # validates the URL, sets WAL, creates our tables
    with _lock:
        storage = _optuna.get(url)
        if storage is None:
            try:
                storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
            except SQLAlchemyError as exc:
                raise StorageError(f"cannot open storage {redact_url(url)!r}: "
                                   f"{str(getattr(exc, 'orig', exc)).strip().splitlines()[0]}") from None
            if _kind(url) == "sqlite":
                # Optuna opened its first connection without our pragmas; from now on every
                # connection gets them.
                _prepare(storage.engine, url)
                storage.engine.dispose()
            _optuna[url] = storage
    return storage


def session(url: str | None = None) -> Session:
    return Session(get_engine(url), expire_on_commit=False)


def claim_event(url: str | None, study_name: str, event: str, detail: dict | None = None) -> bool:
    """Record a one-shot event for a study; True for the single caller that got there first."""
    with session(url) as s:
        if s.scalar(sa.select(StudyEvent.id).where(StudyEvent.study_name == study_name,
                                                    StudyEvent.event == event)) is not None:
            return False
        s.add(StudyEvent(study_name=study_name, event=event, created_at=utcnow(), detail=detail))
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            return False
    return True


def forget_study(url: str | None, study_name: str) -> None:
    """Delete our rows that belong to a study (Optuna's rows are deleted by Optuna)."""
    with session(url) as s:
        s.execute(sa.delete(StudyEvent).where(StudyEvent.study_name == study_name))
        s.execute(sa.delete(DriverRecord).where(DriverRecord.study_name == study_name))
        s.commit()
