"""The audit trail: every event of the events stream, stored by the audit service with who set
it going (actor), its correlation id and when, kept apart from runs and assets (deleting an
asset or a run leaves its trail) for a retention of its own. Queried over HTTP at
``GET /api/v1/events``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from praxis_contracts.base import Request

MAX_AUDIT_PAGE = 500


class AuditEvent(BaseModel):
    """One stored event."""

    model_config = ConfigDict(frozen=True)

    id: int = Field(description="Its id in the audit trail: newer events have larger ids.")
    stream_seq: int = Field(description="Its sequence in the events stream.")
    type: str = Field(
        description="The event's name, context.aggregate.action (scheduler.run.status_changed), "
        "as in the live streams; its subject's tokens for a subject Praxis does not know."
    )
    subject: str
    occurred_at: datetime = Field(description="When the events stream stored it.")
    actor: str | None = Field(
        default=None,
        description="Who set it going: the HTTP principal of the request that caused it "
        "(carried in every message's Praxis-Actor header); null when the system did.",
    )
    publisher: str | None = Field(
        default=None,
        description="The NATS identity allowed to publish it (the server enforces that only "
        "it can), e.g. orchestrator-<workcell>.",
    )
    correlation_id: str | None = None
    run_id: UUID | None = None
    workcell: str | None = Field(default=None, description="The workcell's name, if it names one.")
    asset_ids: list[UUID] = Field(default_factory=list, description="Assets it names.")
    payload: Any = Field(description="The event's body as published (JSON, or text).")


class AuditEventPage(BaseModel):
    """Newest first; continue with ``before`` = ``next_before`` until it is null."""

    model_config = ConfigDict(frozen=True)

    items: list[AuditEvent]
    next_before: int | None = Field(
        default=None, description="Pass as ``before`` for the next (older) page; null at the end."
    )


class AuditFilters(BaseModel):
    """What ``GET /api/v1/events`` filters by; every filter given must hold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    types: list[str] = Field(
        default_factory=list,
        description="Event names (any of them), e.g. orchestrator.run.finished.",
    )
    run_id: UUID | None = None
    workcell: str | None = Field(default=None, description="A workcell's name.")
    asset_id: UUID | None = None
    actor: str | None = None
    correlation_id: str | None = None
    since: AwareDatetime | None = Field(default=None, description="Stored at or after.")
    until: AwareDatetime | None = Field(default=None, description="Stored before.")


class ListAuditEvents(Request[AuditEventPage]):
    """One page of the audit trail, newest first (keyset paging: as fast on the last page of a
    million events as on the first)."""

    subject: ClassVar[str] = "praxis.rpc.audit.list_events"
    reply_type: ClassVar[type[BaseModel]] = AuditEventPage

    filters: AuditFilters = Field(default_factory=AuditFilters)
    limit: int = Field(default=50, ge=1, le=MAX_AUDIT_PAGE)
    before: int | None = Field(default=None, ge=1, description="Only older than this id.")
    stored_through: int | None = Field(
        default=None,
        ge=1,
        description="Answer once the trail holds the events stream up to this sequence (an "
        "event id of a live stream): read what a live stream has shown. 503 if it does not "
        "within 5 s.",
    )
