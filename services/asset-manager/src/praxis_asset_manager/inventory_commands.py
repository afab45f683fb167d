"""Inventory commands: create, update and delete workcells and assets, one transaction each.

Assets are created by catalog type name; without a definition the type is instantiated. Assets a
run holds (``reserved``, ``in_use``) cannot be deleted, moved, renamed or have their status set.
Status changes are emitted as events in the same unit of work (published by the outbox relay).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from praxis_asset_manager import discovery
from praxis_asset_manager.catalog import Catalog
from praxis_asset_manager.inventory import Inventory, asset_view, draft_rows, workcell_view
from praxis_asset_manager.orm import AssetRow, StatusHistoryRow, WorkcellRow
from praxis_asset_manager.status import BUSY, emit_status, history_values
from praxis_contracts.assets import (
    Asset,
    AssetDraft,
    AssetStatus,
    SetWorkcellDrain,
    Workcell,
    WorkcellChanged,
    WorkcellLayout,
)
from praxis_contracts.errors import (
    Conflict,
    InvalidInput,
    InvalidRequest,
    NotFound,
    UnknownAssetType,
)
from praxis_contracts.inventory import (
    USER_SETTABLE_STATUSES,
    AssetStatusChanged,
    CatalogEntry,
    CreateAsset,
    CreateWorkcell,
    DeleteAsset,
    DeleteWorkcell,
    UpdateAsset,
    UpdateWorkcell,
)
from praxis_plr.build import backend_data
from praxis_plr.layout import placed_definition
from praxis_plr.live import LiveWorkcell, _deserialize_root
from praxis_plr.validate import check_buildable
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay, SqlUnitOfWork


class InventoryCommands:
    def __init__(
        self, db: Database, inventory: Inventory, catalog: Catalog, relay: OutboxRelay
    ) -> None:
        self.db = db
        self.inventory = inventory
        self.catalog = catalog
        self.relay = relay
        self.on_resumed: Callable[[str], None] | None = None
        """Called with a workcell's name once it is resumed (reservations place its waiters)."""

    def _unit(self) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.db, self.relay)

    # -- workcells ----------------------------------------------------------------------------
    async def create_workcell(self, cmd: CreateWorkcell) -> Workcell:
        row = WorkcellRow(
            accession_id=uuid.uuid4(),
            name=cmd.name,
            description=cmd.description,
            properties=cmd.properties,
            created_at=datetime.now(UTC),
        )
        taken = Conflict(f"workcell {cmd.name!r} already exists", workcell=cmd.name)
        async with self._changing(taken), self._unit() as uow:
            if await _find_workcell(uow.session, cmd.name) is not None:
                raise taken
            uow.session.add(row)
            uow.emit(workcell_changed(row, "created"))
        return workcell_view(row)

    async def set_drain(self, cmd: SetWorkcellDrain) -> Workcell:
        """Drain or resume the workcell (idempotent: no change, no event). Placement reads the
        flag from the inventory, so the cache is dropped; a resume places the waiting runs."""
        async with self._changing(), self._unit() as uow:
            row = await _workcell(uow.session, cmd.workcell, lock=True)
            if bool(row.drained) == cmd.drained:
                return workcell_view(row)
            row.drained = cmd.drained
            row.drain_reason = (cmd.reason or "drained by an operator") if cmd.drained else None
            change = "drained" if cmd.drained else "resumed"
            uow.emit(workcell_changed(row, change, cmd.reason, cmd.actor))
        if not cmd.drained and self.on_resumed is not None:
            self.on_resumed(row.name)
        return workcell_view(row)

    async def update_workcell(self, cmd: UpdateWorkcell) -> Workcell:
        async with self._changing(), self.db.transaction() as session:
            row = await _workcell(session, cmd.workcell)
            if cmd.description is not None:
                row.description = cmd.description
            if cmd.properties is not None:
                row.properties = cmd.properties
        return workcell_view(row)

    async def delete_workcell(self, cmd: DeleteWorkcell) -> None:
        async with self._changing(), self._unit() as uow:
            session = uow.session
            row = await _workcell(session, cmd.workcell)
            uow.emit(workcell_changed(row, "deleted", actor=cmd.actor))
            assets = (
                await session.execute(
                    select(AssetRow.name, AssetRow.status)
                    .where(AssetRow.workcell_id == row.accession_id)
                    .order_by(AssetRow.accession_id)
                    .with_for_update()
                )
            ).all()
            held = sorted(name for name, status in assets if status in BUSY)
            if held:
                raise Conflict(
                    f"workcell {row.name!r} cannot be deleted while runs hold its assets "
                    f"{', '.join(held)}",
                    workcell=row.name,
                    assets=held,
                )
            await session.execute(
                delete(WorkcellRow).where(WorkcellRow.accession_id == row.accession_id)
            )

    # -- assets -------------------------------------------------------------------------------
    async def create_asset(self, cmd: CreateAsset) -> Asset:
        entry = await self.catalog.resolve(cmd.fqn)
        if entry.kind != cmd.kind:
            raise InvalidRequest(
                f"{entry.fqn} is a {entry.kind}, not a {cmd.kind}", fqn=entry.fqn, kind=entry.kind
            )
        for field, given in (("slot", cmd.slot), ("location", cmd.location), ("rails", cmd.rails)):
            if given is not None and cmd.parent is None:
                raise InvalidRequest(f"a {field} needs a parent", field=field)
        if cmd.location is not None and cmd.rails is not None:
            raise InvalidRequest("give location or rails, not both", field="rails")
        shape = await _shape(entry, cmd, await self.catalog.factories())
        placed = cmd.location is not None or cmd.rails is not None
        if not shape.definition and cmd.parent is not None:  # a pump, a sealer: no place
            raise InvalidRequest(
                f"{entry.name} is not a PyLabRobot resource: it sits in no parent",
                field="parent",
            )
        now = datetime.now(UTC)
        taken = Conflict(f"asset {cmd.name!r} already exists in workcell {cmd.workcell!r}")
        async with self._changing(taken), self._unit() as uow:
            session = uow.session
            workcell = await _workcell(session, cmd.workcell)
            for name in (cmd.name, *(child.name for child in shape.children)):
                if await _asset_named(session, workcell.accession_id, name) is not None:
                    raise Conflict(
                        f"asset {name!r} already exists in workcell {cmd.workcell!r}"
                        + ("" if name == cmd.name else f" (built inside {cmd.name!r})")
                    )
            parent = await _parent(session, workcell.accession_id, cmd.parent)
            definition = shape.definition
            if placed:
                assert parent is not None
                where = await asyncio.to_thread(_location, parent, cmd)
                definition = placed_definition(definition, cmd.slot or parent.name, where)
            row = AssetRow(
                accession_id=uuid.uuid4(),
                workcell_id=workcell.accession_id,
                kind=entry.kind,
                name=cmd.name,
                fqn=entry.fqn,
                type_mro=shape.type_mro,
                definition=definition,
                backend=shape.backend,
                state=shape.state,
                parent_id=parent.accession_id if parent else None,
                slot=cmd.slot,
                properties=cmd.properties,
                shareable=cmd.shareable,
                status=AssetStatus.AVAILABLE.value,
                created_at=now,
                updated_at=now,
            )
            rows = [row, *_child_rows(row, shape.children, now)]
            if parent is not None and (placed or entry.kind != "resource" or shape.children):
                # Built where it goes, with everything else on the workcell: it fits there.
                await _check_fits(session, workcell, rows)
            session.add_all(rows)
            events = [
                _status_event(r, AssetStatus.AVAILABLE, None, "created", now, cmd.actor)
                for r in rows
            ]
            await _record(uow, events)
        return asset_view(row)

    async def update_asset(self, cmd: UpdateAsset) -> Asset:
        if cmd.status is not None and cmd.status not in USER_SETTABLE_STATUSES:
            raise InvalidRequest(
                f"status {cmd.status.value!r} is set by reservations, not by users",
                allowed=sorted(s.value for s in USER_SETTABLE_STATUSES),
            )
        if cmd.detach and (cmd.parent is not None or cmd.slot is not None):
            raise InvalidRequest("detach cannot be combined with parent or slot")
        now = datetime.now(UTC)
        events: list[AssetStatusChanged] = []
        taken = Conflict(f"asset {cmd.name!r} already exists in its workcell")
        async with self._changing(taken), self._unit() as uow:
            session = uow.session
            row = await _asset(session, cmd.accession_id, cmd.kind)
            if moves := _moves(row, cmd):
                _refuse_if_held(row, f"its {', '.join(moves)} cannot change")
            if cmd.name is not None and cmd.name != row.name:
                if await _asset_named(session, row.workcell_id, cmd.name) is not None:
                    raise taken
                row.name, row.definition = cmd.name, {**row.definition, "name": cmd.name}
            await _relocate(session, row, cmd)
            if cmd.properties is not None:
                row.properties = cmd.properties
            if cmd.shareable is not None:
                row.shareable = cmd.shareable
            if cmd.status is not None and cmd.status.value != row.status:
                change = (cmd.status, row.status, cmd.reason, now, cmd.actor)
                events.append(_status_event(row, *change))
                row.status = cmd.status.value
            row.updated_at = now
            await _record(uow, events)
        return asset_view(row)

    async def delete_asset(self, cmd: DeleteAsset) -> None:
        async with self._changing(), self.db.transaction() as session:
            row = await _asset(session, cmd.accession_id, cmd.kind)
            _refuse_if_held(row, "it cannot be deleted")
            children = (
                await session.scalars(
                    select(AssetRow.name).where(AssetRow.parent_id == row.accession_id)
                )
            ).all()
            if children:
                raise Conflict(
                    f"asset {row.name!r} holds {', '.join(sorted(children))}: "
                    "move or delete them first",
                    children=sorted(children),
                )
            await session.delete(row)

    @asynccontextmanager
    async def _changing(self, taken: Conflict | None = None) -> AsyncIterator[None]:
        """Around a transaction: a lost uniqueness race is a conflict; success drops the cache."""
        try:
            yield
        except IntegrityError as exc:
            raise taken or Conflict("the inventory changed concurrently; try again") from exc
        self.inventory.invalidate()


