"""Workcell state snapshots: record them, keep the newest state of each asset, prune, restore.

The orchestrator writes each snapshot's body (``WorkcellSnapshot`` JSON) into the
``praxis_workcell_state`` object store and publishes ``WorkcellStateRecorded`` naming it. Here:

- the snapshot's metadata becomes a row (the same snapshot twice is one row: the second is a
  no-op), and each asset it covers takes its state as the asset's recorded ``state`` unless the
  asset already holds a state recorded at or after the snapshot was taken (events may arrive out
  of order: an older snapshot never overwrites newer state). Assets deleted since are skipped;
- retention keeps the newest ``kept`` snapshots of each workcell, and every one taken less
  than ``kept_seconds`` ago (a snapshot just listed is not gone a minute later). Others are
  marked pruned in the recording transaction; their objects are deleted after the commit and
  the rows with them.
  A failed delete leaves the row marked, and the next prune of the workcell tries again. An
  asset's recorded state lives in its own row, so pruning never loses current state;
- ``restore`` writes a snapshot of kind ``restored`` (the chosen assets' states from the source),
  makes those states the assets' recorded state and emits ``WorkcellStateRestored`` through the
  outbox in the same transaction. Refused while a run holds any of the assets: a live lease in
  the mirror, or a ``reserved``/``in_use`` status (the status follows the lease moments later).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore
from pydantic import ValidationError
from sqlalchemy import JSON, Table, bindparam, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from praxis_asset_manager.inventory import Inventory, asset_view
from praxis_asset_manager.inventory_commands import _workcell
from praxis_asset_manager.orm import AssetRow, SnapshotRow, WorkcellRow
from praxis_asset_manager.status import BUSY
from praxis_contracts.errors import (
    Conflict,
    InvalidInput,
    InvalidRequest,
    NotFound,
    Unavailable,
)
from praxis_contracts.inventory import AssetMoved
from praxis_contracts.runs import CallResult, GetCallResult, call_result_object
from praxis_contracts.state import (
    AssetState,
    GetSnapshot,
    ListSnapshots,
    RestoreSnapshot,
    SetAssetState,
    SnapshotInfo,
    SnapshotKind,
    SnapshotPage,
    WorkcellSnapshot,
    WorkcellStateRecorded,
    WorkcellStateRestored,
    snapshot_object_name,
)
from praxis_contracts.topology import workcell_state
from praxis_plr.edit import edited_state
from praxis_plr.layout import (
    definition_location,
    embeds,
    is_moved,
    placed_definition,
    without_children,
)
from praxis_runtime.bus import Handlers
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay, SqlUnitOfWork
from praxis_runtime.query import apply_filters, fetch_page, where_all
from praxis_runtime.topology import TopologyMissing, verify_store

log = logging.getLogger(__name__)

_ASSETS = cast(Table, AssetRow.__table__)
_SET_STATE = (
    update(_ASSETS)
    .where(_ASSETS.c.accession_id == bindparam("b_id"))
    .values(
        state=bindparam("b_state", type_=JSON),
        state_recorded_at=bindparam("b_at"),
        state_snapshot_id=bindparam("b_snapshot"),
        updated_at=bindparam("b_now"),
    )
)
"""One asset's recorded state (executed once per asset, as one batch)."""


class StateStores:
    """Each workcell's state store (``praxis_state_<workcell>``), bound when first needed and
    checked to exist (provisioning creates one per workcell of the deployment)."""

    def __init__(self, js: Callable[[], JetStreamContext]) -> None:
        self._js = js
        self._stores: dict[str, ObjectStore] = {}

    async def of(self, workcell: str) -> ObjectStore:
        if workcell not in self._stores:
            spec = workcell_state(workcell)
            try:
                # A store this identity may not reach (a workcell never provisioned) is never
                # answered: say so within a request's time, not with the caller's time-out.
                await asyncio.wait_for(verify_store(self._js(), spec), STORE_CHECK_SECONDS)
            except TopologyMissing as exc:
                raise InvalidInput(str(exc), workcell=workcell) from exc
            except TimeoutError as exc:
                raise Unavailable(
                    f"the state store of workcell {workcell!r} cannot be reached: it is "
                    "provisioned when the workcell is served (its orchestrator's identity and "
                    "store), or NATS is electing a leader; try again",
                    workcell=workcell,
                ) from exc
            self._stores[workcell] = await self._js().object_store(spec.bucket)
        return self._stores[workcell]


