"""Asset-manager handlers."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from praxis_asset_manager.inventory import Inventory
from praxis_asset_manager.reservations import Reservations
from praxis_asset_manager.snapshots import Snapshots
from praxis_contracts.assets import (
    Asset,
    AssetPage,
    CheckReservation,
    ForceReleaseLease,
    GetAsset,
    GetWorkcellLayout,
    HoldAssets,
    Lease,
    LeaseList,
    ListAssets,
    ListLeases,
    ListWorkcells,
    RegisterWorkcell,
    ReleaseAssets,
    ReservationCheck,
    ReserveAssets,
    WorkcellLayout,
    WorkcellPage,
)
from praxis_contracts.errors import PraxisError
from praxis_contracts.runs import RunStarted
from praxis_runtime.bus import Handlers


@dataclass(frozen=True)
class Deps:
    inventory: Inventory
    reservations: Reservations
    snapshots: Snapshots | None = None


log = logging.getLogger(__name__)

handlers: Handlers[Deps] = Handlers()


@handlers.rpc(RegisterWorkcell)
async def register_workcell(cmd: RegisterWorkcell, deps: Deps) -> WorkcellLayout:
    return await deps.inventory.register(cmd)


@handlers.rpc(GetWorkcellLayout)
async def get_layout(query: GetWorkcellLayout, deps: Deps) -> WorkcellLayout:
    return await deps.inventory.layout(query.workcell)


@handlers.rpc(ListWorkcells)
async def list_workcells(query: ListWorkcells, deps: Deps) -> WorkcellPage:
    return await deps.inventory.list_workcells(query)


@handlers.rpc(ListAssets)
async def list_assets(query: ListAssets, deps: Deps) -> AssetPage:
    return await deps.inventory.list_assets(query)


@handlers.rpc(GetAsset)
async def get_asset(query: GetAsset, deps: Deps) -> Asset:
    return await deps.inventory.get_asset(query.accession_id)


@handlers.rpc(ListLeases)
async def list_leases(query: ListLeases, deps: Deps) -> LeaseList:
    return await deps.reservations.list_leases(query.run_id)


@handlers.rpc(ForceReleaseLease)
async def force_release(cmd: ForceReleaseLease, deps: Deps) -> Lease:
    return await deps.reservations.force_release(cmd.asset_id, cmd.reason, cmd.actor)


@handlers.rpc(CheckReservation)
async def check_reservation(query: CheckReservation, deps: Deps) -> ReservationCheck:
    return await deps.reservations.check(query)


@handlers.consume(ReserveAssets, durable="asset-manager-reserve", max_workers=16)
async def reserve(cmd: ReserveAssets, deps: Deps) -> None:
    await deps.reservations.request(cmd)


@handlers.consume(ReleaseAssets, durable="asset-manager-release", max_workers=16)
async def release(cmd: ReleaseAssets, deps: Deps) -> None:
    if deps.snapshots is not None and cmd.workcell and cmd.snapshot_id:
        try:
            await deps.snapshots.record_final(cmd.workcell, cmd.snapshot_id)
        except PraxisError as exc:  # a bad snapshot never keeps a run's leases
            log.warning("run %s: its final snapshot was not recorded: %s", cmd.run_id, exc)
    await deps.reservations.release(cmd)


@handlers.consume(HoldAssets, durable="asset-manager-hold", max_workers=16)
async def hold(cmd: HoldAssets, deps: Deps) -> None:
    await deps.reservations.hold(cmd)


@handlers.consume(RunStarted, durable="asset-manager-run-started", max_workers=8)
async def run_started(event: RunStarted, deps: Deps) -> None:
    deps.reservations.mark_in_use(event.run_id, event.workcell)