@dataclass(frozen=True)
class _Shape:
    definition: dict[str, Any]
    backend: dict[str, Any] | None
    state: dict[str, Any] | None
    type_mro: list[str]
    children: list[AssetDraft]
    """Assets built inside it that are assets of their own (a machine's deck)."""


async def _shape(entry: CatalogEntry, cmd: CreateAsset, factories: Callable[[str], Any]) -> _Shape:
    """The asset's definition: given, or built by PyLabRobot from the type, its arguments and
    its backend (on a thread)."""
    backend = None if cmd.backend is None else await asyncio.to_thread(backend_data, cmd.backend)
    if cmd.definition is not None:
        if cmd.arguments:
            raise InvalidRequest("give a definition or arguments, not both", field="arguments")
        shape = _Shape(cmd.definition, backend, cmd.state, entry.bases, [])
    else:
        built = await asyncio.to_thread(
            discovery.instantiate, entry, cmd.name, cmd.arguments, backend, factories
        )
        root = built.root
        shape = _Shape(
            root.definition,
            root.backend,
            cmd.state if cmd.state is not None else root.state,
            built.type_mro,
            built.drafts[1:],
        )
    has_backend = shape.backend is not None or isinstance(shape.definition.get("backend"), dict)
    if entry.kind == "machine" and not has_backend:
        raise InvalidRequest(f"machine {cmd.name!r} needs a backend", field="backend")
    if cmd.definition is not None or cmd.state is not None:
        # What the caller wrote must build, as the orchestrator will build it (what PyLabRobot
        # built from names is known to). A machine's deck is an asset too, as when built by name.
        decks = await asyncio.to_thread(
            check_buildable,
            kind=entry.kind,
            name=cmd.name,
            fqn=entry.fqn,
            type_mro=shape.type_mro,
            definition=shape.definition,
            backend=shape.backend,
            state=shape.state,
        )
        if cmd.definition is not None:
            shape = replace(shape, children=decks)
    return shape


