import uuid

import pytest
import sqlalchemy as sa

from attnsearch import storage
from attnsearch.storage import tables



def _our_tables(engine):
    return {t for t in sa.inspect(engine).get_table_names() if t.startswith("attnsearch_")}


def test_sqlite_engine_has_wal_busy_timeout_and_our_tables(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    engine = storage.get_engine(url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar().lower() == "wal"
        assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar() == storage.SQLITE_BUSY_TIMEOUT_S * 1000
    assert {"attnsearch_schema", "attnsearch_driver", "attnsearch_study_event"} <= _our_tables(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM attnsearch_schema")).scalars().all() == [tables.SCHEMA_VERSION]


def test_optuna_and_our_tables_share_one_url_and_creation_is_idempotent(tmp_path):
    url = f"sqlite:///{tmp_path / 'b.db'}"
    st = storage.optuna_storage(url)
    assert st is storage.optuna_storage(url)
    engine = storage.get_engine(url)
    names = set(sa.inspect(engine).get_table_names())
    assert {"studies", "trials", "attnsearch_schema"} <= names
    storage._schema_ready.clear()       # force the creation path again
    storage.init_schema(engine, url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM attnsearch_schema")).scalar() == 1
    # Optuna's own connections got the pragmas too
    with st.engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA busy_timeout")).scalar() == storage.SQLITE_BUSY_TIMEOUT_S * 1000


def test_newer_schema_version_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = storage.get_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE attnsearch_schema SET version = :v"), {"v": tables.SCHEMA_VERSION + 1})
    storage._schema_ready.discard(url)
    with pytest.raises(storage.StorageError, match="newer"):
        storage.init_schema(engine, url)


def test_claim_event_happens_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    assert storage.claim_event(url, "s", "baselines_enqueued")
    assert not storage.claim_event(url, "s", "baselines_enqueued")
    assert storage.claim_event(url, "other", "baselines_enqueued")
    storage.forget_study(url, "s")
    assert storage.claim_event(url, "s", "baselines_enqueued")


@pytest.mark.parametrize("url, match", [
    ("not a url", "not a database URL"),
    ("mysql://u:secret@h/db", "not supported"),
    ("postgresql+pg8000://u:secret@h/db", "psycopg"),
    ("sqlite://", "SQLite file"),
])
def test_bad_urls_are_one_line_errors_without_password(url, match):
    with pytest.raises(storage.StorageError, match=match) as info:
        storage.get_engine(url)
    assert "secret" not in str(info.value)
    assert "\n" not in str(info.value)


def test_unreachable_sqlite_directory_is_a_clear_error(tmp_path):
    with pytest.raises(storage.StorageError, match="cannot open storage"):
        storage.get_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")


def test_unreachable_postgres_hides_the_password():
    with pytest.raises(storage.StorageError) as info:
        storage.get_engine("postgresql+psycopg://u:topsecret@127.0.0.1:1/db")
    assert "topsecret" not in str(info.value) and "***" in str(info.value)


def test_redact_url():
    assert storage.redact_url("postgresql+psycopg://a:pw@h:5432/db") == "postgresql+psycopg://a:***@h:5432/db"
    assert storage.redact_url("sqlite:///x.db") == "sqlite:///x.db"


def test_resolve_url_precedence(monkeypatch):
    monkeypatch.delenv("ATTNSEARCH_STORAGE", raising=False)
    assert storage.resolve_url(None) == "sqlite:///attnsearch.db"
    monkeypatch.setenv("ATTNSEARCH_STORAGE", "sqlite:///env.db")
    assert storage.resolve_url(None) == "sqlite:///env.db"
    assert storage.resolve_url("sqlite:///arg.db") == "sqlite:///arg.db"


@pytest.mark.postgres
def test_postgres_engine_pool_tables_and_events(pg_url):
    engine = storage.get_engine(pg_url)
    assert engine.pool.size() == storage.POSTGRES_POOL["pool_size"]
    assert engine.dialect.driver == "psycopg"
    assert {"attnsearch_schema", "attnsearch_driver", "attnsearch_study_event"} <= _our_tables(engine)
    st = storage.optuna_storage(pg_url)
    assert "studies" in sa.inspect(st.engine).get_table_names()
    name = f"pg-event-{uuid.uuid4().hex[:8]}"
    assert storage.claim_event(pg_url, name, "e")
    assert not storage.claim_event(pg_url, name, "e")
    storage.forget_study(pg_url, name)
