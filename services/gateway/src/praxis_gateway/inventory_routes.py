"""HTTP routes for inventory authoring: the type catalog, workcell and asset writes, status history.

Reads of workcells and assets, and ``POST /workcells`` (register with assets, or empty), are in
``routes``.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from praxis_contracts.assets import Asset, AssetStatus, SetWorkcellDrain, Workcell
from praxis_contracts.common import AssetKind
from praxis_contracts.inventory import (
    AssetStatusHistoryPage,
    CatalogPage,
    CreateAsset,
    DeleteAsset,
    DeleteWorkcell,
    ListAssetStatusHistory,
    ListCatalog,
    Position,
    UpdateAsset,
    UpdateWorkcell,
)
from praxis_contracts.state import (
    GetSnapshot,
    ListSnapshots,
    RestoreSnapshot,
    SetAssetState,
    SnapshotInfo,
    SnapshotPage,
    WorkcellSnapshot,
)
from praxis_gateway.routes import BusDep, Filters
from praxis_gateway.security import ActorDep

router = APIRouter(prefix="/api/v1", tags=["inventory"])

_KINDS: tuple[tuple[str, AssetKind], ...] = (
    ("machines", "machine"),
    ("resources", "resource"),
    ("decks", "deck"),
)


@router.get("/catalog")
async def list_catalog(
    b: BusDep,
    filters: Filters,
    kind: AssetKind | None = None,
    search: Annotated[str | None, Query(description="Substring of the fqn or name")] = None,
    is_factory: bool | None = None,
    base: Annotated[str | None, Query(description="Ancestor class fqn, e.g. a Plate")] = None,
) -> CatalogPage:
    """PyLabRobot resource and machine types installed: what assets can be created from."""
    return await b.request(
        ListCatalog(filters=filters, kind=kind, search=search, is_factory=is_factory, base=base)
    )


class WorkcellPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    properties: dict[str, Any] | None = Field(default=None, description="Replaces them all.")


@router.patch("/workcells/{workcell}")
async def update_workcell(
    workcell: str, body: WorkcellPatch, b: BusDep, actor: ActorDep
) -> Workcell:
    return await b.request(UpdateWorkcell(workcell=workcell, **body.model_dump(), actor=actor))


class DrainBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2000, description="Why (audited).")


@router.post("/workcells/{workcell}/drain")
async def drain_workcell(
    workcell: str, b: BusDep, actor: ActorDep, body: DrainBody | None = None
) -> Workcell:
    """Drain a workcell before maintenance or an upgrade: no new run is placed on it (runs that
    need it wait, ``waiting_for: workcell_drained``); runs already on it go on. Idempotent."""
    reason = body.reason if body else None
    return await b.request(
        SetWorkcellDrain(workcell=workcell, drained=True, reason=reason, actor=actor)
    )


@router.post("/workcells/{workcell}/resume")
async def resume_workcell(
    workcell: str, b: BusDep, actor: ActorDep, body: DrainBody | None = None
) -> Workcell:
    """Resume a drained workcell: the runs waiting for it are placed. Idempotent."""
    reason = body.reason if body else None
    return await b.request(
        SetWorkcellDrain(workcell=workcell, drained=False, reason=reason, actor=actor)
    )


@router.delete("/workcells/{workcell}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_workcell(workcell: str, b: BusDep, actor: ActorDep) -> Response:
    """Delete a workcell and its assets; 409 while a run holds any of them."""
    await b.request(DeleteWorkcell(workcell=workcell, actor=actor))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# -- workcell state snapshots ---------------------------------------------------------------------
@router.get("/workcells/{workcell}/snapshots")
async def list_snapshots(
    workcell: str,
    b: BusDep,
    filters: Filters,
    asset: Annotated[str | None, Query(description="Covered asset: name or id")] = None,
) -> SnapshotPage:
    """The workcell's state snapshots, newest first (``protocol_run_accession_id``: a run's)."""
    return await b.request(ListSnapshots(workcell=workcell, asset=asset, filters=filters))


@router.get("/workcells/{workcell}/snapshots/{snapshot_id}")
async def get_snapshot(workcell: str, snapshot_id: UUID, b: BusDep) -> WorkcellSnapshot:
    """One snapshot with the state of each asset it covers; 404 once pruned."""
    return await b.request(GetSnapshot(workcell=workcell, snapshot_id=snapshot_id))


class RestoreIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    snapshot_id: UUID
    reason: str = Field(min_length=1, max_length=2000, description="Why; kept in the audit event.")
    assets: list[str] | None = Field(default=None, description="Asset names; all if omitted.")


@router.post("/workcells/{workcell}/restore")
async def restore_snapshot(
    workcell: str, body: RestoreIn, b: BusDep, actor: ActorDep
) -> SnapshotInfo:
    """Make a snapshot's states the recorded state of its assets (all, or those named) and have
    the workcell's orchestrator load them, audited as ``WorkcellStateRestored``. 409 while a run
    holds any of them; 422 for an asset the snapshot does not cover. Replies with the
    ``restored`` snapshot recorded for it."""
    return await b.request(
        RestoreSnapshot(
            workcell=workcell,
            snapshot_id=body.snapshot_id,
            reason=body.reason,
            assets=body.assets,
            actor=actor,
        )
    )


class StateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Part name -> fields of its PyLabRobot state to change, e.g. "
        '{"plate_well_A1": {"volume": 150}} (volume alone also sets pending_volume).',
    )
    tips: dict[str, bool] = Field(
        default_factory=dict,
        description='Tip spot ("A1") -> whether a tip is there; {"*": true} fills the rack, '
        '{"*": false} empties it.',
    )
    reason: str = Field(min_length=1, max_length=2000, description="Why; kept in the audit event.")


@router.post("/resources/{accession_id}/state")
async def set_resource_state(
    accession_id: UUID, body: StateIn, b: BusDep, actor: ActorDep
) -> SnapshotInfo:
    """Set a labware's recorded state by hand (a plate refilled, a tip rack replaced): checked
    by PyLabRobot (422 naming a part the labware does not have, a volume below 0 or past the
    well, a state it cannot load), recorded as a snapshot of kind ``set``, loaded by the
    workcell's orchestrator and audited as ``WorkcellStateRestored`` (who and why, no source
    snapshot). 409 while a run holds the labware. Replies with the ``set`` snapshot."""
    return await b.request(
        SetAssetState(
            accession_id=accession_id,
            state=body.state,
            tips=body.tips,
            reason=body.reason,
            actor=actor,
        )
    )


class AssetIn(BaseModel):
    """An asset to create; without ``definition`` the type is built from its name."""

    model_config = ConfigDict(extra="forbid")

    workcell: str = Field(description="Workcell name or accession id.")
    name: str
    fqn: str = Field(description="Catalog type (class or factory), see GET /catalog.")
    definition: dict[str, Any] | None = None
    backend: dict[str, Any] | None = Field(
        default=None,
        description="Machines: {'type': '<backend class>', 'settings': {...}}.",
    )
    arguments: dict[str, Any] = Field(
        default_factory=dict,
        description="Constructor arguments when the type needs more than a name "
        "({'x','y','z'} for a Coordinate, a deck's type name).",
    )
    state: dict[str, Any] | None = None
    parent: str | None = Field(default=None, description="Parent asset name or id.")
    slot: str | None = Field(default=None, description="The parent's resource it sits in.")
    location: Position | None = Field(default=None, description="Where in the parent.")
    rails: int | None = Field(default=None, description="A Hamilton deck's rail (carriers).")
    properties: dict[str, Any] = Field(default_factory=dict)
    shareable: bool = False


class AssetPatch(BaseModel):
    """Fields to change; those left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = None
    properties: dict[str, Any] | None = Field(default=None, description="Replaces them all.")
    status: AssetStatus | None = Field(default=None, description="available|maintenance|error")
    reason: str = ""
    parent: str | None = None
    slot: str | None = None
    detach: bool = False
    shareable: bool | None = None