def _child_rows(root: AssetRow, drafts: list[AssetDraft], now: datetime) -> list[AssetRow]:
    """Rows for the assets built inside ``root`` (a machine's deck), children of it."""
    rows = draft_rows(drafts, {root.name: root.accession_id})
    for row in rows:
        row.workcell_id, row.created_at, row.updated_at = root.workcell_id, now, now
    return rows


def _location(parent: AssetRow, cmd: CreateAsset) -> tuple[float, float, float]:
    """Where ``cmd`` places its asset in ``parent``: its ``location``, or the position of
    Hamilton ``rails`` on the deck ``parent``."""
    if cmd.location is not None:
        return (cmd.location.x, cmd.location.y, cmd.location.z)
    assert cmd.rails is not None
    try:
        deck = _deserialize_root(asset_view(parent))
    except InvalidRequest as exc:
        raise InvalidInput(f"rails: {exc.message}", field="rails") from exc
    to_location = getattr(deck, "rails_to_location", None)
    if not callable(to_location):
        raise InvalidInput(
            f"rails place carriers on a Hamilton deck; {parent.name!r} is a "
            f"{type(deck).__name__}: give a location",
            field="rails",
        )
    where = to_location(cmd.rails)
    return (float(where.x), float(where.y), float(where.z))


async def _check_fits(session: AsyncSession, workcell: WorkcellRow, new: list[AssetRow]) -> None:
    """Build the workcell's PyLabRobot objects with ``new`` in it, as an orchestrator will
    (copies: no machine is set up): a carrier on another, a site taken, a machine that
    cannot sit there is a 422 now, not a failed run."""
    rows = (
        await session.scalars(select(AssetRow).where(AssetRow.workcell_id == workcell.accession_id))
    ).all()
    views = [asset_view(r) for r in [*rows, *new]]
    layout = WorkcellLayout(workcell=workcell_view(workcell), assets=views)
    try:
        await asyncio.to_thread(LiveWorkcell.copies, layout)
    except (InvalidRequest, UnknownAssetType) as exc:
        raise InvalidInput(f"it does not fit there: {exc.message}", field="parent") from exc


