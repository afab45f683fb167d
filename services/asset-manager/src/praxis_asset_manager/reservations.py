"""Reservations: bind a run's requirements, lease them all or none, wait without polling.

A request that cannot be granted now is stored (so a restarted asset-manager resumes serving it)
and retried when the lease bucket's watcher reports a key deleted, purged or expired. Waiters are
served by priority, then submission order; a lower-priority waiter may go first only if it wants
none of the assets a higher-priority waiter is waiting for.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from praxis_asset_manager.inventory import Inventory
from praxis_asset_manager.matching import Binding, bind
from praxis_asset_manager.orm import ReservationRow
from praxis_contracts.assets import (
    AssetBinding,
    AssetsReleased,
    AssetsReserved,
    Lease,
    LeaseList,
    ReleaseAssets,
    ReservationFailed,
    ReserveAssets,
    WorkcellLayout,
)
from praxis_contracts.base import Event
from praxis_contracts.errors import NoMatchingAssets, PraxisError
from praxis_runtime.db import Database
from praxis_runtime.leases import LeaseConflict, LeaseStore, decode_holder, lease_key

log = logging.getLogger(__name__)

Publish = Callable[[Event], Awaitable[object]]
Plan = tuple[WorkcellLayout, list[Binding]]


class Reservations:
    def __init__(
        self,
        db: Database,
        inventory: Inventory,
        leases: LeaseStore,
        default_ttl: int,
        publish: Publish,
    ) -> None:
        self.db = db
        self.inventory = inventory
        self.leases = leases
        self.default_ttl = default_ttl
        self.publish = publish
        self.waiting: dict[uuid.UUID, tuple[ReserveAssets, datetime]] = {}
        self.held: dict[uuid.UUID, uuid.UUID] = {}  # asset id -> run id, from the watcher
        self._serving = asyncio.Lock()

    # -- requests -----------------------------------------------------------------------------
    async def request(self, cmd: ReserveAssets) -> None:
        """Grant now, fail (no match at all), or store the request as a waiter."""
        existing = await self._row(cmd.run_id)
        if existing is not None and existing.status == "granted":
            await self._announce_granted(cmd, existing)  # redelivered command: same answer
            return
        if existing is None:
            async with self.db.transaction() as session:
                session.add(
                    ReservationRow(
                        run_id=cmd.run_id,
                        request=cmd.model_dump(mode="json"),
                        status="waiting",
                        priority=cmd.priority,
                        bindings=[],
                        created_at=datetime.now(UTC),
                    )
                )
        self.waiting[cmd.run_id] = (cmd, existing.created_at if existing else datetime.now(UTC))
        await self.serve_waiters()

    async def resume(self) -> int:
        """Reload stored waiters after a restart."""
        async with self.db.transaction() as session:
            rows = (
                await session.scalars(
                    select(ReservationRow).where(ReservationRow.status == "waiting")
                )
            ).all()
        for row in rows:
            self.waiting[row.run_id] = (ReserveAssets.model_validate(row.request), row.created_at)
        return len(rows)

    async def serve_waiters(self) -> None:
        async with self._serving:
            blocked: set[uuid.UUID] = set()
            for run_id, (cmd, _) in sorted(
                self.waiting.items(), key=lambda kv: (-kv[1][0].priority, kv[1][1])
            ):
                if run_id not in self.waiting:
                    continue
                try:
                    plan = await self._plan(cmd)
                except PraxisError as exc:
                    await self._fail(cmd, exc)
                    continue
                wanted = {b.asset.accession_id for b in plan[1]} if plan else set()
                if plan is None or wanted & blocked or not await self._grant(cmd, plan):
                    blocked |= wanted or await self._wanted(cmd)

    async def _plan(self, cmd: ReserveAssets) -> Plan | None:
        layouts = (
            [await self.inventory.layout(cmd.workcell)]
            if cmd.workcell
            else await self.inventory.layouts()
        )
        if not layouts:
            raise NoMatchingAssets("there is no workcell to run on")
        possible: list[WorkcellLayout] = []
        error: PraxisError | None = None
        for layout in layouts:
            try:
                busy = {a for a, holder in self.held.items() if holder != cmd.run_id}
                bindings = bind(cmd.requirements, layout.assets, cmd.pins, busy)
            except NoMatchingAssets as exc:
                error = error or exc
                continue
            possible.append(layout)
            if bindings is not None:
                return layout, bindings
        if not possible:
            assert error is not None
            raise error
        return None

    async def _wanted(self, cmd: ReserveAssets) -> set[uuid.UUID]:
        layouts = (
            [await self.inventory.layout(cmd.workcell)]
            if cmd.workcell
            else await self.inventory.layouts()
        )
        ids: set[uuid.UUID] = set()
        for layout in layouts:
            try:
                ids |= {
                    b.asset.accession_id
                    for b in bind(cmd.requirements, layout.assets, cmd.pins, set()) or []
                }
            except NoMatchingAssets:
                continue
        return ids

    async def _grant(self, cmd: ReserveAssets, plan: Plan) -> bool:
        layout, bindings = plan
        ttl = cmd.ttl_seconds or self.default_ttl
        try:
            tokens = await self.leases.acquire_all(
                cmd.run_id, [b.asset.accession_id for b in bindings], ttl
            )
        except LeaseConflict as exc:
            log.debug("run %s waits: %s is held", cmd.run_id, exc.key)
            return False
        granted = [
            AssetBinding(
                requirement=b.requirement.name,
                asset_id=b.asset.accession_id,
                asset_name=b.asset.name,
                kind=b.asset.kind,
                fqn=b.asset.fqn,
                lease_key=lease_key(b.asset.accession_id),
                token=tokens[b.asset.accession_id],
            )
            for b in bindings
        ]
        for b in granted:
            self.held[b.asset_id] = cmd.run_id
        async with self.db.transaction() as session:
            row = await session.get_one(ReservationRow, cmd.run_id)
            row.status = "granted"
            row.bindings = [b.model_dump(mode="json") for b in granted]
            row.request = {**row.request, "workcell_id": str(layout.workcell.accession_id)}
        self.waiting.pop(cmd.run_id, None)
        await self.publish(
            AssetsReserved(
                run_id=cmd.run_id,
                workcell_id=layout.workcell.accession_id,
                workcell_name=layout.workcell.name,
                bindings=granted,
            )
        )
        return True

    async def _announce_granted(self, cmd: ReserveAssets, row: ReservationRow) -> None:
        workcell_id = uuid.UUID(row.request["workcell_id"])
        layout = await self.inventory.layout(str(workcell_id))
        await self.publish(
            AssetsReserved(
                run_id=cmd.run_id,
                workcell_id=workcell_id,
                workcell_name=layout.workcell.name,
                bindings=[AssetBinding.model_validate(b) for b in row.bindings],
            )
        )

    async def _fail(self, cmd: ReserveAssets, error: PraxisError) -> None:
        self.waiting.pop(cmd.run_id, None)
        async with self.db.transaction() as session:
            row = await session.get(ReservationRow, cmd.run_id)
            if row is not None:
                row.status = "failed"
        await self.publish(ReservationFailed(run_id=cmd.run_id, error=error.to_reply()))

    # -- release ------------------------------------------------------------------------------
    async def release(self, cmd: ReleaseAssets) -> None:
        """Release every lease of the run (idempotent); a waiting request is withdrawn."""
        self.waiting.pop(cmd.run_id, None)
        row = await self._row(cmd.run_id)
        if row is None or row.status == "released":
            return
        released = []
        for raw in row.bindings:
            binding = AssetBinding.model_validate(raw)
            if await self.leases.release(binding.lease_key, binding.token):
                released.append(binding.asset_id)
        async with self.db.transaction() as session:
            stored = await session.get_one(ReservationRow, cmd.run_id)
            stored.status = "released"
        await self.publish(AssetsReleased(run_id=cmd.run_id, asset_ids=released, reason=cmd.reason))

    async def list_leases(self, run_id: uuid.UUID | None) -> LeaseList:
        """Live leases, read from the bucket (the source of truth), optionally for one run."""
        items = []
        for asset_id, holder in list(self.held.items()):
            if run_id is not None and holder != run_id:
                continue
            key = lease_key(asset_id)
            state = await self.leases.read(key)
            if state.holder is None:
                continue
            acquired = state.holder.acquired_at
            items.append(
                Lease(
                    asset_id=asset_id,
                    lease_key=key,
                    run_id=state.holder.run_id,
                    token=state.revision,
                    acquired_at=acquired,
                    expires_at=acquired + timedelta(seconds=state.holder.ttl_seconds),
                )
            )
        return LeaseList(items=sorted(items, key=lambda lease: lease.acquired_at))

    async def _row(self, run_id: uuid.UUID) -> ReservationRow | None:
        async with self.db.transaction() as session:
            return await session.get(ReservationRow, run_id)

    # -- lease bucket watcher -----------------------------------------------------------------
    def observe(self, key: str, value: bytes | None, deleted: bool) -> bool:
        """Track who holds what; True when an asset became free (waiters should retry)."""
        if not key.startswith("asset."):
            return False
        asset_id = uuid.UUID(key.removeprefix("asset."))
        if deleted or not value:
            return self.held.pop(asset_id, None) is not None or bool(self.waiting)
        self.held[asset_id] = decode_holder(value).run_id
        return False
