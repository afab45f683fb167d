"""Workcell state snapshots against real NATS (events, requests, the object store) and Postgres.

The test plays the orchestrator: it puts a ``WorkcellSnapshot`` body into the object store and
publishes ``WorkcellStateRecorded`` naming it, then waits until the asset-manager's durable has
acknowledged every delivery (the handler returned). One asset-manager runs for the module, with
``SNAPSHOTS_KEPT=3``; every test registers its own workcell.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js.errors import ObjectNotFoundError
from nats.js.object_store import ObjectStore
from pylabrobot.resources import Plate
from sqlalchemy import func, select

from praxis_asset_manager.app import Settings, build_app
from praxis_asset_manager.inventory import Inventory
from praxis_asset_manager.orm import OUTBOX, SnapshotRow
from praxis_asset_manager.snapshots import Snapshots, StateStores
from praxis_contracts.assets import (
    Asset,
    AssetsReleased,
    AssetsReserved,
    GetAsset,
    GetWorkcellLayout,
    RegisterWorkcell,
    ReleaseAssets,
    ReserveAssets,
    WorkcellLayout,
)
from praxis_contracts.common import SearchFilters
from praxis_contracts.errors import Conflict, InvalidInput, NotFound
from praxis_contracts.inventory import AssetMoved, AssetStatusChanged, DeleteAsset
from praxis_contracts.protocols import AssetRequirementSpec
from praxis_contracts.runs import GetCallResult, call_result_object
from praxis_contracts.state import (
    AssetState,
    GetSnapshot,
    ListSnapshots,
    Placement,
    RestoreSnapshot,
    SetAssetState,
    SnapshotKind,
    WorkcellSnapshot,
    WorkcellStateRecorded,
    WorkcellStateRestored,
    snapshot_object_name,
)
from praxis_contracts.topology import COMMANDS, EVENTS, workcell_state
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity, drained, provide_workcell
from praxis_plr.layout import demo_workcell
from praxis_plr.types import fqn
from praxis_runtime.bus import Bus
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay

pytestmark = pytest.mark.integration

KEPT = 3
DURABLE = "asset-manager-state-recorded"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class AM:
    bus: Bus
    db: Database

    async def store(self, object_name: str) -> ObjectStore:
        """The state store of the workcell a snapshot's object belongs to."""
        workcell = object_name.split("/", 1)[0]
        return await self.bus.js.object_store(workcell_state(workcell).bucket)

    async def get(self, object_name: str) -> Any:
        return await (await self.store(object_name)).get(object_name)

    async def put(self, object_name: str, data: bytes) -> None:
        await (await self.store(object_name)).put(object_name, data)


@pytest.fixture(scope="module")
async def am(
    nats_identity: NatsIdentity, make_database: MakeDatabase, services: Any, client: Bus
) -> AsyncIterator[AM]:
    url = make_database("snapshots")
    settings = Settings(
        **nats_identity("asset-manager"),
        database_url=url,
        health_port=None,
        graceful_timeout_seconds=5,
        snapshots_kept=KEPT,
        edge_placement=False,  # no orchestrator here: runs are placed without one
    )
    await services(build_app, settings)
    db = Database(url, "asset_manager")
    yield AM(client, db)
    await db.dispose()


@pytest.fixture
async def workcell(am: AM) -> WorkcellLayout:
    name = f"wc-{uuid.uuid4().hex[:10]}"
    await provide_workcell(am.bus.js, name)
    return await am.bus.request(RegisterWorkcell(name=name, assets=demo_workcell()), timeout=30)


def by_name(layout: WorkcellLayout, name: str) -> Asset:
    (found,) = [a for a in layout.assets if a.name == name]
    return found


def well(volume: float) -> dict[str, Any]:
    return {"well_A1": {"volume": volume, "pending_volume": volume, "max_volume": 360}}