RESULTS_PRUNE_EVERY_SECONDS = 3600.0
STORE_CHECK_SECONDS = 2.0


def _mtime(text: str | None) -> datetime | None:
    """An object's modification time as the server writes it (RFC 3339, nanoseconds)."""
    found = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", text or "")
    if found is None:
        return None
    fraction = (found.group(2) or ".0")[:7]
    zone = "+00:00" if found.group(3) == "Z" else found.group(3)
    return datetime.fromisoformat(f"{found.group(1)}{fraction}{zone}")


def _workcell_of(object_name: str) -> str:
    return object_name.split("/", 1)[0]


class Snapshots:
    def __init__(
        self,
        db: Database,
        inventory: Inventory,
        relay: OutboxRelay,
        stores: StateStores,
        kept: int,
        leased: Callable[[uuid.UUID], bool],
        kept_seconds: float = 0.0,
        results_kept_seconds: float = 30 * 86400.0,
    ) -> None:
        self.db = db
        self.inventory = inventory
        self.relay = relay
        self.stores = stores
        self.kept = kept
        self.kept_seconds = kept_seconds
        self.results_kept_seconds = results_kept_seconds
        self._results_pruned: dict[str, float] = {}  # workcell -> when (monotonic)
        self._settling: set[uuid.UUID] = set()  # snapshots committed, cache not yet dropped
        self.leased = leased

    # -- recording ----------------------------------------------------------------------------
    async def record(self, event: WorkcellStateRecorded) -> None:
        """Record a snapshot the orchestrator wrote; a no-op for one already recorded."""
        async with self.db.transaction() as session:
            if await session.get(SnapshotRow, event.snapshot_id) is not None:
                return
        expected = snapshot_object_name(event.workcell_name, event.snapshot_id)
        if event.object_name != expected:  # a body is read from its workcell's own store only
            raise InvalidInput(f"snapshot {event.snapshot_id} must be named {expected!r}")
        body = await self._body(event.object_name)
        if body is None:
            raise NotFound(
                f"snapshot {event.snapshot_id} has no body {event.object_name!r}",
                snapshot_id=str(event.snapshot_id),
            )
        if (body.snapshot_id, body.workcell_name) != (event.snapshot_id, event.workcell_name):
            raise InvalidInput(
                f"the body {event.object_name!r} is snapshot {body.snapshot_id} of "
                f"{body.workcell_name!r}, not {event.snapshot_id} of {event.workcell_name!r}"
            )
        now = datetime.now(UTC)
        async with SqlUnitOfWork(self.db, self.relay) as uow:
            session = uow.session
            # The workcell's row locked: snapshots of one workcell are recorded one at a time,
            # so each retention pass sees the others' rows (two at once each kept the newest
            # ``kept`` it could see, and one too many survived: seen under load).
            workcell_id = await session.scalar(
                select(WorkcellRow.accession_id)
                .where(WorkcellRow.name == event.workcell_name)
                .with_for_update()
            )
            if workcell_id is None:
                log.warning(
                    "snapshot %s of unknown workcell %r ignored",
                    event.snapshot_id,
                    event.workcell_name,
                )
                return
            info = SnapshotInfo.model_validate(event.model_dump())
            inserted = await session.scalar(
                insert(SnapshotRow)
                .values(_row_values(info, now))
                .on_conflict_do_nothing()
                .returning(SnapshotRow.snapshot_id)
            )
            if inserted is None:  # a concurrent delivery of the same snapshot recorded it
                return
            changed = await _set_states(
                session, workcell_id, body.assets, info, now, only_older=True
            )
            # Where a run left its labware, for the assets whose state this snapshot is the
            # newest of (an older snapshot arriving late moves nothing back).
            for moved in await _set_placements(
                session, workcell_id, [a for a in body.assets if a.asset_id in changed], info, now
            ):
                uow.emit(moved, msg_id=f"moved:{info.snapshot_id}:{moved.asset_id}")
            await self._mark_pruned(session, event.workcell_name, now)
            if changed:  # from its commit until the cache is dropped (``record_final``)
                self._settling.add(info.snapshot_id)
        if changed:
            self.inventory.invalidate()
            self._settling.discard(info.snapshot_id)
        await self.prune(event.workcell_name)
        await self.prune_results(event.workcell_name)

    async def record_final(self, workcell: str, snapshot_id: uuid.UUID) -> None:
        """Record a run's final snapshot now if its ``WorkcellStateRecorded`` has not been
        consumed yet: the run's leases are released only after, so the next run on its assets
        finds them where and as it left them. A no-op once recorded."""
        try:
            async with self.db.transaction() as session:
                if await session.get(SnapshotRow, snapshot_id) is not None:
                    return
            body = await self._body(snapshot_object_name(workcell, snapshot_id))
            if body is None:  # pruned already, or never stored: its event says what happened
                log.warning("final snapshot %s of %r is not in the store", snapshot_id, workcell)
                return
            info = SnapshotInfo.model_validate(body.model_dump(exclude={"assets"}))
            await self.record(WorkcellStateRecorded(**info.model_dump()))
        finally:
            # Recorded by the event's consumer, which committed and has not dropped the cached
            # layouts yet (it yielded in between): dropped here, so the next placement reads
            # the moves. Otherwise the cache is current: a release costs no reload.
            if snapshot_id in self._settling:
                self.inventory.invalidate()

    # -- retention ----------------------------------------------------------------------------
    async def _mark_pruned(self, session: AsyncSession, workcell: str, now: datetime) -> None:
        newest = (
            select(SnapshotRow.snapshot_id)
            .where(SnapshotRow.workcell_name == workcell, SnapshotRow.pruned_at.is_(None))
            .order_by(SnapshotRow.taken_at.desc(), SnapshotRow.snapshot_id.desc())
            .limit(self.kept)
        )
        await session.execute(
            update(SnapshotRow)
            .where(
                SnapshotRow.workcell_name == workcell,
                SnapshotRow.pruned_at.is_(None),
                SnapshotRow.snapshot_id.not_in(newest.scalar_subquery()),
                SnapshotRow.taken_at < now - timedelta(seconds=self.kept_seconds),
            )
            .values(pruned_at=now)
            .execution_options(synchronize_session=False)
        )

    async def prune(self, workcell: str) -> int:
        """Delete the objects of the workcell's pruned snapshots, then their rows; what fails
        to delete stays marked for the next prune. Returns how many went."""
        async with self.db.transaction() as session:
            pruned = (
                await session.execute(
                    select(SnapshotRow.snapshot_id, SnapshotRow.object_name).where(
                        SnapshotRow.workcell_name == workcell, SnapshotRow.pruned_at.is_not(None)
                    )
                )
            ).all()
        gone = []
        for snapshot_id, object_name in pruned:
            try:
                await (await self.stores.of(workcell)).delete(object_name)
            except ObjectNotFoundError:
                pass  # deleted by an earlier prune that failed before its rows went
            except Exception as exc:
                log.warning("deleting pruned snapshot %s failed (retried): %s", snapshot_id, exc)
                continue
            gone.append(snapshot_id)
        if gone:
            async with self.db.transaction() as session:
                await session.execute(delete(SnapshotRow).where(SnapshotRow.snapshot_id.in_(gone)))
        return len(gone)

    async def prune_results(self, workcell: str, *, force: bool = False) -> int:
        """Delete the workcell's call results (``<workcell>/results/…``) older than
        ``results_kept_seconds``; at most once an hour a workcell (it lists the store) unless
        ``force``. Never fails a recording: what fails is tried at the next pass."""
        started = time.monotonic()
        last = self._results_pruned.get(workcell)
        if not force and last is not None and started - last < RESULTS_PRUNE_EVERY_SECONDS:
            return 0
        self._results_pruned[workcell] = started
        cutoff = datetime.now(UTC) - timedelta(seconds=self.results_kept_seconds)
        prefix = f"{workcell}/results/"
        gone = 0
        try:
            store = await self.stores.of(workcell)
            for info in await store.list(ignore_deletes=True):
                written = _mtime(info.mtime)
                if info.name.startswith(prefix) and written is not None and written < cutoff:
                    await store.delete(info.name)
                    gone += 1
        except NotFoundError:
            pass  # an empty store
        except Exception as exc:
            log.warning(
                "pruning the call results of %r failed (tried again later): %s", workcell, exc
            )
        return gone

    # -- reads --------------------------------------------------------------------------------
    async def list(self, query: ListSnapshots) -> SnapshotPage:
        async with self.db.transaction() as session:
            workcell = await _workcell(session, query.workcell)
            covering = None
            if query.asset is not None:
                covering = or_(
                    SnapshotRow.asset_names.contains([query.asset]),
                    SnapshotRow.asset_ids.contains([_id_text(query.asset)]),
                )
            stmt = where_all(
                select(SnapshotRow),
                SnapshotRow.workcell_name == workcell.name,
                SnapshotRow.pruned_at.is_(None),
                SnapshotRow.run_id == query.run_id if query.run_id else None,
                covering,
            )
            stmt = apply_filters(
                stmt,
                query.filters,
                created_at=SnapshotRow.taken_at,
                sortable={"taken_at": SnapshotRow.taken_at, "kind": SnapshotRow.kind},
                relations={"protocol_run_accession_id": SnapshotRow.run_id},
            ).order_by(SnapshotRow.snapshot_id.desc())  # stable within equal sort keys
            rows, total = await fetch_page(session, stmt, query.filters)
        f = query.filters
        return SnapshotPage(
            items=[_info(r) for r in rows], total=total, limit=f.limit, offset=f.offset
        )

    async def get(self, query: GetSnapshot) -> WorkcellSnapshot:
        async with self.db.transaction() as session:
            workcell = await _workcell(session, query.workcell)
            info = _info(await _snapshot(session, workcell.name, query.snapshot_id))
        body = await self._body(info.object_name)
        if body is None:  # pruned since the row was read
            raise NotFound(f"snapshot {query.snapshot_id} not found")
        return WorkcellSnapshot(**info.model_dump(), assets=body.assets)

    async def call_result(self, query: GetCallResult) -> CallResult:
        """A protocol call's large return value, kept in its workcell's store by the edge."""
        parts = query.object_name.split("/")
        if (
            len(parts) != 4
            or not parts[3].isdigit()
            or query.object_name != call_result_object(parts[0], query.run_id, int(parts[3]))
        ):
            raise InvalidInput(
                f"{query.object_name!r} is not a result of run {query.run_id}",
                field="object_name",
            )
        try:
            found = await (await self.stores.of(parts[0])).get(query.object_name)
        except ObjectNotFoundError:
            raise NotFound(f"result {query.object_name!r} not found") from None
        try:
            result = json.loads(found.data or b"null")
        except ValueError as exc:
            raise InvalidInput(f"result {query.object_name!r} is not JSON") from exc
        return CallResult(run_id=query.run_id, object_name=query.object_name, result=result)

    # -- restore ------------------------------------------------------------------------------
    async def restore(self, cmd: RestoreSnapshot) -> SnapshotInfo:
        async with self.db.transaction() as session:
            workcell = await _workcell(session, cmd.workcell)
            source = _info(await _snapshot(session, workcell.name, cmd.snapshot_id))
        body = await self._body(source.object_name)
        if body is None:
            raise NotFound(f"snapshot {cmd.snapshot_id} not found")
        # A restore brings back liquid and tips, never a place: where labware is, is physical.
        chosen = [
            a.model_copy(update={"placement": None}) for a in _chosen(body.assets, cmd.assets)
        ]
        async with self.db.transaction() as session:
            existing = await _statuses(session, workcell.accession_id, chosen)
        chosen = [a for a in chosen if a.asset_id in existing]  # deleted since: nothing to restore
        if not chosen:
            raise InvalidRequest("none of the snapshot's assets exist any more")
        self._refuse_if_held(chosen, existing)
        return await self._write(
            workcell, chosen, existing, "restored", source.snapshot_id, cmd.reason, cmd.actor
        )

    async def set_state(self, cmd: SetAssetState) -> SnapshotInfo:
        """An operator's change to a labware's state (``praxis_plr.edit``), written like a
        restore: a snapshot of kind ``set``, the asset's recorded state, the orchestrator's cue."""
        async with self.db.transaction() as session:
            row = await session.get(AssetRow, cmd.accession_id)
            if row is None:
                raise NotFound(f"asset {cmd.accession_id} not found")
            workcell = await _workcell(session, str(row.workcell_id))
            asset = asset_view(row)
        state = edited_state(asset, cmd.state or None, cmd.tips or None)
        chosen = [AssetState(asset_id=asset.accession_id, asset_name=asset.name, state=state)]
        async with self.db.transaction() as session:
            existing = await _statuses(session, workcell.accession_id, chosen)
        self._refuse_if_held(chosen, existing)
        return await self._write(workcell, chosen, existing, "set", None, cmd.reason, cmd.actor)

    async def _write(
        self,
        workcell: WorkcellRow,
        chosen: builtins.list[AssetState],  # this class has a method ``list``
        existing: dict[uuid.UUID, str],
        kind: SnapshotKind,
        source: uuid.UUID | None,
        reason: str,
        actor: str | None,
    ) -> SnapshotInfo:
        """Record ``chosen`` as a snapshot of ``kind`` and as its assets' state, and tell the
        orchestrator (``WorkcellStateRestored``), unless a run took any of them meanwhile."""
        now = datetime.now(UTC)
        new_id = uuid.uuid4()
        draft = WorkcellSnapshot(
            snapshot_id=new_id,
            workcell_name=workcell.name,
            kind=kind,
            taken_at=now,
            asset_ids=[a.asset_id for a in chosen],
            asset_names=[a.asset_name for a in chosen],
            object_name=snapshot_object_name(workcell.name, new_id),
            assets=chosen,
        )
        data = draft.model_dump_json().encode()
        info = SnapshotInfo.model_validate(
            draft.model_dump(exclude={"assets"}) | {"size_bytes": len(data)}
        )
        store = await self.stores.of(workcell.name)
        await store.put(info.object_name, data)
        try:
            async with SqlUnitOfWork(self.db, self.relay) as uow:
                session = uow.session
                # The workcell first, as recording does (one order of locks: no deadlock).
                await session.execute(
                    select(WorkcellRow.accession_id)
                    .where(WorkcellRow.accession_id == workcell.accession_id)
                    .with_for_update()
                )
                locked = await _statuses(session, workcell.accession_id, chosen, lock=True)
                if set(locked) != set(existing):
                    raise Conflict("the workcell's assets changed meanwhile; try again")
                self._refuse_if_held(chosen, locked)
                await session.execute(insert(SnapshotRow).values(_row_values(info, now)))
                await _set_states(session, workcell.accession_id, chosen, info, now)
                await self._mark_pruned(session, workcell.name, now)
                uow.emit(
                    WorkcellStateRestored(
                        workcell_name=workcell.name,
                        restored=info,
                        source_snapshot_id=source,
                        reason=reason,
                        actor=actor,
                    ),
                    msg_id=f"state-restored:{new_id}",
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await store.delete(info.object_name)
            raise
        self.inventory.invalidate()
        await self.prune(workcell.name)
        return info

    def _refuse_if_held(self, chosen: Iterable[AssetState], statuses: dict[uuid.UUID, str]) -> None:
        held = sorted(
            a.asset_name
            for a in chosen
            if self.leased(a.asset_id) or statuses.get(a.asset_id) in BUSY
        )
        if held:
            raise Conflict(
                f"a run holds {', '.join(held)}: try again once it has released them", assets=held
            )

    async def _body(self, object_name: str) -> WorkcellSnapshot | None:
        try:
            result = await (await self.stores.of(_workcell_of(object_name))).get(object_name)
        except ObjectNotFoundError:
            return None
        try:
            return WorkcellSnapshot.model_validate_json(result.data or b"")
        except ValidationError as exc:
            raise InvalidInput(f"snapshot body {object_name!r} is malformed: {exc}") from exc


async def _snapshot(session: AsyncSession, workcell: str, snapshot_id: uuid.UUID) -> SnapshotRow:
    row = await session.get(SnapshotRow, snapshot_id)
    if row is None or row.workcell_name != workcell or row.pruned_at is not None:
        raise NotFound(
            f"snapshot {snapshot_id} of workcell {workcell!r} not found",
            snapshot_id=str(snapshot_id),
        )
    return row


def _chosen(assets: list[AssetState], names: list[str] | None) -> list[AssetState]:
    if names is None:
        return list(assets)
    by_name = {a.asset_name: a for a in assets}
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        raise InvalidInput(
            f"the snapshot does not cover {', '.join(unknown)}", field="assets", unknown=unknown
        )
    return [by_name[n] for n in dict.fromkeys(names)]


async def _statuses(
    session: AsyncSession,
    workcell_id: uuid.UUID,
    assets: Sequence[AssetState],
    *,
    lock: bool = False,
) -> dict[uuid.UUID, str]:
    """Status of each of ``assets`` still in the workcell (rows locked in id order if ``lock``)."""
    stmt = (
        select(AssetRow.accession_id, AssetRow.status)
        .where(
            AssetRow.workcell_id == workcell_id,
            AssetRow.accession_id.in_([a.asset_id for a in assets]),
        )
        .order_by(AssetRow.accession_id)
    )
    if lock:
        stmt = stmt.with_for_update()
    return {asset_id: status for asset_id, status in (await session.execute(stmt)).all()}


async def _set_states(
    session: AsyncSession,
    workcell_id: uuid.UUID,
    assets: Sequence[AssetState],
    info: SnapshotInfo,
    now: datetime,
    *,
    only_older: bool = False,
) -> set[uuid.UUID]:
    """Make ``assets``' states the recorded state of those still in the workcell (with
    ``only_older``: of those whose recorded state is older than the snapshot); their rows stay
    locked. Returns their ids."""
    stmt = (
        select(AssetRow.accession_id)
        .where(
            AssetRow.workcell_id == workcell_id,
            AssetRow.accession_id.in_([a.asset_id for a in assets]),
        )
        .order_by(AssetRow.accession_id)  # the lock order of every asset-manager writer
        .with_for_update()
    )
    if only_older:
        stmt = stmt.where(
            or_(
                AssetRow.state_recorded_at.is_(None),
                AssetRow.state_recorded_at < info.taken_at,
            )
        )
    ids = set((await session.scalars(stmt)).all())
    params: list[dict[str, Any]] = [
        {
            "b_id": a.asset_id,
            "b_state": a.state,
            "b_at": info.taken_at,
            "b_snapshot": info.snapshot_id,
            "b_now": now,
        }
        for a in assets
        if a.asset_id in ids
    ]
    if params:
        await session.execute(_SET_STATE, params)
    return {p["b_id"] for p in params}


async def _set_placements(
    session: AsyncSession,
    workcell_id: uuid.UUID,
    assets: Sequence[AssetState],
    info: SnapshotInfo,
    now: datetime,
) -> list[AssetMoved]:
    """Write where the live workcell has each labware (``placement``) into the inventory when
    it is somewhere else there: parent, slot and the location in its definition, and out of an
    old parent's definition that still held it (labware at a deck position is part of it).
    The rows of ``assets`` are locked already (``_set_states``). Returns the moves."""
    placed = {a.asset_id: a.placement for a in assets if a.placement is not None}
    if not placed:
        return []
    rows = {
        row.accession_id: row
        for row in (
            await session.scalars(
                select(AssetRow).where(
                    AssetRow.workcell_id == workcell_id,
                    or_(
                        AssetRow.accession_id.in_(placed),
                        AssetRow.accession_id.in_(
                            [p.parent_id for p in placed.values() if p.parent_id is not None]
                        ),
                    ),
                )
            )
        ).all()
    }
    moves: list[AssetMoved] = []
    for asset_id, place in placed.items():
        row = rows.get(asset_id)
        if row is None or row.kind != "resource":
            continue
        if place.parent_id is not None and place.parent_id not in rows:
            log.warning(
                "snapshot %s: %s is in %s, which is not an asset of its workcell; not moved",
                info.snapshot_id,
                row.name,
                place.parent,
            )
            continue
        previous = await _parent(session, row.parent_id, rows)
        if not is_moved(
            parent_id=row.parent_id,
            parent_name=previous.name if previous is not None else None,
            slot=row.slot,
            definition=row.definition,
            placement=place,
        ):
            if place.location is not None and definition_location(row.definition) is None:
                row.definition = placed_definition(
                    row.definition, row.definition.get("parent_name"), place.location
                )
            continue
        root = previous
        while root is not None and root.parent_id is not None:
            root = await _parent(session, root.parent_id, rows)
        if root is not None and embeds(root.definition, row.name):
            root.definition = without_children(root.definition, {row.name})
        parent = rows.get(place.parent_id) if place.parent_id is not None else None
        row.definition = placed_definition(
            row.definition, place.slot or (parent.name if parent else None), place.location
        )
        moves.append(
            AssetMoved(
                asset_id=row.accession_id,
                workcell_id=workcell_id,
                name=row.name,
                parent_id=place.parent_id,
                parent=parent.name if parent is not None else None,
                slot=place.slot,
                previous_parent_id=row.parent_id,
                previous_parent=previous.name if previous is not None else None,
                previous_slot=row.slot,
                run_id=info.run_id,
                snapshot_id=info.snapshot_id,
                at=info.taken_at,
            )
        )
        row.parent_id, row.slot, row.updated_at = place.parent_id, place.slot, now
    return moves


async def _parent(
    session: AsyncSession, parent_id: uuid.UUID | None, rows: dict[uuid.UUID, AssetRow]
) -> AssetRow | None:
    if parent_id is None:
        return None
    if parent_id not in rows:
        found = await session.get(AssetRow, parent_id)
        if found is None:
            return None
        rows[parent_id] = found
    return rows[parent_id]


def _row_values(info: SnapshotInfo, now: datetime) -> dict[str, Any]:
    return {
        "snapshot_id": info.snapshot_id,
        "workcell_name": info.workcell_name,
        "kind": info.kind,
        "run_id": info.run_id,
        "checkpoint": info.checkpoint,
        "taken_at": info.taken_at,
        "asset_ids": [str(a) for a in info.asset_ids],
        "asset_names": list(info.asset_names),
        "object_name": info.object_name,
        "size_bytes": info.size_bytes,
        "recorded_at": now,
    }


def _info(row: SnapshotRow) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=row.snapshot_id,
        workcell_name=row.workcell_name,
        kind=row.kind,
        run_id=row.run_id,
        checkpoint=row.checkpoint,
        taken_at=row.taken_at,
        asset_ids=[uuid.UUID(a) for a in row.asset_ids],
        asset_names=row.asset_names,
        object_name=row.object_name,
        size_bytes=row.size_bytes,
    )


