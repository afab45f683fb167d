"""Inventory: workcells and their machines, decks and labware."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, or_, select

from praxis_asset_manager.matching import UNUSABLE
from praxis_asset_manager.orm import AssetRow, WorkcellRow
from praxis_contracts.assets import (
    Asset,
    AssetDraft,
    AssetPage,
    AssetStatus,
    ListAssets,
    ListWorkcells,
    RegisterWorkcell,
    Workcell,
    WorkcellChanged,
    WorkcellLayout,
    WorkcellPage,
)
from praxis_contracts.errors import InvalidRequest, NotFound
from praxis_contracts.inventory import AssetStatusChanged
from praxis_plr.types import import_type, type_ancestry
from praxis_plr.validate import check_buildable
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay, SqlUnitOfWork
from praxis_runtime.query import apply_filters, fetch_page, where_all


@dataclass(frozen=True)
class Site:
    """A workcell's layout as matching sees it, with its assets by name and by id.

    Asset statuses in it may lag: only ``maintenance`` and ``error`` matter to matching, and
    a change into or out of those refreshes it; reservation statuses do not.
    """

    layout: WorkcellLayout
    by_ref: dict[str, Asset]

    @classmethod
    def of(cls, layout: WorkcellLayout) -> Site:
        by_ref = {a.name: a for a in layout.assets}
        by_ref |= {str(a.accession_id): a for a in layout.assets}
        return cls(layout, by_ref)


class Inventory:
    """The inventory, with every workcell's layout cached until workcells or assets change.

    Reservations change asset statuses many times a second. Those changes are kept aside
    (``apply_statuses``) and patched into the cached layouts only when a layout is read through
    ``layouts``/``layout``; the sites matching uses are rebuilt only for changes that matter to it.
    """

    def __init__(self, db: Database, relay: OutboxRelay | None = None) -> None:
        self.db = db
        self.relay = relay  # WorkcellChanged of a registration goes out through the outbox
        self._sites: dict[uuid.UUID, Site] | None = None
        self._workcells: dict[str, uuid.UUID] = {}  # name and id -> id
        self._pending: dict[uuid.UUID, AssetStatusChanged] = {}
        self._generation = 0  # moves on with each invalidate: a read begun before is not kept

    async def register(self, cmd: RegisterWorkcell) -> WorkcellLayout:
        """Create the workcell, or replace the layout of the one with that name."""
        # Types, parents, and that each asset can be built, before touching the database.
        rows = await asyncio.to_thread(_checked_rows, cmd)
        now = datetime.now(UTC)
        async with _unit(self.db, self.relay) as uow:
            session = uow.session
            workcell = await session.scalar(select(WorkcellRow).where(WorkcellRow.name == cmd.name))
            change = "updated"
            if workcell is None:
                change = "created"
                workcell = WorkcellRow(
                    accession_id=uuid.uuid4(), name=cmd.name, created_at=now, drained=False
                )
                session.add(workcell)
            workcell.description, workcell.properties = cmd.description, cmd.properties
            await session.execute(
                delete(AssetRow).where(AssetRow.workcell_id == workcell.accession_id)
            )
            for row in rows:
                row.workcell_id, row.created_at, row.updated_at = workcell.accession_id, now, now
                session.add(row)
            layout = WorkcellLayout(
                workcell=workcell_view(workcell), assets=[asset_view(r) for r in rows]
            )
            uow.emit(
                WorkcellChanged(
                    workcell=workcell.name,
                    workcell_id=workcell.accession_id,
                    change=change,
                    drained=bool(workcell.drained),
                    actor=cmd.actor,
                    at=now,
                )
            )
        self.invalidate()
        return layout

    def invalidate(self) -> None:
        """Forget the cached layouts: workcells or assets were created, changed or deleted."""
        self._sites = None
        self._pending.clear()
        self._generation += 1

    def apply_statuses(self, events: Iterable[AssetStatusChanged]) -> None:
        """Take in committed status changes (cheaper than reloading the layouts)."""
        usable_changed = False
        for event in events:
            self._pending[event.asset_id] = event
            usable_changed |= (event.status in UNUSABLE) != (event.previous in UNUSABLE)
        if usable_changed:
            self._patch()

    def _patch(self) -> None:
        """Write the pending status changes into the cached layouts."""
        if self._sites is None or not self._pending:
            return
        changed, self._pending = self._pending, {}
        self._sites = {
            workcell_id: Site.of(
                site.layout.model_copy(
                    update={"assets": [_with_status(a, changed) for a in site.layout.assets]}
                )
            )
            if any(a.accession_id in changed for a in site.layout.assets)
            else site
            for workcell_id, site in self._sites.items()
        }

    async def sites(self) -> list[Site]:
        """Every workcell as matching sees it, in name order."""
        return list((await self._current()).values())

    async def _current(self) -> dict[uuid.UUID, Site]:
        """The cached sites, read from the database when there are none."""
        if self._sites is not None:
            return self._sites
        self._pending.clear()  # the read sees them; changes committed from now on are kept
        generation = self._generation
        async with self.db.transaction() as session:
            workcells = (
                await session.scalars(select(WorkcellRow).order_by(WorkcellRow.name))
            ).all()
            assets = (await session.scalars(select(AssetRow))).all()
        sites = {
            w.accession_id: Site.of(
                WorkcellLayout(
                    workcell=workcell_view(w),
                    assets=[asset_view(a) for a in assets if a.workcell_id == w.accession_id],
                )
            )
            for w in workcells
        }
        self._workcells = {w.name: w.accession_id for w in workcells}
        self._workcells |= {str(w.accession_id): w.accession_id for w in workcells}
        if generation == self._generation:
            self._sites = sites
        # else invalidated while the read was under way (a move recorded, say): what it read
        # may predate that change, so it serves this call only; the next read takes new rows.
        return sites

    async def site(self, ref: str) -> Site:
        """One workcell, by name or id, as matching sees it."""
        sites = await self._current()
        workcell_id = self._workcells.get(ref)
        if workcell_id is None or workcell_id not in sites:
            raise NotFound(f"workcell {ref!r} not found", workcell=ref)
        return sites[workcell_id]

    async def layouts(self) -> list[WorkcellLayout]:
        """Every workcell with its assets and their current statuses."""
        await self._current()
        self._patch()
        return [site.layout for site in (await self._current()).values()]

    async def layout(self, ref: str) -> WorkcellLayout:
        await self._current()
        self._patch()
        return (await self.site(ref)).layout

    async def list_workcells(self, query: ListWorkcells) -> WorkcellPage:
        stmt = where_all(
            select(WorkcellRow), WorkcellRow.name == query.name if query.name else None
        )
        stmt = apply_filters(
            stmt,
            query.filters,
            created_at=WorkcellRow.created_at,
            sortable={"name": WorkcellRow.name, "created_at": WorkcellRow.created_at},
            properties=WorkcellRow.properties,
            relations={"workcell_accession_id": WorkcellRow.accession_id},
        ).order_by(WorkcellRow.name)  # a stable order within equal sort keys
        async with self.db.transaction() as session:
            rows, total = await fetch_page(session, stmt, query.filters)
        f = query.filters
        return WorkcellPage(
            items=[workcell_view(r) for r in rows], total=total, limit=f.limit, offset=f.offset
        )

    async def list_assets(self, query: ListAssets) -> AssetPage:
        stmt = where_all(
            select(AssetRow),
            AssetRow.kind == query.kind if query.kind else None,
            AssetRow.status == query.status if query.status else None,
            AssetRow.name == query.name if query.name else None,
            or_(AssetRow.fqn == query.fqn, AssetRow.type_mro.contains([query.fqn]))
            if query.fqn
            else None,
        )
        stmt = apply_filters(
            stmt,
            query.filters,
            created_at=AssetRow.created_at,
            sortable={
                "name": AssetRow.name,
                "created_at": AssetRow.created_at,
                "kind": AssetRow.kind,
            },
            properties=AssetRow.properties,
            relations={
                "workcell_accession_id": AssetRow.workcell_id,
                "parent_accession_id": AssetRow.parent_id,
                "machine_accession_id": AssetRow.accession_id,
                "resource_accession_id": AssetRow.accession_id,
            },
        ).order_by(AssetRow.name, AssetRow.accession_id)  # stable within equal sort keys
        async with self.db.transaction() as session:
            rows, total = await fetch_page(session, stmt, query.filters)
        f = query.filters
        return AssetPage(
            items=[asset_view(r) for r in rows], total=total, limit=f.limit, offset=f.offset
        )

    async def get_asset(self, asset_id: uuid.UUID) -> Asset:
        async with self.db.transaction() as session:
            row = await session.get(AssetRow, asset_id)
        if row is None:
            raise NotFound(f"asset {asset_id} not found")
        return asset_view(row)


def _with_status(asset: Asset, changed: dict[uuid.UUID, AssetStatusChanged]) -> Asset:
    event = changed.get(asset.accession_id)
    if event is None:
        return asset
    return asset.model_copy(update={"status": event.status, "updated_at": event.at})


def _checked_rows(cmd: RegisterWorkcell) -> list[AssetRow]:
    rows = _asset_rows(cmd)
    for row in rows:
        if not row.definition and row.state is None:
            continue  # a placeholder (reservation tests and benches): nothing to build yet
        check_buildable(
            kind=row.kind,  # type: ignore[arg-type]
            name=row.name,
            fqn=row.fqn,
            type_mro=row.type_mro,
            definition=row.definition,
            backend=row.backend,
            state=row.state,
        )
    return rows


def _asset_rows(cmd: RegisterWorkcell) -> list[AssetRow]:
    return draft_rows(cmd.assets)


def draft_rows(
    drafts: Sequence[AssetDraft], known: Mapping[str, uuid.UUID] | None = None
) -> list[AssetRow]:
    """Rows for ``drafts`` with fresh ids, each parent named among them or in ``known`` (name
    -> id of an asset already there, e.g. the machine a deck was built inside); the caller
    sets their workcell and times."""
    ids = {draft.name: uuid.uuid4() for draft in drafts}
    if len(ids) != len(drafts):
        raise InvalidRequest("asset names must be unique within a workcell")
    parents = {**(known or {}), **ids}
    rows = []
    for draft in drafts:
        cls = import_type(draft.fqn)
        if draft.parent is not None and draft.parent not in parents:
            raise InvalidRequest(f"asset {draft.name!r} names unknown parent {draft.parent!r}")
        rows.append(
            AssetRow(
                accession_id=ids[draft.name],
                kind=draft.kind,
                name=draft.name,
                fqn=draft.fqn,
                type_mro=type_ancestry(cls),
                definition=draft.definition,
                backend=draft.backend,
                state=draft.state,
                parent_id=parents[draft.parent] if draft.parent else None,
                slot=draft.slot,
                properties=draft.properties,
                shareable=draft.shareable,
                status=AssetStatus.AVAILABLE,
            )
        )
    return rows


def _unit(db: Database, relay: OutboxRelay | None) -> SqlUnitOfWork:
    if relay is None:
        raise RuntimeError("the inventory has no outbox relay")
    return SqlUnitOfWork(db, relay)


def workcell_view(row: WorkcellRow) -> Workcell:
    return Workcell(
        accession_id=row.accession_id,
        name=row.name,
        description=row.description,
        properties=row.properties,
        created_at=row.created_at,
        drained=bool(row.drained),
        drain_reason=row.drain_reason,
    )


def asset_view(row: AssetRow) -> Asset:
    return Asset(
        accession_id=row.accession_id,
        workcell_id=row.workcell_id,
        kind=row.kind,
        name=row.name,
        fqn=row.fqn,
        type_mro=row.type_mro,
        definition=row.definition,
        backend=row.backend,
        state=row.state,
        state_recorded_at=row.state_recorded_at,
        state_snapshot_id=row.state_snapshot_id,
        parent_id=row.parent_id,
        slot=row.slot,
        properties=row.properties,
        shareable=row.shareable,
        status=AssetStatus(row.status),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )
