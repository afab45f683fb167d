"""The audit trail's pure core: what one event of the stream becomes in the trail (``Entry``),
and where the trail resumes after a restart (``Position``). No I/O here."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from praxis_contracts import headers as h
from praxis_contracts.base import SUBJECT_ROOT, Event, event_types
from praxis_contracts.deadletters import DeadLetterReplayed
from praxis_contracts.permissions import RUN_EVENTS, identities, orchestrator_identity_name

EVENT_PREFIX = f"{SUBJECT_ROOT}.evt."
ASSET_FIELDS = ("asset_id", "asset_ids")
WORKCELL_FIELDS = ("workcell", "workcell_name")


@dataclass(frozen=True)
class Entry:
    """One event as the trail stores it."""

    stream_seq: int
    type: str
    subject: str
    occurred_at: datetime
    actor: str | None
    publisher: str | None
    correlation_id: str | None
    run_id: uuid.UUID | None
    workcell: str | None
    asset_ids: tuple[uuid.UUID, ...]
    payload: str
    """The body as JSON text (a body that is not JSON is stored as a JSON string)."""


def entry_of(
    seq: int, subject: str, data: bytes, headers: Mapping[str, str] | None, at: datetime
) -> Entry:
    """What the event stored at ``seq`` becomes in the trail. Never raises: a body that is not
    JSON, or names nothing, is stored as it came (the trail keeps everything the stream did)."""
    received = headers or {}
    body, payload = _decoded(data)
    fields = body if isinstance(body, dict) else {}
    return Entry(
        stream_seq=seq,
        type=_cleaned(event_name(subject)),
        subject=_cleaned(subject),
        occurred_at=at,
        # The body's actor (whose request made this change) is the nearer; the header names
        # whose request set the chain going (a run's events carry its submitter's).
        actor=_clean(_text(fields.get("actor")) or received.get(h.ACTOR) or None),
        publisher=publisher_of(subject),
        correlation_id=_clean(received.get(h.CORRELATION_ID) or None),
        run_id=_uuid(fields.get("run_id")),
        workcell=_clean(next((w for f in WORKCELL_FIELDS if (w := _text(fields.get(f)))), None)),
        asset_ids=tuple(dict.fromkeys(_uuids(fields.get(f) for f in ASSET_FIELDS))),
        payload=payload,
    )


def event_name(subject: str) -> str:
    """``context.aggregate.action`` of a known event's subject (as the live streams name it);
    for another subject, its tokens after ``praxis.evt.`` (its key included)."""
    for name, cls in _types():
        if subject == cls.subject or subject.startswith(f"{cls.subject}."):
            return name
    return subject.removeprefix(EVENT_PREFIX)


def publisher_of(subject: str) -> str | None:
    """The identity the server lets publish on ``subject`` (``permissions``): one per event
    type, but for an edge's run events, whose publisher is that workcell's orchestrator."""
    if subject.startswith(f"{DeadLetterReplayed.subject}."):  # keyed <identity>.<durable>
        return subject.removeprefix(f"{DeadLetterReplayed.subject}.").split(".", 1)[0]
    for cls, who in _publishers():
        if subject == cls.subject or subject.startswith(f"{cls.subject}."):
            if who == orchestrator_identity_name("*") or cls in RUN_EVENTS:
                workcell = subject.removeprefix(f"{cls.subject}.").split(".", 1)[0]
                return orchestrator_identity_name(workcell) if workcell else who
            return who
    return None


@cache
def _types() -> tuple[tuple[str, type[Event]], ...]:
    # Longest subject first: no type's subject may shadow a longer one it prefixes.
    return tuple(sorted(event_types().items(), key=lambda kv: -len(kv[1].subject)))


@cache
def _publishers() -> tuple[tuple[type[Event], str], ...]:
    found: dict[type[Event], str] = {}
    for identity in identities(["*"]):
        for allowed in identity.publishes:
            if issubclass(allowed.message_type, Event) and not identity.admin:
                found.setdefault(allowed.message_type, identity.name)
    return tuple(sorted(found.items(), key=lambda kv: -len(kv[0].subject)))


def _decoded(data: bytes) -> tuple[Any, str]:
    """The body, and the JSON text to store: the body's own text when it is JSON already (no
    second encoding), else the body as a JSON string."""
    text = data.decode(errors="replace")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past what the parser takes
        body, text = text, json.dumps(text)
    # PostgreSQL's JSONB holds no NUL character: replaced, as an undecodable byte is.
    return body, text.replace("\\u0000", "\\ufffd")


TEXT_LIMIT = 200
"""The indexed text columns keep this much (an index row has a size limit)."""


def _cleaned(value: str) -> str:
    """Text PostgreSQL can store and index: no NUL, no lone surrogate, at most
    ``TEXT_LIMIT`` characters (what a sender put in a header or a body is not trusted)."""
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace").decode()[:TEXT_LIMIT]


def _clean(value: str | None) -> str | None:
    return None if value is None else _cleaned(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _uuid(value: Any) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _uuids(values: Iterable[Any]) -> Iterator[uuid.UUID]:
    for value in values:
        for item in value if isinstance(value, list) else [value]:
            if (found := _uuid(item)) is not None:
                yield found


@dataclass(frozen=True)
class Position:
    """Where the trail of one events stream ends. ``epoch`` names the stream's incarnation
    (when it was created): a stream made anew starts its sequences again at 1, and its events
    are new ones, stored beside the old."""

    epoch: str
    last_seq: int

    def start_at(self) -> int:
        """The first sequence to read."""
        return self.last_seq + 1
