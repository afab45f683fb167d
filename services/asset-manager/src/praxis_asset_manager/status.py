"""Asset statuses: batched changes with their history, reconciliation with live leases.

``reserved`` and ``in_use`` follow leases and runs (set by reservations through ``set_status``);
``maintenance`` and ``error`` are set by users. Every real change is one history row and one
``AssetStatusChanged`` event, written to the outbox in the same statement or transaction and
published by the outbox relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, and_, case, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from praxis_asset_manager.orm import SCHEMA, AssetRow, StatusHistoryRow
from praxis_contracts import headers as h
from praxis_contracts.assets import AssetStatus
from praxis_contracts.errors import NotFound
from praxis_contracts.inventory import (
    AssetStatusChanged,
    AssetStatusHistoryEntry,
    AssetStatusHistoryPage,
    ListAssetStatusHistory,
)
from praxis_runtime.db import Database, KeptConnection
from praxis_runtime.logging import context_headers
from praxis_runtime.outbox import OutboxRelay, SqlUnitOfWork, UnitOfWork
from praxis_runtime.publisher import Outgoing
from praxis_runtime.query import apply_filters, fetch_page, where_all

log = logging.getLogger(__name__)

BUSY = frozenset({AssetStatus.RESERVED, AssetStatus.IN_USE})
"""Statuses that mean a run holds the asset."""

_LOCK_ORDER = AssetRow.accession_id
"""Rows are locked in one order, so concurrent batches never deadlock."""

OnChange = Callable[[list[AssetStatusChanged]], None]


def status_msg_id(event: AssetStatusChanged) -> str:
    """The message id of a status event (JetStream drops a re-published copy)."""
    return f"asset-status:{event.asset_id}:{int(event.at.timestamp() * 1e6)}:{event.status.value}"


def emit_status(uow: UnitOfWork, events: Iterable[AssetStatusChanged]) -> None:
    for event in events:
        uow.emit(event, msg_id=status_msg_id(event))


@dataclass(frozen=True)
class StatusChange:
    """Set one asset's status; ``run_id`` names the run behind it, if any."""

    asset_id: uuid.UUID
    status: AssetStatus
    reason: str = ""
    run_id: uuid.UUID | None = None


class StatusRecorder:
    """Status changes and their history; ``on_change`` sees every committed batch of events."""

    def __init__(self, db: Database, relay: OutboxRelay, on_change: OnChange | None = None) -> None:
        self.db = db
        self.relay = relay
        self.on_change = on_change
        self._conn = db.kept_connection()

    async def set_status(self, changes: Sequence[StatusChange]) -> list[AssetStatusChanged]:
        """Apply changes in order in one statement; an event and a history row for every real
        transition (an asset reserved and released within one batch records both).

        Unknown assets (deleted meanwhile) are skipped.
        """
        if not changes:
            return []
        events, outbox = await apply_sequence(self._conn, changes)
        if outbox:
            self.relay.committed(outbox)  # the statement committed their outbox rows
        return self._committed(events)

    async def reconcile(self, held: Mapping[uuid.UUID, uuid.UUID]) -> list[AssetStatusChanged]:
        """Make statuses agree with the live leases (``asset id -> run id``) at start-up.

        Available assets under a lease become ``reserved``; reserved or in-use assets without one
        become ``available``. ``maintenance`` and ``error`` are left alone.
        """
        busy = [status.value for status in BUSY]
        stale = or_(
            and_(
                AssetRow.status == AssetStatus.AVAILABLE.value,
                AssetRow.accession_id.in_(list(held)),
            ),
            and_(AssetRow.status.in_(busy), AssetRow.accession_id.not_in(list(held))),
        )
        async with SqlUnitOfWork(self.db, self.relay) as uow:
            session = uow.session
            stale_ids = (
                await session.scalars(
                    select(AssetRow.accession_id)
                    .where(stale)
                    .order_by(_LOCK_ORDER)
                    .with_for_update()
                )
            ).all()
            wanted = {
                asset_id: StatusChange(
                    asset_id, AssetStatus.RESERVED, "lease held at start-up", held[asset_id]
                )
                if asset_id in held
                else StatusChange(asset_id, AssetStatus.AVAILABLE, "no lease held at start-up")
                for asset_id in stale_ids
            }
            events = await apply(session, wanted, AssetRow.accession_id.in_(stale_ids))
            emit_status(uow, events)
        return self._committed(events)

    async def history(self, query: ListAssetStatusHistory) -> AssetStatusHistoryPage:
        history = StatusHistoryRow
        stmt = where_all(
            select(history),
            history.asset_id == query.accession_id if query.accession_id else None,
            history.status == query.status if query.status else None,
        )
        stmt = apply_filters(
            stmt,
            query.filters,
            created_at=history.at,
            sortable={"at": history.at, "status": history.status},
            relations={
                "protocol_run_accession_id": history.run_id,
                "machine_accession_id": history.asset_id,
                "resource_accession_id": history.asset_id,
            },
        ).order_by(history.id.desc())
        async with self.db.transaction() as session:
            if query.accession_id is not None:
                await _check_asset(session, query.accession_id, query.kind)
            rows, total = await fetch_page(session, stmt, query.filters)
        f = query.filters
        return AssetStatusHistoryPage(
            items=[_history_entry(row) for row in rows], total=total, limit=f.limit, offset=f.offset
        )

    def _committed(self, events: list[AssetStatusChanged]) -> list[AssetStatusChanged]:
        if events and self.on_change is not None:
            self.on_change(events)
        return events


class StatusQueue:
    """Applies status changes in submission order, off the caller's path (their events go out
    through the outbox).

    ``submit`` is synchronous and returns at once; one worker applies the batches one after
    another, so an asset's changes land in the order they were submitted. A batch that fails is
    logged and dropped: ``reconcile`` at the next start-up repairs what it left behind.
    """

    def __init__(self, recorder: StatusRecorder) -> None:
        self.recorder = recorder
        self._pending: asyncio.Queue[list[StatusChange]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def submit(self, changes: Iterable[StatusChange]) -> None:
        batch = list(changes)
        if batch:
            self._pending.put_nowait(batch)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="asset-status")

    async def flush(self) -> None:
        """Wait until every batch submitted so far is applied (and its events published)."""
        await self._pending.join()

    async def stop(self) -> None:
        """Apply what is pending, then stop the worker."""
        if self._worker is None:
            return
        await self.flush()
        self._worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        self._worker = None

    async def _work(self) -> None:
        while True:
            batches = [await self._pending.get()]
            while not self._pending.empty():  # what queued meanwhile goes in the same transaction
                batches.append(self._pending.get_nowait())
            changes = [change for batch in batches for change in batch]
            try:
                await self.recorder.set_status(changes)
            except Exception:
                log.exception("recording %d asset status changes failed", len(changes))
            finally:
                for _ in batches:
                    self._pending.task_done()


