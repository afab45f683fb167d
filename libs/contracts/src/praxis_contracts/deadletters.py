"""Dead letters as the HTTP API shows them (``/api/v1/dead-letters``): messages a consumer could
not process, kept in the ``PRAXIS_DEAD_LETTERS`` stream with why (``Praxis-Dead-Letter-Reason``)
and where they came from (``Praxis-Dead-Letter-Subject``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class DeadLetterInfo(BaseModel):
    """One dead letter without its body."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(description="Its sequence in the dead-letter stream: its id.")
    subject: str = Field(description="Where it was dead-lettered (praxis.dlq.…).")
    original_subject: str = Field(description="Where it had been published.")
    message_type: str | None = Field(
        default=None, description="The contract type of that subject, if it is one Praxis knows."
    )
    reason: str = Field(description="Why its consumer could not process it.")
    stored_at: datetime
    size_bytes: int


class DeadLetter(DeadLetterInfo):
    """One dead letter with its body and headers."""

    headers: dict[str, str] = Field(default_factory=dict)
    payload: Any = Field(description="The body as JSON, or as text when it is not JSON.")


class DeadLetterPage(BaseModel):
    """Newest first; continue with ``before`` = ``next_before`` until it is null."""

    model_config = ConfigDict(frozen=True)

    items: list[DeadLetterInfo]
    total: int = Field(description="Dead letters in the stream now.")
    next_before: int | None = Field(
        default=None, description="Pass as ``before`` for the next (older) page; null at the end."
    )