def _id_text(ref: str) -> str:
    """An asset id in the form the rows keep, or ``ref`` itself."""
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        return ref


handlers: Handlers[Snapshots] = Handlers()


@handlers.consume(WorkcellStateRecorded, durable="asset-manager-state-recorded", max_workers=4)
async def state_recorded(event: WorkcellStateRecorded, snapshots: Snapshots) -> None:
    await snapshots.record(event)


@handlers.rpc(ListSnapshots)
async def list_snapshots(query: ListSnapshots, snapshots: Snapshots) -> SnapshotPage:
    return await snapshots.list(query)


@handlers.rpc(GetSnapshot)
async def get_snapshot(query: GetSnapshot, snapshots: Snapshots) -> WorkcellSnapshot:
    return await snapshots.get(query)


@handlers.rpc(GetCallResult)
async def get_call_result(query: GetCallResult, snapshots: Snapshots) -> CallResult:
    return await snapshots.call_result(query)


@handlers.rpc(RestoreSnapshot)
async def restore_snapshot(cmd: RestoreSnapshot, snapshots: Snapshots) -> SnapshotInfo:
    return await snapshots.restore(cmd)


@handlers.rpc(SetAssetState)
async def set_asset_state(cmd: SetAssetState, snapshots: Snapshots) -> SnapshotInfo:
    return await snapshots.set_state(cmd)