async def apply(
    session: AsyncSession,
    wanted: Mapping[uuid.UUID, StatusChange],
    where: ColumnElement[bool],
) -> list[AssetStatusChanged]:
    """Lock the assets ``where`` selects, change those whose status differs, record history."""
    columns = select(AssetRow.accession_id, AssetRow.workcell_id, AssetRow.name, AssetRow.status)
    locked = (
        await session.execute(columns.where(where).order_by(_LOCK_ORDER).with_for_update())
    ).all()
    now = datetime.now(UTC)
    events = [
        AssetStatusChanged(
            asset_id=asset_id,
            workcell_id=workcell_id,
            name=name,
            status=wanted[asset_id].status,
            previous=AssetStatus(status),
            reason=wanted[asset_id].reason,
            run_id=wanted[asset_id].run_id,
            at=now,
        )
        for asset_id, workcell_id, name, status in locked
        if asset_id in wanted and wanted[asset_id].status != status
    ]
    if not events:
        return []
    order = {asset_id: i for i, asset_id in enumerate(wanted)}
    events.sort(key=lambda event: order[event.asset_id])
    new_status = case(
        {event.asset_id: event.status.value for event in events}, value=AssetRow.accession_id
    )
    await session.execute(
        update(AssetRow)
        .where(AssetRow.accession_id.in_([event.asset_id for event in events]))
        .values(status=new_status, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    await session.execute(insert(StatusHistoryRow), [history_values(event) for event in events])
    return events


_APPLY_SEQUENCE = f"""
    WITH change AS (
        SELECT * FROM unnest($1::uuid[], $2::varchar[], $3::varchar[], $4::uuid[])
            WITH ORDINALITY AS c(asset_id, status, reason, run_id, ord)
    ),
    locked AS (
        SELECT accession_id, workcell_id, name, status FROM {SCHEMA}.assets
        WHERE accession_id IN (SELECT asset_id FROM change)
        ORDER BY accession_id
        FOR UPDATE
    ),
    walk AS (
        SELECT c.asset_id, l.workcell_id, l.name, c.status, c.reason, c.run_id, c.ord,
               coalesce(lag(c.status) OVER (PARTITION BY c.asset_id ORDER BY c.ord), l.status)
                   AS previous,
               c.ord = max(c.ord) OVER (PARTITION BY c.asset_id) AS last
        FROM change c JOIN locked l ON l.accession_id = c.asset_id
    ),
    timed AS (
        SELECT walk.*,
               $5::timestamptz
                   + (row_number() OVER (ORDER BY ord) - 1) * interval '1 microsecond' AS at
        FROM walk WHERE status <> previous
    ),
    real AS (
        SELECT timed.*,
               'asset-status:' || asset_id || ':'
                   || (extract(epoch FROM at) * 1000000)::bigint || ':' || status AS msg_id
        FROM timed
    ),
    updated AS (
        UPDATE {SCHEMA}.assets AS a SET status = walk.status, updated_at = $5
        FROM walk
        WHERE walk.last AND a.accession_id = walk.asset_id AND a.status <> walk.status
    ),
    history AS (
        INSERT INTO {SCHEMA}.asset_status_history (asset_id, status, previous, reason, run_id, at)
        SELECT asset_id, status, previous, reason, run_id, at FROM real
    ),
    outboxed AS (
        INSERT INTO {SCHEMA}.outbox (subject, payload, headers)
        SELECT '{AssetStatusChanged.subject}.' || asset_id,
               convert_to(json_build_object(
                   'asset_id', asset_id, 'workcell_id', workcell_id, 'name', name,
                   'status', status, 'previous', previous, 'reason', reason,
                   'run_id', run_id, 'at', at)::text, 'UTF8'),
               jsonb_build_object('Nats-Msg-Id', msg_id) || $6::text::jsonb
        FROM real ORDER BY ord
        RETURNING id, subject, payload, headers ->> 'Nats-Msg-Id' AS msg_id
    )
    SELECT r.asset_id, r.workcell_id, r.name, r.status, r.previous, r.reason, r.run_id, r.at,
           o.id AS outbox_id, o.subject, o.payload, r.msg_id
    FROM real r JOIN outboxed o ON o.msg_id = r.msg_id ORDER BY r.ord
"""
"""Apply a sequence of status changes in one statement: lock the assets (in one order, so
concurrent batches never deadlock), walk each asset's changes in order (``previous`` is the status
before each; a change to the status it already has is no change), set final statuses, record a
history row and an outbox row (the ``AssetStatusChanged`` event, its message id as
``status_msg_id`` makes it) per real change, and return those changes with their outbox rows
(handed to the relay, which then needs no read back). One round trip on a kept connection.
Done as an ORM transaction of four statements (a ``CASE`` compiled anew for every batch) it was
a large share of the asset-manager's CPU; one statement on a kept connection is a small one
(README, Design measurements)."""


class Applied(NamedTuple):
    events: list[AssetStatusChanged]
    outbox: list[tuple[int, Outgoing]]


async def apply_sequence(conn: KeptConnection, changes: Sequence[StatusChange]) -> Applied:
    """Apply changes in order; an event for every real transition (an asset reserved and
    released within one batch records both), and its committed outbox row. Unknown assets
    (deleted meanwhile) are skipped."""
    context = context_headers()  # the correlation id and actor, the same on every row
    rows = await conn.fetch(
        _APPLY_SEQUENCE,
        [c.asset_id for c in changes],
        [c.status.value for c in changes],
        [c.reason for c in changes],
        [c.run_id for c in changes],
        datetime.now(UTC),
        json.dumps(context),
    )
    # Built without re-validation: every field comes typed from our own columns.
    events = [
        AssetStatusChanged.model_construct(
            asset_id=r["asset_id"],
            workcell_id=r["workcell_id"],
            name=r["name"],
            status=AssetStatus(r["status"]),
            previous=AssetStatus(r["previous"]),
            reason=r["reason"],
            run_id=r["run_id"],
            at=r["at"],
        )
        for r in rows
    ]
    outbox = [
        (
            r["outbox_id"],
            Outgoing(
                r["subject"],
                bytes(r["payload"]),
                {h.MSG_ID: r["msg_id"], **context},
            ),
        )
        for r in rows
    ]
    return Applied(events, outbox)


def history_values(event: AssetStatusChanged) -> dict[str, Any]:
    """The history row of a status event."""
    return {
        "asset_id": event.asset_id,
        "status": event.status.value,
        "previous": event.previous.value if event.previous else None,
        "reason": event.reason,
        "run_id": event.run_id,
        "at": event.at,
    }


async def _check_asset(session: AsyncSession, asset_id: uuid.UUID, kind: str | None) -> None:
    found = await session.scalar(select(AssetRow.kind).where(AssetRow.accession_id == asset_id))
    if found is None or (kind is not None and found != kind):
        raise NotFound(f"{kind or 'asset'} {asset_id} not found", accession_id=str(asset_id))


def _history_entry(row: StatusHistoryRow) -> AssetStatusHistoryEntry:
    return AssetStatusHistoryEntry(
        asset_id=row.asset_id,
        status=AssetStatus(row.status),
        previous=AssetStatus(row.previous) if row.previous else None,
        reason=row.reason,
        run_id=row.run_id,
        at=row.at,
    )
