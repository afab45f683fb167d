"""The trail in PostgreSQL (schema ``audit``): append a batch with the position it reaches in
one transaction, page through it newest first, prune past the retention."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY

from praxis_audit.domain import Entry, Position
from praxis_audit.orm import SCHEMA
from praxis_contracts.audit import AuditEvent, AuditEventPage, ListAuditEvents
from praxis_runtime.db import Database
from praxis_runtime.dberrors import as_domain_error

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
_COLUMNS = (
    "id, stream_seq, type, subject, occurred_at, actor, publisher, correlation_id, run_id, "
    "workcell, asset_ids, payload::text AS payload"
)


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
        where, params = _where(query)
        params["limit"] = query.limit + 1
        async with self.db.engine.connect() as conn:
            source = f"{SCHEMA}.events"
            if await self._narrow(conn, query):
                window = _window(query)
                source = (
                    f"(SELECT * FROM {SCHEMA}.events WHERE id IN "
                    f"(SELECT id FROM {SCHEMA}.events WHERE {window} OFFSET 0)) AS events"
                )
            sql = text(
                f"SELECT {_COLUMNS} FROM {source} {where} ORDER BY id DESC LIMIT :limit"
            ).bindparams(*(bindparam(k, type_=t) for k, t in _TYPED.items() if k in params))
            rows = (await conn.execute(sql, params)).mappings().all()
        items: list[AuditEvent] = []
        size = 0
        for row in rows[: query.limit]:
            if items and size + len(row["payload"]) > PAGE_BYTES:
                break
            size += len(row["payload"])
            items.append(_event(row))
        more = len(items) < len(rows)
        return AuditEventPage(items=items, next_before=items[-1].id if more and items else None)

    @staticmethod
    async def _narrow(conn: Any, query: ListAuditEvents) -> bool:
        """Whether the query's time window holds at most ``NARROW_WINDOW`` events (counted
        through the time index, stopping there)."""
        f = query.filters
        if f.since is None and f.until is None:
            return False
        counted = await conn.scalar(
            text(
                f"SELECT count(*) FROM (SELECT 1 FROM {SCHEMA}.events WHERE {_window(query)}"
                " LIMIT :most) AS w"
            ),
            {"since": f.since, "until": f.until, "most": NARROW_WINDOW + 1},
        )
        return int(counted or 0) <= NARROW_WINDOW

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

    async def count(self) -> int:
        async with self.db.engine.connect() as conn:
            return int(await conn.scalar(text(f"SELECT count(*) FROM {SCHEMA}.events")) or 0)


_TYPED: dict[str, Any] = {"types": ARRAY(Text())}


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


def _window(query: ListAuditEvents) -> str:
    f = query.filters
    bounds = [
        *(["occurred_at >= :since"] if f.since is not None else []),
        *(["occurred_at < :until"] if f.until is not None else []),
    ]
    return " AND ".join(bounds)


def _where(query: ListAuditEvents) -> tuple[str, dict[str, Any]]:
    f = query.filters
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if f.types:
        clauses.append("type = ANY(:types)")
        params["types"] = list(f.types)
    for column, value in (
        ("run_id", f.run_id),
        ("workcell", f.workcell),
        ("actor", f.actor),
        ("correlation_id", f.correlation_id),
    ):
        if value is not None:
            clauses.append(f"{column} = :{column}")
            params[column] = value
    if f.asset_id is not None:
        clauses.append("asset_ids @> ARRAY[CAST(:asset_id AS uuid)]")
        params["asset_id"] = str(f.asset_id)
    if f.since is not None:
        clauses.append("occurred_at >= :since")
        params["since"] = f.since
    if f.until is not None:
        clauses.append("occurred_at < :until")
        params["until"] = f.until
    if query.before is not None:
        clauses.append("id < :before")
        params["before"] = query.before
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


def _event(row: Any) -> AuditEvent:
    return AuditEvent(
        id=row["id"],
        stream_seq=row["stream_seq"],
        type=row["type"],
        subject=row["subject"],
        occurred_at=row["occurred_at"],
        actor=row["actor"],
        publisher=row["publisher"],
        correlation_id=row["correlation_id"],
        run_id=row["run_id"],
        workcell=row["workcell"],
        asset_ids=list(row["asset_ids"] or []),
        payload=json.loads(row["payload"]),
    )
