"""Dead letters as the HTTP API shows them (``/api/v1/dead-letters``): messages a consumer could
not process, kept in the ``PRAXIS_DEAD_LETTERS`` stream with why (``Praxis-Dead-Letter-Reason``)
and where they came from (``Praxis-Dead-Letter-Subject``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from praxis_contracts.base import Event, Message, Request


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


# -- replay: the consumer that dead-lettered a message handles it again --------------------------
DURABLE_NAME = r"^[A-Za-z0-9_-]{1,128}$"


class DeadLetterReplay(BaseModel):
    """A dead letter its consumer handled again, successfully."""

    model_config = ConfigDict(frozen=True)

    seq: int
    identity: str = Field(description="The NATS identity of the service that handled it.")
    consumer: str = Field(description="The durable consumer that handled it.")
    original_subject: str
    message_type: str


class ReplayDeadLetter(Request[DeadLetterReplay]):
    """Hand dead letter ``seq`` to the consumer that dead-lettered it, in the service that owns
    that consumer (keyed ``<identity>.<durable>``, from the dead letter's
    ``Praxis-Dead-Letter-Identity`` and ``-Consumer`` headers): only the consumer's own process
    may act on it (the gateway publishes nothing). Each replay, handled
    or failed again, is announced as ``DeadLetterReplayed`` (the audit trail keeps it). The
    dead letter stays in its stream; handlers are idempotent, so a second replay is harmless."""

    subject: ClassVar[str] = "praxis.rpc.deadletters.replay"
    reply_type: ClassVar[type[BaseModel]] = DeadLetterReplay
    keyed: ClassVar[bool] = True

    seq: int = Field(ge=1)
    identity: str = Field(pattern=DURABLE_NAME)
    consumer: str = Field(pattern=DURABLE_NAME)
    reason: str = Field(default="", max_length=2000)
    actor: str | None = None

    def subject_key(self) -> str:
        return f"{self.identity}.{self.consumer}"


class DeadLetterReplayed(Event):
    """A dead letter was handed to its consumer again, by ``actor``: ``processed``, or
    ``failed`` with the error (it stays a dead letter)."""

    subject: ClassVar[str] = "praxis.evt.deadletters.letter.replayed"
    keyed: ClassVar[bool] = True

    seq: int
    identity: str
    consumer: str
    original_subject: str
    outcome: Literal["processed", "failed"]
    error: str | None = None
    reason: str = ""
    actor: str | None = None
    at: datetime

    def subject_key(self) -> str:
        return f"{self.identity}.{self.consumer}"


REPLAY_TYPES: tuple[type[Message], ...] = (ReplayDeadLetter, DeadLetterReplayed)
"""Plumbing of every consumer rather than one context's messages: every service with a
durable consumer answers ``ReplayDeadLetter`` under its identity and announces
``DeadLetterReplayed`` under it (``praxis_runtime.replay``, ``permissions``)."""
