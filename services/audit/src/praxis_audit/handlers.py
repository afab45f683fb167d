"""Audit handlers: the trail's one query."""

from __future__ import annotations

from dataclasses import dataclass

from praxis_audit.ingest import Follower
from praxis_audit.store import Trail
from praxis_contracts.audit import AuditEventPage, ListAuditEvents
from praxis_contracts.errors import Unavailable
from praxis_runtime.bus import Handlers

CATCH_UP_SECONDS = 5.0


@dataclass(frozen=True)
class Deps:
    trail: Trail
    follower: Follower


handlers: Handlers[Deps] = Handlers()


@handlers.rpc(ListAuditEvents)
async def list_events(query: ListAuditEvents, deps: Deps) -> AuditEventPage:
    """A page of the trail; with ``stored_through``, once the trail holds the stream that far
    (read after a live stream: its event ids are stream sequences)."""
    seq = query.stored_through
    if seq is not None and not await deps.follower.caught_up(seq, CATCH_UP_SECONDS):
        held = deps.follower.position.last_seq if deps.follower.position else 0
        raise Unavailable(
            f"the audit trail holds the events stream up to {held}, not yet {seq}",
            stored_through=held,
        )
    return await deps.trail.page(query)
