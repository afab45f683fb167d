"""Inventory authoring handlers: the type catalog, workcell and asset CRUD, status history."""

from __future__ import annotations

from dataclasses import dataclass

from praxis_asset_manager.catalog import Catalog
from praxis_asset_manager.inventory_commands import InventoryCommands
from praxis_asset_manager.status import StatusRecorder
from praxis_contracts.assets import Asset, SetWorkcellDrain, Workcell
from praxis_contracts.base import Empty
from praxis_contracts.inventory import (
    AssetStatusHistoryPage,
    CatalogPage,
    CreateAsset,
    CreateWorkcell,
    DeleteAsset,
    DeleteWorkcell,
    ListAssetStatusHistory,
    ListCatalog,
    UpdateAsset,
    UpdateWorkcell,
)
from praxis_runtime.bus import Handlers


@dataclass(frozen=True)
class InventoryDeps:
    inventory: InventoryCommands
    catalog: Catalog
    status: StatusRecorder


handlers: Handlers[InventoryDeps] = Handlers()


@handlers.rpc(ListCatalog)
async def list_catalog(query: ListCatalog, deps: InventoryDeps) -> CatalogPage:
    return await deps.catalog.list(query)


@handlers.rpc(CreateWorkcell)
async def create_workcell(cmd: CreateWorkcell, deps: InventoryDeps) -> Workcell:
    return await deps.inventory.create_workcell(cmd)


@handlers.rpc(UpdateWorkcell)
async def update_workcell(cmd: UpdateWorkcell, deps: InventoryDeps) -> Workcell:
    return await deps.inventory.update_workcell(cmd)


@handlers.rpc(SetWorkcellDrain)
async def drain_workcell(cmd: SetWorkcellDrain, deps: InventoryDeps) -> Workcell:
    return await deps.inventory.set_drain(cmd)


@handlers.rpc(DeleteWorkcell)
async def delete_workcell(cmd: DeleteWorkcell, deps: InventoryDeps) -> Empty:
    await deps.inventory.delete_workcell(cmd)
    return Empty()


@handlers.rpc(CreateAsset)
async def create_asset(cmd: CreateAsset, deps: InventoryDeps) -> Asset:
    return await deps.inventory.create_asset(cmd)


@handlers.rpc(UpdateAsset)
async def update_asset(cmd: UpdateAsset, deps: InventoryDeps) -> Asset:
    return await deps.inventory.update_asset(cmd)


@handlers.rpc(DeleteAsset)
async def delete_asset(cmd: DeleteAsset, deps: InventoryDeps) -> Empty:
    await deps.inventory.delete_asset(cmd)
    return Empty()


@handlers.rpc(ListAssetStatusHistory)
async def list_status_history(
    query: ListAssetStatusHistory, deps: InventoryDeps
) -> AssetStatusHistoryPage:
    return await deps.status.history(query)
