"""Tables of the code_manager schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import DateTime, ForeignKey, MetaData, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from praxis_runtime.outbox import outbox_table

SCHEMA = "code_manager"
JsonB = JSONB  # PostgreSQL only: containment (@>) for property and type filters


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class SourceRow(Base):
    __tablename__ = "protocol_sources"

    accession_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    url: Mapped[str] = mapped_column(Text)
    ref: Mapped[str] = mapped_column(String(200))
    pinned_commit: Mapped[str | None] = mapped_column(String(64))
    commit: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20))
    error: Mapped[str | None] = mapped_column(Text)
    credentials_ref: Mapped[str | None] = mapped_column(Text)  # the reference, never the secret
    problems: Mapped[list[dict[str, Any]]] = mapped_column(
        JsonB, default=list, server_default=text("'[]'::jsonb")
    )
    last_synced_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class DefinitionRow(Base):
    __tablename__ = "protocol_definitions"
    __table_args__ = (UniqueConstraint("source_id", "commit", "name", "version"),)

    accession_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    source_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(f"{SCHEMA}.protocol_sources.accession_id", ondelete="CASCADE"), index=True
    )
    commit: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[str] = mapped_column(String(50))
    spec: Mapped[dict[str, Any]] = mapped_column(JsonB)
    code_bundle: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


OUTBOX = outbox_table(Base.metadata)
