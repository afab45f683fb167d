"""Asset statuses: batched changes with their history, reconciliation with live leases.

``reserved`` and ``in_use`` follow leases and runs (set by reservations through ``set_status``);
``maintenance`` and ``error`` are set by users. Every real change is one history row and one
``AssetStatusChanged`` event, which the caller publishes after the commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    DateTime,
    String,
    Uuid,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from praxis_asset_manager.orm import AssetRow, StatusHistoryRow
from praxis_contracts.assets import AssetStatus
from praxis_contracts.base import Command, Event
from praxis_contracts.errors import NotFound
from praxis_contracts.inventory import (
    AssetStatusChanged,
    AssetStatusHistoryEntry,
    AssetStatusHistoryPage,
    ListAssetStatusHistory,
)
from praxis_runtime.db import Database
from praxis_runtime.query import apply_filters, fetch_page, where_all

log = logging.getLogger(__name__)

BUSY = frozenset({AssetStatus.RESERVED, AssetStatus.IN_USE})
"""Statuses that mean a run holds the asset."""

_LOCK_ORDER = AssetRow.accession_id
"""Rows are locked in one order, so concurrent batches never deadlock."""

OnChange = Callable[[list[AssetStatusChanged]], None]


class Publish(Protocol):
    """``Bus.publish``."""

    def __call__(
        self, message: Command | Event, *, msg_id: str | None = None
    ) -> Awaitable[int]: ...


async def publish_status(publish: Publish, events: Iterable[AssetStatusChanged]) -> None:
    """Publish committed status changes; the message id makes a retried publish a no-op."""
    await asyncio.gather(
        *(
            publish(
                event,
                msg_id=f"asset-status:{event.asset_id}:{event.at.isoformat()}:{event.status.value}",
            )
            for event in events
        )
    )


@dataclass(frozen=True)
class StatusChange:
    """Set one asset's status; ``run_id`` names the run behind it, if any."""

    asset_id: uuid.UUID
    status: AssetStatus
    reason: str = ""
    run_id: uuid.UUID | None = None


class StatusRecorder:
    """Status changes and their history; ``on_change`` sees every committed batch of events."""

    def __init__(self, db: Database, on_change: OnChange | None = None) -> None:
        self.db = db
        self.on_change = on_change

    async def set_status(self, changes: Sequence[StatusChange]) -> list[AssetStatusChanged]:
        """Apply changes in order in one transaction; an event and a history row for every real
        transition (an asset reserved and released within one batch records both).

        Unknown assets (deleted meanwhile) are skipped.
        """
        if not changes:
            return []
        async with self.db.transaction() as session:
            events = await apply_sequence(session, changes)
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
        async with self.db.transaction() as session:
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
    """Applies status changes in submission order, off the caller's path, and publishes them.

    ``submit`` is synchronous and returns at once; one worker applies the batches one after
    another, so an asset's changes land in the order they were submitted. A batch that fails is
    logged and dropped: ``reconcile`` at the next start-up repairs what it left behind.
    """

    def __init__(self, recorder: StatusRecorder, publish: Publish) -> None:
        self.recorder = recorder
        self.publish = publish
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
                await publish_status(self.publish, await self.recorder.set_status(changes))
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


def _unnest(alias: str, **columns: Any) -> Any:
    """``unnest(:a, :b, ...) AS alias(a, b, ...)``: one array parameter per column."""
    arrays = [bindparam(name, type_=ARRAY(type_)) for name, type_ in columns.items()]
    return func.unnest(*arrays).table_valued(*columns).render_derived(name=alias)


_NEW = _unnest("new", asset_id=Uuid(), status=String())
_ASSETS = AssetRow.__table__
_SET_STATUSES = (
    update(_ASSETS)
    .where(_ASSETS.c.accession_id == _NEW.c.asset_id)
    .values(status=_NEW.c.status, updated_at=bindparam("at"))
)
"""Set many assets' statuses in one statement whose compiled form is cached (a ``CASE`` over
literal values was compiled anew for every batch: measured, most of the recording cost)."""

_ROWS = _unnest(
    "row",
    asset_id=Uuid(),
    status=String(),
    previous=String(),
    reason=String(),
    run_id=Uuid(),
    at=DateTime(timezone=True),
)
_INSERT_HISTORY = insert(StatusHistoryRow.__table__).from_select(
    ["asset_id", "status", "previous", "reason", "run_id", "at"],
    select(*_ROWS.c),
)


async def apply_sequence(
    session: AsyncSession, changes: Sequence[StatusChange]
) -> list[AssetStatusChanged]:
    """Lock the assets once, walk the changes in order, write final statuses and history."""
    ids = sorted({change.asset_id for change in changes})
    columns = select(AssetRow.accession_id, AssetRow.workcell_id, AssetRow.name, AssetRow.status)
    locked = (
        await session.execute(
            columns.where(AssetRow.accession_id.in_(ids)).order_by(_LOCK_ORDER).with_for_update()
        )
    ).all()
    rows = {asset_id: (workcell_id, name) for asset_id, workcell_id, name, _ in locked}
    current = {asset_id: AssetStatus(status) for asset_id, _, _, status in locked}
    start = datetime.now(UTC)
    events: list[AssetStatusChanged] = []
    for change in changes:
        if change.asset_id not in rows or current[change.asset_id] == change.status:
            continue
        workcell_id, name = rows[change.asset_id]
        events.append(
            AssetStatusChanged(
                asset_id=change.asset_id,
                workcell_id=workcell_id,
                name=name,
                status=change.status,
                previous=current[change.asset_id],
                reason=change.reason,
                run_id=change.run_id,
                at=start + timedelta(microseconds=len(events)),  # distinct, ordered
            )
        )
        current[change.asset_id] = change.status
    if not events:
        return []
    changed = sorted({event.asset_id for event in events})
    await session.execute(
        _SET_STATUSES,
        {"asset_id": changed, "status": [current[a].value for a in changed], "at": events[-1].at},
    )
    history = [history_values(event) for event in events]
    await session.execute(
        _INSERT_HISTORY, {name: [row[name] for row in history] for name in history[0]}
    )
    return events


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
