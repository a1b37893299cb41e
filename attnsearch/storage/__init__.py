"""One database URL for everything: Optuna's tables and ours.

- ``resolve_url(url)``: the URL given, else ``$ATTNSEARCH_STORAGE``, else ``sqlite:///attnsearch.db``.
- ``get_engine(url)``: a SQLAlchemy 2 engine, one per URL per process. SQLite gets WAL mode
  (readers such as optuna-dashboard keep reading while the driver writes), a 30 s busy timeout
  and ``synchronous=NORMAL`` (safe against a killed process; only power loss can drop the last
  commits). PostgreSQL (``postgresql+psycopg://``) gets explicit pool settings and pre-ping, and
  every Optuna storage call is retried for up to ``RECONNECT_WINDOW_S`` while the connection is
  lost or refused, so a restarted server costs a reconnect instead of a dead driver
  (``with_reconnect`` does the same for our own writes).
- ``write_error(url, exc)``: a database error as one clear ``StorageError`` line (disk full,
  read-only, server gone), password hidden.
- ``optuna_storage(url)``: Optuna's ``RDBStorage`` on the same URL with the same settings.
- ``init_schema(engine)``: creates our tables idempotently and checks the schema version
  (``tables.py``: schema version, driver heartbeats, one-shot study events; the kernel
  benchmark cache of ``bench_cache.py`` shares the same declarative base and version).
- ``redact_url(url)``: the URL with its password hidden, for every message and log line.

Only the search driver writes; Ray workers return plain dicts and never open the database.
"""
from __future__ import annotations

import functools
import os
import threading
import time
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (ArgumentError, DBAPIError, IntegrityError, InterfaceError, OperationalError,
                            PendingRollbackError, SQLAlchemyError)
from sqlalchemy.orm import Session

from .tables import SCHEMA_VERSION, Base, DriverRecord, SchemaInfo, StudyEvent

__all__ = [
    "DEFAULT_STORAGE_URL", "SCHEMA_VERSION", "StorageError", "resolve_url", "redact_url",
    "get_engine", "optuna_storage", "init_schema", "session", "claim_event", "utcnow",
    "DriverRecord", "StudyEvent", "SchemaInfo", "with_reconnect", "is_transient", "write_error",
    "RECONNECT_WINDOW_S",
]

DEFAULT_STORAGE_URL = "sqlite:///attnsearch.db"
SQLITE_BUSY_TIMEOUT_S = 30
# A driver holds at most a couple of connections; the headroom serves the dashboard-free CLI
# readers that share the process. pool_recycle bounds the life of a connection a server or a
# proxy may have silently dropped.
POSTGRES_POOL = dict(pool_size=4, max_overflow=4, pool_timeout=30, pool_recycle=1800,
                     pool_pre_ping=True)

# how long a PostgreSQL client keeps retrying while the server is away (a restart takes seconds)
RECONNECT_WINDOW_S = 60.0

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


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_transient(exc: BaseException) -> bool:
    """A lost or refused server connection (PostgreSQL restarting): worth retrying. SQLite errors
    never are (a full disk or a read-only file does not heal by waiting)."""
    for e in _causes(exc):
        if isinstance(e, DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (OperationalError, InterfaceError, PendingRollbackError)):
            return "sqlite" not in type(getattr(e, "orig", None) or e).__module__
    return False


def with_reconnect(fn, on_retry=None, window_s: float | None = None):
    """``fn`` retried with backoff while ``is_transient`` errors last (at most ``window_s``)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        deadline = time.monotonic() + (RECONNECT_WINDOW_S if window_s is None else window_s)
        delay = 0.2
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
                if on_retry is not None:
                    on_retry()
                time.sleep(delay)
                delay = min(2 * delay, 3.0)
    return call


def write_error(url: str, exc: BaseException) -> "StorageError":
    """A database failure during a study as one line: what the database said, and that the study
    can be resumed once the cause is fixed."""
    root = exc
    for e in _causes(exc):
        if isinstance(e, DBAPIError) and e.orig is not None:
            root = e.orig
            break
        root = e
    text = " ".join(str(root).split()) or type(root).__name__
    hint = ""
    low = text.lower()
    if "readonly" in low or "read-only" in low or "unable to open database file" in low:
        hint = " (the database file or its folder is read-only; SQLite also writes beside the file)"
    elif "full" in low:
        hint = " (no space left for the database)"
    return StorageError(f"storage {redact_url(url)!r}: {text[:300]}{hint}; completed trials are kept, "
                        "fix the cause and run again to resume")


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
        if "unable to open database file" in reason and _kind(url) == "sqlite":
            folder = os.path.dirname(os.path.abspath(make_url(url).database))
            if os.path.isdir(folder) and not os.access(folder, os.W_OK):
                reason += " (its folder is read-only: SQLite needs to write beside the database file)"
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
            else:
                _retry_storage_calls(storage)
            _optuna[url] = storage
    return storage


def _retry_storage_calls(storage) -> None:
    """Retry every public storage call across a lost server connection. Each RDBStorage call is
    one transaction, rolled back when the connection drops, so running it again is safe; the
    thread's broken session is dropped before the retry."""
    from optuna.storages import BaseStorage

    def reset():
        storage.scoped_session.remove()

    # the private ones are what Optuna's caching wrapper calls on the RDBStorage
    private = ("_create_new_trial", "_get_trials", "_set_trial_param", "_get_best_trial_id",
               "_get_stale_trial_ids")
    names = [n for n in dir(BaseStorage) if not n.startswith("_")] + list(private)
    for name in names:
        if callable(getattr(storage, name, None)):
            setattr(storage, name, with_reconnect(getattr(storage, name), on_retry=reset))


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