async def written(
    am: AM,
    layout: WorkcellLayout,
    states: dict[str, dict[str, Any]],
    taken_at: datetime,
    *,
    kind: SnapshotKind = "checkpoint",
    run_id: uuid.UUID | None = None,
    placements: dict[str, Placement] | None = None,
) -> WorkcellStateRecorded:
    """What the orchestrator does: the body into the object store; returns the event to send."""
    name, snapshot_id = layout.workcell.name, uuid.uuid4()
    assets = [
        AssetState(
            asset_id=by_name(layout, n).accession_id,
            asset_name=n,
            state=s,
            placement=(placements or {}).get(n),
        )
        for n, s in states.items()
    ]
    body = WorkcellSnapshot(
        snapshot_id=snapshot_id,
        workcell_name=name,
        kind=kind,
        run_id=run_id,
        taken_at=taken_at,
        asset_ids=[a.asset_id for a in assets],
        asset_names=[a.asset_name for a in assets],
        object_name=snapshot_object_name(name, snapshot_id),
        assets=assets,
    )
    data = body.model_dump_json().encode()
    await am.put(body.object_name, data)
    info = body.model_dump(exclude={"assets"}) | {"size_bytes": len(data)}
    return WorkcellStateRecorded(**info)


async def recorded(am: AM, *events: WorkcellStateRecorded) -> None:
    for event in events:
        await am.bus.publish(event)  # a fresh message id each time: a redelivery, not a retry
    await drained(am.bus.js, EVENTS.name, DURABLE)


async def asset(am: AM, layout: WorkcellLayout, name: str) -> Asset:
    return await am.bus.request(GetAsset(accession_id=by_name(layout, name).accession_id))


async def listed(am: AM, layout: WorkcellLayout, **fields: Any) -> list[uuid.UUID]:
    page = await am.bus.request(ListSnapshots(workcell=layout.workcell.name, **fields))
    return [s.snapshot_id for s in page.items]


async def rows(am: AM, layout: WorkcellLayout) -> int:
    async with am.db.transaction() as session:
        count = await session.scalar(
            select(func.count()).where(SnapshotRow.workcell_name == layout.workcell.name)
        )
    return int(count or 0)


# -- recording ------------------------------------------------------------------------------------
async def test_a_snapshot_becomes_the_recorded_state(am: AM, workcell: WorkcellLayout) -> None:
    run_id = uuid.uuid4()
    event = await written(
        am, workcell, {"source_plate": well(80), "dest_plate": well(0)}, T0, run_id=run_id
    )
    await recorded(am, event)

    plate = await asset(am, workcell, "source_plate")
    assert plate.state == well(80)
    assert (plate.state_recorded_at, plate.state_snapshot_id) == (T0, event.snapshot_id)
    assert (await asset(am, workcell, "tip_rack")).state_recorded_at is None  # not covered
    layout = await am.bus.request(GetWorkcellLayout(workcell=workcell.workcell.name))
    assert by_name(layout, "source_plate").state == well(80)  # the cached layout too
    assert by_name(layout, "dest_plate").state_snapshot_id == event.snapshot_id

    body = await am.bus.request(
        GetSnapshot(workcell=workcell.workcell.name, snapshot_id=event.snapshot_id)
    )
    assert body.run_id == run_id and body.size_bytes == event.size_bytes
    assert {a.asset_name: a.state for a in body.assets} == {
        "source_plate": well(80),
        "dest_plate": well(0),
    }


async def test_the_same_snapshot_twice_is_recorded_once(am: AM, workcell: WorkcellLayout) -> None:
    first = await written(am, workcell, {"source_plate": well(10)}, T0)
    await recorded(am, first, first)
    assert await rows(am, workcell) == 1
    assert await listed(am, workcell) == [first.snapshot_id]
    # Recorded state changed meanwhile (a restore, say): the duplicate does not reapply its own.
    newer = await written(am, workcell, {"source_plate": well(20)}, T0 + timedelta(seconds=1))
    await recorded(am, newer, first)
    assert (await asset(am, workcell, "source_plate")).state == well(20)
    assert await rows(am, workcell) == 2