def _moves(row: AssetRow, cmd: UpdateAsset) -> list[str]:
    """The fields ``cmd`` changes that a run holding the asset depends on."""
    moves = {
        "name": cmd.name is not None and cmd.name != row.name,
        "parent": cmd.parent is not None or (cmd.detach and row.parent_id is not None),
        "slot": cmd.slot is not None and cmd.slot != row.slot,
        "status": cmd.status is not None and cmd.status.value != row.status,
    }
    return [field for field, changes in moves.items() if changes]


def _refuse_if_held(row: AssetRow, refused: str) -> None:
    if row.status in BUSY:
        raise Conflict(
            f"asset {row.name!r} is {row.status}: {refused} until the run holding it releases it",
            status=row.status,
        )


async def _relocate(session: AsyncSession, row: AssetRow, cmd: UpdateAsset) -> None:
    if cmd.detach:
        row.parent_id, row.slot = None, None
    if cmd.parent is not None:
        parent = await _parent(session, row.workcell_id, cmd.parent)
        assert parent is not None
        await _refuse_cycle(session, row, parent)
        if parent.accession_id != row.parent_id:
            row.parent_id, row.slot = parent.accession_id, None  # the old slot was the old parent's
    if cmd.slot is not None:
        if row.parent_id is None:
            raise InvalidRequest("a slot needs a parent", field="slot")
        row.slot = cmd.slot


async def _refuse_cycle(session: AsyncSession, row: AssetRow, parent: AssetRow) -> None:
    current: AssetRow | None = parent
    while current is not None:
        if current.accession_id == row.accession_id:
            raise InvalidRequest(f"asset {row.name!r} cannot be inside itself", parent=parent.name)
        current = await session.get(AssetRow, current.parent_id) if current.parent_id else None


def workcell_changed(
    row: WorkcellRow, change: str, reason: str | None = None, actor: str | None = None
) -> WorkcellChanged:
    return WorkcellChanged(
        workcell=row.name,
        workcell_id=row.accession_id,
        change=change,
        drained=bool(row.drained),
        reason=reason,
        actor=actor,
        at=datetime.now(UTC),
    )


async def _record(uow: SqlUnitOfWork, events: list[AssetStatusChanged]) -> None:
    """History rows and events of status changes, in the unit's transaction."""
    emit_status(uow, events)
    session = uow.session
    if events:
        await session.flush()  # the asset rows exist before their history rows
        await session.execute(insert(StatusHistoryRow), [history_values(e) for e in events])


def _status_event(
    row: AssetRow,
    status: AssetStatus,
    previous: str | None,
    reason: str,
    at: datetime,
    actor: str | None = None,
) -> AssetStatusChanged:
    return AssetStatusChanged(
        asset_id=row.accession_id,
        workcell_id=row.workcell_id,
        name=row.name,
        status=status,
        previous=AssetStatus(previous) if previous else None,
        reason=reason,
        at=at,
        actor=actor,
    )


def _by_name_or_id(name: Any, accession_id: Any, ref: str) -> Any:
    try:
        return or_(name == ref, accession_id == uuid.UUID(ref))
    except ValueError:
        return name == ref


async def _find_workcell(
    session: AsyncSession, ref: str, *, lock: bool = False
) -> WorkcellRow | None:
    match = _by_name_or_id(WorkcellRow.name, WorkcellRow.accession_id, ref)
    query = select(WorkcellRow).where(match)
    return await session.scalar(query.with_for_update() if lock else query)


async def _workcell(session: AsyncSession, ref: str, *, lock: bool = False) -> WorkcellRow:
    row = await _find_workcell(session, ref, lock=lock)
    if row is None:
        raise NotFound(f"workcell {ref!r} not found", workcell=ref)
    return row


async def _asset(session: AsyncSession, asset_id: uuid.UUID, kind: str | None) -> AssetRow:
    row = await session.get(AssetRow, asset_id, with_for_update=True)
    if row is None or (kind is not None and row.kind != kind):
        raise NotFound(f"{kind or 'asset'} {asset_id} not found", accession_id=str(asset_id))
    return row


async def _asset_named(
    session: AsyncSession, workcell_id: uuid.UUID, name: str
) -> uuid.UUID | None:
    return await session.scalar(
        select(AssetRow.accession_id).where(
            AssetRow.workcell_id == workcell_id, AssetRow.name == name
        )
    )


async def _parent(
    session: AsyncSession, workcell_id: uuid.UUID, ref: str | None
) -> AssetRow | None:
    if ref is None:
        return None
    match = _by_name_or_id(AssetRow.name, AssetRow.accession_id, ref)
    row = await session.scalar(select(AssetRow).where(AssetRow.workcell_id == workcell_id, match))
    if row is None:
        raise InvalidRequest(f"parent {ref!r} is not an asset of this workcell", parent=ref)
    return row
