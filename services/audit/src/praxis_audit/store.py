"""The trail in PostgreSQL (schema ``audit``): append a batch with the position it reaches in
one transaction, page through it newest first, prune past the retention."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Text, cast, func, select, text

from praxis_audit.domain import Entry, Position
from praxis_audit.orm import SCHEMA, EventRow
from praxis_contracts.audit import AuditEvent, AuditEventPage, ListAuditEvents
from praxis_runtime.db import Database
from praxis_runtime.dberrors import as_domain_error
from praxis_runtime.query import where_all

log = logging.getLogger(__name__)

PAGE_BYTES = 4 * 1024 * 1024
"""A page stops growing past this many bytes of bodies (it holds one event at least): a page of
the largest events stays a bounded reply."""
PRUNE_BATCH = 10_000
NARROW_WINDOW = 5_000
STATEMENT_SECONDS = 30.0
"""A batch that takes longer (a hung connection) fails, and the follower starts again."""

_APPEND = f"""
WITH stored AS (
    INSERT INTO {SCHEMA}.events (epoch, stream_seq, type, subject, occurred_at, actor, publisher,
                                 correlation_id, run_id, workcell, asset_ids, payload)
    SELECT $1, r.stream_seq, r.type, r.subject, r.occurred_at, r.actor, r.publisher,
           r.correlation_id, r.run_id, r.workcell, r.asset_ids, r.payload
    FROM jsonb_to_recordset($2::jsonb) AS r(
        stream_seq bigint, type text, subject text, occurred_at timestamptz, actor text,
        publisher text, correlation_id text, run_id uuid, workcell text, asset_ids uuid[],
        payload jsonb)
    ORDER BY r.stream_seq
    ON CONFLICT (epoch, stream_seq) DO NOTHING
    RETURNING 1
), advanced AS (
    INSERT INTO {SCHEMA}.positions (epoch, last_seq) VALUES ($1, $3)
    ON CONFLICT (epoch) DO UPDATE
    SET last_seq = GREATEST({SCHEMA}.positions.last_seq, EXCLUDED.last_seq)
)
SELECT count(*) AS stored FROM stored
"""
"""A batch and the position it reaches in one statement (atomic on its own, one round trip on
a kept connection), in stream order: ids follow sequences."""
_COLUMNS = [getattr(EventRow, name) for name in AuditEvent.model_fields]
"""What a page reads: the fields of ``AuditEvent``, by the same names."""


class Trail:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._kept = db.kept_connection()  # the follower's: one batch at a time

    async def position(self, epoch: str) -> Position:
        async with self.db.engine.connect() as conn:
            last = await conn.scalar(
                text(f"SELECT last_seq FROM {SCHEMA}.positions WHERE epoch = :e"), {"e": epoch}
            )
        return Position(epoch, int(last or 0))

    async def append(self, epoch: str, entries: Sequence[Entry]) -> int:
        """Store ``entries`` (stream order) and the position they reach, together; an entry
        already stored (a redelivery) is skipped. Returns how many were new.

        A body PostgreSQL refuses (JSON it cannot hold in JSONB: an escaped lone surrogate)
        must not stop the trail: the batch is stored one by one, and such a body kept as a
        JSON string of its text. PostgreSQL or the network failing is raised (the follower
        starts again from the position)."""
        if not entries:
            return 0
        try:
            return await self._append(epoch, entries)
        except Exception as exc:
            if as_domain_error(exc) is None:
                raise
        stored = 0
        for entry in entries:
            stored += await self._one(epoch, entry)
        return stored

    async def _one(self, epoch: str, entry: Entry) -> int:
        """One entry: as it is, else its body as text, else what the stream says of it alone
        (its sequence, subject and time). Only PostgreSQL or the network failing raises."""
        fallbacks = (
            replace(entry, payload=json.dumps(entry.payload)),
            replace(
                entry,
                subject=entry.subject.encode("ascii", "replace").decode(),
                type="unstorable",
                actor=None,
                correlation_id=None,
                workcell=None,
                asset_ids=(),
                payload=json.dumps("the store refused this event's body"),
            ),
        )
        try:
            return await self._append(epoch, [entry])
        except Exception as exc:
            if as_domain_error(exc) is None:
                raise
            refused = exc
        for fallback in fallbacks:
            try:
                stored = await self._append(epoch, [fallback])
            except Exception as exc:
                if as_domain_error(exc) is None:
                    raise
                continue
            log.warning("event %d stored as %s: %s", entry.stream_seq, fallback.type, refused)
            return stored
        raise refused

    async def _append(self, epoch: str, entries: Sequence[Entry]) -> int:
        rows = "[" + ",".join(map(_row, entries)) + "]"
        last = max(e.stream_seq for e in entries)
        (row,) = await self._kept.fetch(_APPEND, epoch, rows, last, timeout=STATEMENT_SECONDS)
        return int(row["stored"])

    async def page(self, query: ListAuditEvents) -> AuditEventPage:
        """Newest first. Every filter has an index ending in ``id``, read in order; a time
        window holding few events (``NARROW_WINDOW``) is read through the time index instead:
        left to the planner, a window far in the past was read by walking every newer event
        (ids and times rise together, which its estimates do not know; 170 ms at a million)."""
        f, e = query.filters, EventRow
        window = (
            e.occurred_at >= f.since if f.since is not None else None,
            e.occurred_at < f.until if f.until is not None else None,
        )
        stmt = where_all(
            select(*_COLUMNS, func.octet_length(cast(e.payload, Text)).label("size")),
            e.type.in_(f.types) if f.types else None,
            e.run_id == f.run_id if f.run_id is not None else None,
            e.workcell == f.workcell if f.workcell is not None else None,
            e.actor == f.actor if f.actor is not None else None,
            e.correlation_id == f.correlation_id if f.correlation_id is not None else None,
            e.asset_ids.contains([f.asset_id]) if f.asset_id is not None else None,
            *window,
            e.id < query.before if query.before is not None else None,
        )
        async with self.db.engine.connect() as conn:
            if any(c is not None for c in window) and await _narrow(conn, window):
                # OFFSET 0: the window's ids are found first, through the time index.
                stmt = stmt.where(e.id.in_(where_all(select(e.id), *window).offset(0)))
            rows = (await conn.execute(stmt.order_by(e.id.desc()).limit(query.limit + 1))).all()
        items: list[AuditEvent] = []
        size = 0
        for row in rows[: query.limit]:
            if items and size + row.size > PAGE_BYTES:
                break
            size += row.size
            items.append(AuditEvent.model_validate(row._mapping))
        more = len(items) < len(rows)
        return AuditEventPage(items=items, next_before=items[-1].id if more and items else None)

    async def prune(self, before: datetime) -> int:
        """Delete what was stored before ``before``, a batch per transaction (no long lock)."""
        deleted = 0
        while True:
            async with self.db.engine.begin() as conn:
                result = await conn.execute(
                    text(
                        f"DELETE FROM {SCHEMA}.events WHERE id IN (SELECT id FROM {SCHEMA}.events"
                        " WHERE occurred_at < :before ORDER BY id LIMIT :n)"
                    ),
                    {"before": before, "n": PRUNE_BATCH},
                )
            deleted += int(result.rowcount or 0)
            if (result.rowcount or 0) < PRUNE_BATCH:
                return deleted


def _row(e: Entry) -> str:
    """One entry as a JSON object, its body spliced in as it is (already JSON text)."""
    fields = {
        "stream_seq": e.stream_seq,
        "type": e.type,
        "subject": e.subject,
        "occurred_at": e.occurred_at.isoformat(),
        "actor": e.actor,
        "publisher": e.publisher,
        "correlation_id": e.correlation_id,
        "run_id": str(e.run_id) if e.run_id else None,
        "workcell": e.workcell,
        "asset_ids": [str(a) for a in e.asset_ids],
    }
    return f'{json.dumps(fields)[:-1]},"payload":{e.payload}}}'


async def _narrow(conn: Any, window: Sequence[ColumnElement[bool] | None]) -> bool:
    """Whether the time window holds at most ``NARROW_WINDOW`` events (counted through the
    time index, stopping there)."""
    few = where_all(select(EventRow.id), *window).limit(NARROW_WINDOW + 1).subquery()
    return int(await conn.scalar(select(func.count()).select_from(few)) or 0) <= NARROW_WINDOW