async def test_an_older_snapshot_arriving_later_does_not_overwrite(
    am: AM, workcell: WorkcellLayout
) -> None:
    older = await written(am, workcell, {"source_plate": well(1), "dest_plate": well(1)}, T0)
    newer = await written(am, workcell, {"source_plate": well(2)}, T0 + timedelta(minutes=1))
    await recorded(am, newer)
    await recorded(am, older)

    source = await asset(am, workcell, "source_plate")
    assert (source.state, source.state_snapshot_id) == (well(2), newer.snapshot_id)
    dest = await asset(am, workcell, "dest_plate")  # newer does not cover it: older's state
    assert (dest.state, dest.state_snapshot_id) == (well(1), older.snapshot_id)
    assert await listed(am, workcell) == [newer.snapshot_id, older.snapshot_id]  # newest first


async def test_retention_keeps_the_newest_rows_and_objects(
    am: AM, workcell: WorkcellLayout
) -> None:
    events = [
        await written(am, workcell, {"source_plate": well(i)}, T0 + timedelta(seconds=i))
        for i in range(KEPT + 2)
    ]
    shuffled = [events[3], events[0], events[4], events[2], events[1]]  # out of order
    await recorded(am, *shuffled)

    newest = [e.snapshot_id for e in reversed(events[-KEPT:])]
    assert await listed(am, workcell) == newest
    assert await rows(am, workcell) == KEPT
    for event in events[:2]:
        with pytest.raises(ObjectNotFoundError):
            await am.get(event.object_name)
        with pytest.raises(NotFound):
            await am.bus.request(
                GetSnapshot(workcell=workcell.workcell.name, snapshot_id=event.snapshot_id)
            )
    for event in events[2:]:
        assert (await am.get(event.object_name)).data
    assert (await asset(am, workcell, "source_plate")).state == well(KEPT + 1)


async def test_retention_keeps_every_young_snapshot_beyond_the_count(
    am: AM, workcell: WorkcellLayout
) -> None:
    """SNAPSHOTS_KEPT_SECONDS (an hour here): a snapshot taken minutes ago stays listed however
    many came after it; only old ones beyond the newest KEPT go."""
    now = datetime.now(UTC)
    old = [
        await written(am, workcell, {"source_plate": well(i)}, T0 + timedelta(seconds=i))
        for i in range(2)
    ]
    young = [
        await written(am, workcell, {"source_plate": well(i)}, now - timedelta(minutes=10 - i))
        for i in range(KEPT + 2)
    ]
    await recorded(am, *old, *young)

    assert await listed(am, workcell) == [e.snapshot_id for e in reversed(young)]
    for event in old:
        with pytest.raises(ObjectNotFoundError):
            await am.get(event.object_name)


async def test_list_filters_and_pages(am: AM, workcell: WorkcellLayout) -> None:
    run_a, run_b = uuid.uuid4(), uuid.uuid4()
    a = await written(am, workcell, {"source_plate": well(1)}, T0, run_id=run_a)
    b = await written(
        am, workcell, {"dest_plate": well(1)}, T0 + timedelta(seconds=1), run_id=run_b
    )
    await recorded(am, a, b)

    assert await listed(am, workcell, run_id=run_a) == [a.snapshot_id]
    by_filter = SearchFilters(protocol_run_accession_id=run_b)
    assert await listed(am, workcell, filters=by_filter) == [b.snapshot_id]
    assert await listed(am, workcell, asset="dest_plate") == [b.snapshot_id]
    source_id = str(by_name(workcell, "source_plate").accession_id)
    assert await listed(am, workcell, asset=source_id) == [a.snapshot_id]
    page = await am.bus.request(
        ListSnapshots(workcell=workcell.workcell.name, filters=SearchFilters(limit=1, offset=1))
    )
    assert (page.total, [s.snapshot_id for s in page.items]) == (2, [a.snapshot_id])
    by_id = ListSnapshots(workcell=str(workcell.workcell.accession_id))
    assert [s.snapshot_id for s in (await am.bus.request(by_id)).items] == [
        b.snapshot_id,
        a.snapshot_id,
    ]
    with pytest.raises(NotFound):
        await am.bus.request(ListSnapshots(workcell="nowhere"))
    with pytest.raises(NotFound):  # another workcell's snapshot
        await am.bus.request(GetSnapshot(workcell=workcell.workcell.name, snapshot_id=uuid.uuid4()))


