"""HTTP routes for dead letters (admin only, see ``auth.ADMIN_READS``): list, newest first, show
one with its body, replay one. Read from the dead-letter stream one message at a time, by
sequence: the gateway may read that stream and nothing lets it write or delete there. A replay
is asked of the service whose consumer dead-lettered it (``praxis_runtime.replay``): the
gateway itself publishes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from praxis_contracts import headers as h
from praxis_contracts.base import all_message_types
from praxis_contracts.deadletters import (
    DeadLetter,
    DeadLetterInfo,
    DeadLetterPage,
    DeadLetterReplay,
    ReplayDeadLetter,
)
from praxis_contracts.errors import Conflict, NotFound
from praxis_contracts.topology import DEAD_LETTERS
from praxis_gateway.routes import BusDep
from praxis_gateway.security import ActorDep
from praxis_runtime.bus import Bus

router = APIRouter(prefix="/api/v1/dead-letters", tags=["operations"])

MAX_LIMIT = 200


@router.get("")
async def list_dead_letters(
    b: BusDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    before: Annotated[
        int | None, Query(ge=1, description="Only older than this sequence (paging).")
    ] = None,
) -> DeadLetterPage:
    """Dead letters, newest first, without their bodies: where each was published, why its
    consumer could not process it, when. Page with ``before`` = the previous ``next_before``."""
    info = await b.js.stream_info(DEAD_LETTERS.name)
    first, last = info.state.first_seq, info.state.last_seq
    seq = min(last, before - 1) if before is not None else last
    items: list[DeadLetterInfo] = []
    while seq >= first and seq > 0 and len(items) < limit:
        found = await _get(b, seq)
        if found is not None:
            items.append(
                DeadLetterInfo.model_validate(found.model_dump(exclude={"payload", "headers"}))
            )
        seq -= 1
    more = seq >= first and seq > 0
    return DeadLetterPage(
        items=items, total=info.state.messages, next_before=seq + 1 if more else None
    )


@router.get("/{seq}")
async def get_dead_letter(seq: Annotated[int, Path(ge=1)], b: BusDep) -> DeadLetter:
    """One dead letter with its headers and body (JSON, or text when it is not JSON)."""
    found = await _get(b, seq)
    if found is None:
        raise NotFound(f"no dead letter {seq}")
    return found


class ReplayIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=2000, description="Why (kept in the audit trail).")


REPLAY_TIMEOUT = 60.0
"""A consumer's handler may take a while (a run's preparation)."""


@router.post("/{seq}/replay")
async def replay_dead_letter(
    seq: Annotated[int, Path(ge=1)], b: BusDep, actor: ActorDep, body: ReplayIn | None = None
) -> DeadLetterReplay:
    """Hand the dead letter to the consumer that dead-lettered it, in its own service, to be
    handled again (after the cause was fixed). Handlers are idempotent: replaying one that was
    in fact handled changes nothing. Every replay, handled or not, is in the audit trail
    (``deadletters.letter.replayed``, with who and why); the dead letter stays listed. A
    failure answers with the handler's error."""
    found = await _get(b, seq)
    if found is None:
        raise NotFound(f"no dead letter {seq}")
    identity = found.headers.get(h.DEAD_LETTER_IDENTITY)
    consumer = found.headers.get(h.DEAD_LETTER_CONSUMER)
    if not identity or not consumer:
        raise Conflict(
            f"dead letter {seq} does not say which consumer dead-lettered it (it was stored "
            "before replays were possible): publish it again by hand if it must be handled"
        )
    reason = body.reason if body else ""
    try:
        request = ReplayDeadLetter(
            seq=seq, identity=identity, consumer=consumer, reason=reason, actor=actor
        )
    except ValidationError:  # stored by hand, with headers no consumer of ours writes
        raise Conflict(f"dead letter {seq} names no consumer of this deployment") from None
    return await b.request(request, timeout=REPLAY_TIMEOUT)


async def _get(b: Bus, seq: int) -> DeadLetter | None:
    try:
        msg = await b.js.get_msg(DEAD_LETTERS.name, seq)
    except NotFoundError:
        return None  # deleted, or past the stream's age limit
    headers = {k: str(v) for k, v in (msg.headers or {}).items()}
    original = headers.get(h.DEAD_LETTER_SUBJECT, "")
    data = msg.data or b""
    return DeadLetter(
        seq=seq,
        subject=msg.subject or "",
        original_subject=original,
        message_type=_type_of(original),
        reason=headers.get(h.DEAD_LETTER_REASON, ""),
        stored_at=msg.time or datetime.now(UTC),
        size_bytes=len(data),
        headers=headers,
        payload=_body(data),
    )


def _body(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")


def _type_of(subject: str) -> str | None:
    """The contract type published on ``subject`` (a keyed type's key after its base)."""
    for cls in all_message_types():
        if subject == cls.subject or subject.startswith(f"{cls.subject}."):
            return cls.__name__
    return None
