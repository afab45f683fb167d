"""Tables of the audit schema (the migrations create them; this is what they must match)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Index, MetaData, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import UUID as PgUUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA = "audit"


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class EventRow(Base):
    """One event of the stream. Every filter of the trail has an index ending in ``id``, so a
    page is read in order from the index whatever the trail's size (GIN for the assets)."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("epoch", "stream_seq", name="uq_events_stream"),
        Index("ix_events_type", "type", "id"),
        Index("ix_events_run", "run_id", "id"),
        Index("ix_events_workcell", "workcell", "id"),
        Index("ix_events_actor", "actor", "id"),
        Index("ix_events_correlation", "correlation_id", "id"),
        Index("ix_events_occurred", "occurred_at"),
        Index("ix_events_assets", "asset_ids", postgresql_using="gin"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    epoch: Mapped[str] = mapped_column(Text)
    stream_seq: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    actor: Mapped[str | None] = mapped_column(Text)
    publisher: Mapped[str | None] = mapped_column(Text)
    correlation_id: Mapped[str | None] = mapped_column(Text)
    run_id: Mapped[uuid.UUID | None] = mapped_column(PgUUID(as_uuid=True))
    workcell: Mapped[str | None] = mapped_column(Text)
    asset_ids: Mapped[list[uuid.UUID]] = mapped_column(
        ARRAY(PgUUID(as_uuid=True)), server_default=text("'{}'")
    )
    payload: Mapped[Any] = mapped_column(JSONB, nullable=False)


class PositionRow(Base):
    """Where the trail of each incarnation of the events stream ends."""

    __tablename__ = "positions"

    epoch: Mapped[str] = mapped_column(Text, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger)