async def test_a_run_that_moved_labware_moves_it_in_the_inventory_once(
    am: AM, workcell: WorkcellLayout, tap: Any
) -> None:
    """The snapshot says the source plate is in the reader now: the inventory follows (parent,
    slot, definition), announces the move once under redelivery, and an older snapshot still
    placing it on its site, arriving late, does not move it back."""
    name = workcell.workcell.name
    reader, deck = by_name(workcell, "plate_reader"), by_name(workcell, "deck")
    moves = await tap(AssetMoved, str(by_name(workcell, "source_plate").accession_id))
    run_id = uuid.uuid4()
    home = Placement(parent_id=deck.accession_id, parent="deck", slot="plate_carrier-0")
    into_reader = Placement(parent_id=reader.accession_id, parent="plate_reader")
    same = await written(
        am, workcell, {"source_plate": well(9)}, T0, placements={"source_plate": home}
    )
    moved = await written(
        am,
        workcell,
        {"source_plate": well(8)},
        T0 + timedelta(minutes=1),
        run_id=run_id,
        placements={"source_plate": into_reader},
    )
    late = await written(
        am, workcell, {"source_plate": well(7)}, T0, placements={"source_plate": home}
    )
    await recorded(am, same)
    await moves.assert_silent()  # where the inventory has it already: no move
    await recorded(am, moved, moved, late)

    event = await moves.next()
    assert (event.name, event.parent_id, event.parent, event.slot) == (
        "source_plate",
        reader.accession_id,
        "plate_reader",
        None,
    )
    assert (event.previous_parent, event.previous_slot) == ("deck", "plate_carrier-0")
    assert (event.run_id, event.snapshot_id) == (run_id, moved.snapshot_id)
    await moves.assert_silent()
    plate = await asset(am, workcell, "source_plate")
    assert (plate.parent_id, plate.slot) == (reader.accession_id, None)
    assert plate.definition["parent_name"] == "plate_reader"
    layout = await am.bus.request(GetWorkcellLayout(workcell=name))
    assert by_name(layout, "source_plate").parent_id == reader.accession_id  # cache dropped

    # Put at a deck position by a later run: parent, no slot, the location in its definition.
    spot = Placement(parent_id=deck.accession_id, parent="deck", location=(600.0, 120.0, 0.0))
    later = await written(
        am,
        workcell,
        {"source_plate": well(8)},
        T0 + timedelta(minutes=2),
        placements={"source_plate": spot},
    )
    await recorded(am, later)
    event = await moves.next()
    assert (event.parent, event.slot, event.previous_parent) == ("deck", None, "plate_reader")
    plate = await asset(am, workcell, "source_plate")
    assert (plate.parent_id, plate.slot) == (deck.accession_id, None)
    assert plate.definition["location"] == {"x": 600.0, "y": 120.0, "z": 0.0, "type": "Coordinate"}


async def test_a_runs_final_snapshot_is_recorded_before_its_leases_go(
    am: AM, workcell: WorkcellLayout
) -> None:
    """``ReleaseAssets`` naming the run's final snapshot records it first when its event has
    not been consumed (here: never published); twice is once."""
    reader = by_name(workcell, "plate_reader")
    final = await written(
        am,
        workcell,
        {"source_plate": well(3)},
        T0,
        kind="run_finished",
        placements={"source_plate": Placement(parent_id=reader.accession_id)},
    )
    release = ReleaseAssets(
        run_id=uuid.uuid4(), workcell=workcell.workcell.name, snapshot_id=final.snapshot_id
    )
    await am.bus.publish(release)
    await am.bus.publish(release)
    await drained(am.bus.js, COMMANDS.name, "asset-manager-release")
    plate = await asset(am, workcell, "source_plate")
    assert (plate.state, plate.parent_id) == (well(3), reader.accession_id)
    assert await listed(am, workcell) == [final.snapshot_id]


