"""Tables of the scheduler schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, Integer, MetaData, String, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from praxis_runtime.outbox import outbox_table

SCHEMA = "scheduler"
JsonB = JSONB  # PostgreSQL only: containment (@>) for property and type filters


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class RunRow(Base):
    __tablename__ = "protocol_runs"

    accession_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    protocol_name: Mapped[str] = mapped_column(String(200), index=True)
    protocol_version: Mapped[str] = mapped_column(String(50))
    definition_id: Mapped[uuid.UUID]
    source_commit: Mapped[str] = mapped_column(String(64))
    definition: Mapped[dict[str, Any]] = mapped_column(JsonB)
    status: Mapped[str] = mapped_column(String(30), index=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JsonB)
    initial_state: Mapped[dict[str, Any]] = mapped_column(JsonB)
    workcell: Mapped[str | None] = mapped_column(String(200))
    workcell_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    workcell_name: Mapped[str | None] = mapped_column(String(200))
    pins: Mapped[dict[str, str]] = mapped_column(JsonB)
    asset_properties: Mapped[dict[str, dict[str, Any]]] = mapped_column(JsonB, default=dict)
    priority: Mapped[int] = mapped_column(Integer)
    on_failure: Mapped[str] = mapped_column(String(20), default="keep")
    bindings: Mapped[list[dict[str, Any]]] = mapped_column(JsonB)
    result: Mapped[Any] = mapped_column(JsonB, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JsonB)
    final_state: Mapped[dict[str, Any] | None] = mapped_column(JsonB)
    asset_states: Mapped[dict[str, Any] | None] = mapped_column(JsonB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    edge_instance: Mapped[str | None] = mapped_column(String(64), index=True, default=None)
    waiting_for: Mapped[str | None] = mapped_column(String(40), default=None)
    waiting_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    mode: Mapped[str] = mapped_column(String(20), default="queued")
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    deadline: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    retry_of: Mapped[uuid.UUID | None] = mapped_column(default=None)
    retried_by: Mapped[uuid.UUID | None] = mapped_column(default=None)
    submitted_by: Mapped[str | None] = mapped_column(String(200), default=None)


class StatusHistoryRow(Base):
    __tablename__ = "run_status_history"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(f"{SCHEMA}.protocol_runs.accession_id", ondelete="CASCADE"), index=True
    )
    status: Mapped[str] = mapped_column(String(30))
    previous: Mapped[str | None] = mapped_column(String(30))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str | None] = mapped_column(String(200), default=None)


class CallRow(Base):
    """A protocol-function call as the orchestrator reported it."""

    __tablename__ = "function_calls"

    call_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(f"{SCHEMA}.protocol_runs.accession_id", ondelete="CASCADE"), index=True
    )
    parent_call_id: Mapped[uuid.UUID | None]
    sequence: Mapped[int] = mapped_column(Integer)
    function: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(50))
    arguments: Mapped[dict[str, Any]] = mapped_column(JsonB)
    status: Mapped[str] = mapped_column(String(20))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any] = mapped_column(JsonB, nullable=True, default=None)


OUTBOX = outbox_table(Base.metadata)


class LogRow(Base):
    """One line of a run's output (``RunLogged``); (run, seq) is its identity: a redelivered
    batch inserts nothing."""

    __tablename__ = "run_logs"

    run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(f"{SCHEMA}.protocol_runs.accession_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    source: Mapped[str] = mapped_column(String(20))
    level: Mapped[str] = mapped_column(String(20))
    level_no: Mapped[int] = mapped_column(Integer)
    logger: Mapped[str | None] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