def _asset_write_routes(path: str, kind: AssetKind) -> None:
    async def create(body: AssetIn, b: BusDep, actor: ActorDep) -> Asset:
        cmd = CreateAsset(kind=kind, **body.model_dump(), actor=actor)
        return await b.request(cmd, timeout=_BUILD_TIMEOUT)

    async def update(accession_id: UUID, body: AssetPatch, b: BusDep, actor: ActorDep) -> Asset:
        return await b.request(
            UpdateAsset(accession_id=accession_id, kind=kind, **body.model_dump(), actor=actor)
        )

    async def remove(accession_id: UUID, b: BusDep, actor: ActorDep) -> Response:
        await b.request(DeleteAsset(accession_id=accession_id, kind=kind, actor=actor))
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    async def history(
        accession_id: UUID,
        b: BusDep,
        filters: Filters,
        status_: Annotated[AssetStatus | None, Query(alias="status")] = None,
    ) -> AssetStatusHistoryPage:
        query = ListAssetStatusHistory(
            accession_id=accession_id, kind=kind, filters=filters, status=status_
        )
        return await b.request(query)

    item = f"/{path}/{{accession_id}}"
    add = router.add_api_route
    add(f"/{path}", create, methods=["POST"], status_code=201, name=f"create_{path}")
    add(item, update, methods=["PATCH"], name=f"update_{path}")
    add(item, remove, methods=["DELETE"], status_code=204, name=f"delete_{path}")
    add(f"{item}/status-history", history, methods=["GET"], name=f"{path}_status_history")


for _path, _kind in _KINDS:
    _asset_write_routes(_path, _kind)

_BUILD_TIMEOUT = 30.0
"""Creating an asset from its type name imports and instantiates PyLabRobot code."""