async def test_a_large_call_result_is_read_by_reference_and_pruned_by_age(
    am: AM, workcell: WorkcellLayout
) -> None:
    name, run_id = workcell.workcell.name, uuid.uuid4()
    kept = call_result_object(name, run_id, 3)
    await am.put(kept, json.dumps([[0.5] * 12] * 8).encode())
    found = await am.bus.request(GetCallResult(run_id=run_id, object_name=kept))
    assert (found.object_name, found.result) == (kept, [[0.5] * 12] * 8)
    with pytest.raises(InvalidInput):  # another run's result is not this run's
        await am.bus.request(GetCallResult(run_id=uuid.uuid4(), object_name=kept))
    with pytest.raises(InvalidInput):  # a snapshot is not a result
        await am.bus.request(GetCallResult(run_id=run_id, object_name=f"{name}/{run_id}"))
    with pytest.raises(NotFound):
        missing = call_result_object(name, run_id, 4)
        await am.bus.request(GetCallResult(run_id=run_id, object_name=missing))

    # Retention by age: a result older than CALL_RESULTS_KEPT_SECONDS goes, a snapshot stays.
    snapshot = await written(am, workcell, {"source_plate": well(1)}, T0)
    pruner = Snapshots(
        am.db,
        Inventory(am.db),
        None,  # type: ignore[arg-type]  # pruning emits nothing
        StateStores(lambda: am.bus.js),
        KEPT,
        lambda _: False,
        results_kept_seconds=3600,
    )
    assert await pruner.prune_results(name, force=True) == 0  # young
    pruner.results_kept_seconds = 0
    assert await pruner.prune_results(name, force=True) == 1
    assert await pruner.prune_results(name) == 0  # at most once an hour unless forced
    with pytest.raises(ObjectNotFoundError):
        await am.get(kept)
    assert (await am.get(snapshot.object_name)).data


# -- restore --------------------------------------------------------------------------------------
async def test_restore_makes_a_restored_snapshot_and_announces_it_once(
    am: AM, workcell: WorkcellLayout, tap: Any
) -> None:
    name = workcell.workcell.name
    good = await written(am, workcell, {"source_plate": well(50), "dest_plate": well(5)}, T0)
    bad = await written(am, workcell, {"source_plate": well(0)}, T0 + timedelta(seconds=1))
    await recorded(am, good, bad)
    restored_events = await tap(WorkcellStateRestored, name)

    info = await am.bus.request(
        RestoreSnapshot(workcell=name, snapshot_id=good.snapshot_id, reason="spill", actor="ada")
    )
    assert info.kind == "restored" and info.run_id is None
    assert info.snapshot_id not in (good.snapshot_id, bad.snapshot_id)
    assert sorted(info.asset_names) == ["dest_plate", "source_plate"]
    event = await restored_events.next()
    assert (event.restored, event.source_snapshot_id) == (info, good.snapshot_id)
    assert (event.reason, event.actor, event.workcell_name) == ("spill", "ada", name)
    await restored_events.assert_silent()

    source = await asset(am, workcell, "source_plate")
    assert (source.state, source.state_snapshot_id) == (well(50), info.snapshot_id)
    assert source.state_recorded_at is not None and source.state_recorded_at > bad.taken_at
    body = await am.bus.request(GetSnapshot(workcell=name, snapshot_id=info.snapshot_id))
    assert {a.asset_name: a.state for a in body.assets} == {
        "source_plate": well(50),
        "dest_plate": well(5),
    }
    assert body.size_bytes == len((await am.get(info.object_name)).data)
    assert (await listed(am, workcell))[0] == info.snapshot_id


