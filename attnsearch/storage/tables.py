"""Our own tables, beside Optuna's in the same database (SQLAlchemy 2 declarative).

All names start with ``attnsearch_`` so they never collide with Optuna's tables. They are
created idempotently by :func:`attnsearch.storage.init_schema`; ``attnsearch_schema`` holds one
row with the schema version so a later release can migrate (or refuse) an older database.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, Integer, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = 1


class Base(DeclarativeBase):
    pass


class SchemaInfo(Base):
    """One row: the version of our tables in this database."""

    __tablename__ = "attnsearch_schema"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class DriverRecord(Base):
    """A search driver process working on a study.

    Optuna's storage heartbeat only runs inside ``study.optimize()``; our ask/tell driver keeps
    its own heartbeat here so that a resuming driver can tell a dead driver's RUNNING trials
    (stale: fail and re-enqueue) from a live concurrent driver's (leave alone).
    """

    __tablename__ = "attnsearch_driver"
    driver_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    study_name: Mapped[str] = mapped_column(String(512), index=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)


class StudyEvent(Base):
    """One-shot study events (e.g. "baselines enqueued"): the unique key makes them happen once
    even when two drivers start on the same study at the same moment."""

    __tablename__ = "attnsearch_study_event"
    __table_args__ = (UniqueConstraint("study_name", "event"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(String(512))
    event: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    detail: Mapped[dict | None] = mapped_column(JSON, nullable=True)
