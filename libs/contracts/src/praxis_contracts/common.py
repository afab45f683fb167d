"""Shared value types: ids, run statuses, the standard list filters and pages."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

RunId = UUID
AssetId = UUID
WorkcellId = UUID
DefinitionId = UUID
SourceId = UUID


class RunStatus(StrEnum):
    """Lifecycle of a protocol run (the seed's vocabulary)."""

    QUEUED = "queued"
    PENDING = "pending"
    PREPARING = "preparing"
    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    RESUMING = "resuming"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELING = "canceling"
    CANCELLED = "cancelled"
    REQUIRES_INTERVENTION = "requires_intervention"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


MAX_OFFSET = 2**63 - 1
"""The largest ``offset`` of a list: PostgreSQL's ``OFFSET`` is a bigint. A larger one used to
reach the database and come back as the driver's complaint about a query argument; any offset
past the rows there are is an empty page anyway."""


class SearchFilters(BaseModel):
    """Standard filters every list query accepts; entity-specific filters sit beside them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    limit: int = Field(default=50, ge=1, le=1000, description="Page size.")
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET, description="Rows to skip.")
    sort_by: str | None = Field(
        default=None, description="Field to sort by; prefix with '-' for descending."
    )
    date_range_start: datetime | None = Field(default=None, description="Created at or after.")
    date_range_end: datetime | None = Field(default=None, description="Created before.")
    property_filters: dict[str, Any] | None = Field(
        default=None, description="Key/value pairs the entity's JSON properties must contain."
    )
    protocol_run_accession_id: UUID | None = None
    machine_accession_id: UUID | None = None
    resource_accession_id: UUID | None = None
    parent_accession_id: UUID | None = None
    workcell_accession_id: UUID | None = None


ItemT = TypeVar("ItemT", bound=BaseModel)


class Page(BaseModel, Generic[ItemT]):
    """One page of a list query."""

    model_config = ConfigDict(frozen=True)

    items: list[ItemT]
    total: int = Field(description="Rows matching the filters, ignoring limit/offset.")
    limit: int
    offset: int


class ErrorInfo(BaseModel):
    """A failure as recorded on a run: type, message and where it happened."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: str = Field(description="Exception type name, e.g. 'ValueError'.")
    message: str
    code: str | None = Field(default=None, description="Praxis error code when one applies.")
    traceback: str | None = Field(default=None, description="Protocol-side traceback, if any.")
    details: dict[str, Any] = Field(
        default_factory=dict,
        description="Structured context of a Praxis error (e.g. the runs holding the assets "
        "an immediate run wanted).",
    )


AssetKind = Literal["machine", "resource", "deck"]