async def test_restore_of_some_assets_and_bad_requests(am: AM, workcell: WorkcellLayout) -> None:
    name = workcell.workcell.name
    snap = await written(am, workcell, {"source_plate": well(7), "dest_plate": well(7)}, T0)
    await recorded(am, snap)
    later = await written(
        am, workcell, {"source_plate": well(9), "dest_plate": well(9)}, T0 + timedelta(seconds=1)
    )
    await recorded(am, later)

    with pytest.raises(InvalidInput) as refused:
        await am.bus.request(
            RestoreSnapshot(
                workcell=name, snapshot_id=snap.snapshot_id, reason="x", assets=["tip_rack"]
            )
        )
    assert refused.value.details["unknown"] == ["tip_rack"]
    with pytest.raises(NotFound):
        await am.bus.request(RestoreSnapshot(workcell=name, snapshot_id=uuid.uuid4(), reason="x"))
    assert await rows(am, workcell) == 2  # nothing recorded for the refusals

    info = await am.bus.request(
        RestoreSnapshot(
            workcell=name, snapshot_id=snap.snapshot_id, reason="x", assets=["dest_plate"]
        )
    )
    assert info.asset_names == ["dest_plate"]
    assert (await asset(am, workcell, "dest_plate")).state == well(7)
    assert (await asset(am, workcell, "source_plate")).state == well(9)  # untouched


async def test_restore_is_refused_while_a_run_holds_an_asset(
    am: AM, workcell: WorkcellLayout, tap: Any
) -> None:
    name = workcell.workcell.name
    snap = await written(am, workcell, {"source_plate": well(3)}, T0)
    await recorded(am, snap)
    run_id = uuid.uuid4()
    grants, releases = (
        await tap(AssetsReserved, str(run_id)),
        await tap(AssetsReleased, str(run_id)),
    )
    requirement = AssetRequirementSpec(name="plate", type_fqn=fqn(Plate), kind="resource")
    await am.bus.publish(
        ReserveAssets(
            run_id=run_id, requirements=[requirement], workcell=name, pins={"plate": "source_plate"}
        )
    )
    await grants.next()
    restores = await tap(WorkcellStateRestored, name)

    with pytest.raises(Conflict) as refused:
        await am.bus.request(
            RestoreSnapshot(workcell=name, snapshot_id=snap.snapshot_id, reason="x")
        )
    assert refused.value.details["assets"] == ["source_plate"]
    assert await rows(am, workcell) == 1
    await restores.assert_silent()

    plate_id = str(by_name(workcell, "source_plate").accession_id)
    freed = await tap(AssetStatusChanged, plate_id, lambda e: e.status == "available")
    await am.bus.publish(ReleaseAssets(run_id=run_id))
    await releases.next()
    await freed.next()  # the status follows the lease a moment later
    info = await am.bus.request(
        RestoreSnapshot(workcell=name, snapshot_id=snap.snapshot_id, reason="x")
    )
    assert (await restores.next()).restored == info


async def test_assets_deleted_since_are_skipped(am: AM, workcell: WorkcellLayout) -> None:
    dest = by_name(workcell, "dest_plate")
    await am.bus.request(DeleteAsset(accession_id=dest.accession_id))
    snap = await written(am, workcell, {"source_plate": well(4), "dest_plate": well(4)}, T0)
    await recorded(am, snap)
    assert (await asset(am, workcell, "source_plate")).state == well(4)
    assert await listed(am, workcell) == [snap.snapshot_id]
    info = await am.bus.request(
        RestoreSnapshot(workcell=workcell.workcell.name, snapshot_id=snap.snapshot_id, reason="x")
    )
    assert info.asset_names == ["source_plate"]  # nothing to restore into the deleted one


