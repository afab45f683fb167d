"""Tables of the asset_manager schema."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from praxis_runtime.outbox import outbox_table

SCHEMA = "asset_manager"
JsonB = JSONB  # PostgreSQL only: containment (@>) for property and type filters


class Base(DeclarativeBase):
    metadata = MetaData(schema=SCHEMA)


class WorkcellRow(Base):
    __tablename__ = "workcells"

    accession_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(String(2000))
    properties: Mapped[dict[str, Any]] = mapped_column(JsonB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    drained: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    drain_reason: Mapped[str | None] = mapped_column(String(2000))


class AssetRow(Base):
    __tablename__ = "assets"
    __table_args__ = (UniqueConstraint("workcell_id", "name"),)

    accession_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    workcell_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(f"{SCHEMA}.workcells.accession_id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(20), index=True)
    name: Mapped[str] = mapped_column(String(200))
    fqn: Mapped[str] = mapped_column(String(300))
    type_mro: Mapped[list[str]] = mapped_column(JsonB)
    # PyLabRobot documents keep their key order (JSONB would sort keys; see praxis_plr.live).
    definition: Mapped[dict[str, Any]] = mapped_column(JSON)
    backend: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Set when a snapshot (or a restore) recorded ``state``; None: the state it was created with.
    state_recorded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    state_snapshot_id: Mapped[uuid.UUID | None] = mapped_column()
    parent_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    slot: Mapped[str | None] = mapped_column(String(200))
    properties: Mapped[dict[str, Any]] = mapped_column(JsonB)
    shareable: Mapped[bool] = mapped_column(Boolean)
    status: Mapped[str] = mapped_column(String(20), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReservationRow(Base):
    """A run's reservation request: waiting until granted, kept while its leases are held."""

    __tablename__ = "reservations"

    run_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    request: Mapped[dict[str, Any]] = mapped_column(JsonB)
    status: Mapped[str] = mapped_column(String(20), index=True)
    priority: Mapped[int] = mapped_column(Integer)
    bindings: Mapped[list[dict[str, Any]]] = mapped_column(JsonB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class CatalogRow(Base):
    """A PyLabRobot type installed with the service (replaced when PyLabRobot's version changes)."""

    __tablename__ = "catalog"

    fqn: Mapped[str] = mapped_column(String(300), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    kind: Mapped[str] = mapped_column(String(20), index=True)
    is_factory: Mapped[bool] = mapped_column(Boolean)
    instantiable: Mapped[bool] = mapped_column(Boolean)
    category: Mapped[str | None] = mapped_column(String(100))
    module: Mapped[str] = mapped_column(String(300))
    bases: Mapped[list[str]] = mapped_column(JsonB)
    pylabrobot_version: Mapped[str] = mapped_column(String(50))
    synced_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class StatusHistoryRow(Base):
    """One status change of an asset; ``previous`` is None for the status it was created with."""

    __tablename__ = "asset_status_history"
    __table_args__ = (Index("ix_asset_status_history_asset_at", "asset_id", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    asset_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey(f"{SCHEMA}.assets.accession_id", ondelete="CASCADE")
    )
    status: Mapped[str] = mapped_column(String(20))
    previous: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(String(2000))
    run_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class SnapshotRow(Base):
    """What is known of a workcell state snapshot; its body is in the object store.

    ``pruned_at`` is set when retention drops it: the row goes once its object is deleted (a
    failed delete is retried at the next prune), and lists and reads no longer show it.
    """

    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_workcell_taken", "workcell_name", "taken_at"),)

    snapshot_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    workcell_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(20))
    run_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    checkpoint: Mapped[str | None] = mapped_column(Text)
    taken_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    asset_ids: Mapped[list[str]] = mapped_column(JsonB)
    asset_names: Mapped[list[str]] = mapped_column(JsonB)
    object_name: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    pruned_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


OUTBOX = outbox_table(Base.metadata)