class FailingDeletes:
    """The real object store, except that deleting fails while ``failing``."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.failing = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def delete(self, name: str) -> Any:
        if self.failing:
            raise ConnectionError("object store unreachable")
        return await self.store.delete(name)


async def test_a_failed_object_delete_is_retried_at_the_next_prune(
    am: AM, workcell: WorkcellLayout
) -> None:
    """Driven on the service object (against the module's database and object store), so the
    object store can fail its deletes."""
    relay = OutboxRelay(am.db, OUTBOX, lambda: am.bus.publisher)
    stores = StateStores(lambda: am.bus.js)
    store = FailingDeletes(await stores.of(workcell.workcell.name))
    stores._stores[workcell.workcell.name] = store  # type: ignore[assignment]
    snapshots = Snapshots(am.db, Inventory(am.db, relay), relay, stores, KEPT, lambda _: False)
    events = [
        await written(am, workcell, {"source_plate": well(i)}, T0 + timedelta(seconds=i))
        for i in range(KEPT + 1)
    ]
    for event in events:
        await snapshots.record(event)
    oldest = events[0]
    assert await listed(am, workcell) == [e.snapshot_id for e in reversed(events[1:])]
    assert await rows(am, workcell) == KEPT + 1  # the pruned row waits for its object
    assert (await am.get(oldest.object_name)).data

    store.failing = False
    assert await snapshots.prune(workcell.workcell.name) == 1
    assert await rows(am, workcell) == KEPT
    with pytest.raises(ObjectNotFoundError):
        await am.get(oldest.object_name)
    for event in events[1:]:
        assert (await am.get(event.object_name)).data  # the newest are never touched


# -- an operator sets a labware's state ---------------------------------------------------------


async def test_an_operator_sets_a_wells_volume_audited_and_announced_once(
    am: AM, workcell: WorkcellLayout, tap: Any
) -> None:
    name = workcell.workcell.name
    plate = by_name(workcell, "source_plate")
    announced = await tap(WorkcellStateRestored, name)
    cmd = SetAssetState(
        accession_id=plate.accession_id,
        state={"source_plate_well_A1": {"volume": 120}},
        reason="refilled A1 by hand",
        actor="ada",
    )

    info = await am.bus.request(cmd)
    assert (info.kind, info.asset_names) == ("set", ["source_plate"])
    event = await announced.next()
    assert (event.restored, event.source_snapshot_id) == (info, None)
    assert (event.reason, event.actor) == ("refilled A1 by hand", "ada")
    await announced.assert_silent()

    recorded_state = (await asset(am, workcell, "source_plate")).state
    assert recorded_state is not None and recorded_state["source_plate_well_A1"]["volume"] == 120
    assert recorded_state["source_plate_well_B1"]["volume"] == 200  # the rest as it was
    body = await am.bus.request(GetSnapshot(workcell=name, snapshot_id=info.snapshot_id))
    assert body.assets[0].state == recorded_state
    assert (await listed(am, workcell))[0] == info.snapshot_id

    again = await am.bus.request(cmd)  # the same request twice: the same state, a new record
    assert again.snapshot_id != info.snapshot_id
    assert (await asset(am, workcell, "source_plate")).state == recorded_state


async def test_setting_a_state_pylabrobot_refuses_records_nothing(
    am: AM, workcell: WorkcellLayout
) -> None:
    plate = by_name(workcell, "source_plate")
    for state in (
        {"source_plate_well_A1": {"volume": 5000}},  # past the well
        {"no_such_well": {"volume": 1}},
    ):
        with pytest.raises(InvalidInput):
            await am.bus.request(
                SetAssetState(accession_id=plate.accession_id, state=state, reason="x")
            )
    with pytest.raises(NotFound):
        await am.bus.request(SetAssetState(accession_id=uuid.uuid4(), tips={"*": True}, reason="x"))
    assert await rows(am, workcell) == 0


async def test_setting_state_is_refused_while_a_run_holds_the_labware(
    am: AM, workcell: WorkcellLayout, tap: Any
) -> None:
    name, run_id = workcell.workcell.name, uuid.uuid4()
    grants = await tap(AssetsReserved, str(run_id))
    requirement = AssetRequirementSpec(name="plate", type_fqn=fqn(Plate), kind="resource")
    await am.bus.publish(
        ReserveAssets(
            run_id=run_id, requirements=[requirement], workcell=name, pins={"plate": "dest_plate"}
        )
    )
    await grants.next()
    plate = by_name(workcell, "dest_plate")
    with pytest.raises(Conflict):
        await am.bus.request(
            SetAssetState(
                accession_id=plate.accession_id,
                state={"dest_plate_well_A1": {"volume": 10}},
                reason="x",
            )
        )
    assert await rows(am, workcell) == 0
    await am.bus.publish(ReleaseAssets(run_id=run_id))
