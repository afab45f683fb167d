"""Workcell state snapshots from the orchestrator's side: what a run records (bodies in the real
object store, small events in the real stream), rollback, an operator's restore applied to the
live objects, a NATS outage, and a restarted orchestrator that carries on from the recorded state.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from praxis_contracts.runs import ExecuteRun, RunFinished
from praxis_contracts.state import (
    AssetState,
    Placement,
    SnapshotInfo,
    WorkcellSnapshot,
    WorkcellStateRecorded,
    WorkcellStateRestored,
    snapshot_object_name,
)
from praxis_contracts.topology import workcell_state
from praxis_devstack.servers import NatsServer
from praxis_runtime.bus import Bus

pytestmark = pytest.mark.integration

TRANSFER = {
    "lh": "liquid_handler",
    "tips": "tip_rack",
    "source": "source_plate",
    "dest": "dest_plate",
}
BOUND = sorted(TRANSFER.values())


class StateLog:
    """Every ``WorkcellStateRecorded`` of one workcell, in stream order (from its start)."""

    def __init__(self, client: Bus, workcell: str) -> None:
        self.client = client
        self.workcell = workcell
        self.events: list[WorkcellStateRecorded] = []
        self.raw_sizes: list[int] = []
        self._changed = asyncio.Event()
        self._sub: Subscription | None = None

    async def open(self) -> StateLog:
        subject = f"{WorkcellStateRecorded.subject}.{self.workcell}"
        self._sub = await self.client.js.subscribe(subject, ordered_consumer=True, cb=self._on)
        return self

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on(self, msg: Msg) -> None:
        self.events.append(WorkcellStateRecorded.model_validate_json(msg.data))
        self.raw_sizes.append(len(msg.data))
        self._changed.set()

    def of(self, run_id: uuid.UUID) -> list[WorkcellStateRecorded]:
        return [e for e in self.events if e.run_id == run_id]

    async def until(self, run_id: uuid.UUID, kind: str, timeout: float = 15.0) -> None:
        """Wait until a snapshot of ``kind`` of the run has been seen."""
        async with asyncio.timeout(timeout):
            while not any(e.kind == kind for e in self.of(run_id)):
                self._changed.clear()
                await self._changed.wait()

    async def body(self, info: SnapshotInfo) -> tuple[WorkcellSnapshot, int]:
        store = await self.client.js.object_store(workcell_state(info.workcell_name).bucket)
        result = await store.get(info.object_name)
        assert result.data is not None
        return WorkcellSnapshot.model_validate_json(result.data), len(result.data)


@contextlib.asynccontextmanager
async def state_log(world: Any) -> AsyncIterator[StateLog]:
    log = await StateLog(world.client, world.workcell).open()
    try:
        yield log
    finally:
        await log.close()


def volume(states: dict[str, Any], plate: str, well: str = "A1") -> float:
    """A well's tracked volume in a plate's state (as ``LiveWorkcell.snapshot`` gives it)."""
    return float(states[plate][f"{plate}_well_{well}"]["volume"])


def body_states(snapshot: WorkcellSnapshot) -> dict[str, Any]:
    return {asset.asset_name: asset.state for asset in snapshot.assets}


def live_volume(world: Any, plate: str, well: str = "A1") -> float:
    live = world.edge.executor.workcell.live
    return float(live.get(plate).get_well(well).tracker.get_used_volume())


async def run(world: Any, cmd: ExecuteRun) -> RunFinished:
    """Execute the run; once it finished, release its leases (as the scheduler does)."""
    log = await world.execute(cmd)
    finished: RunFinished = await log.finished()
    await release(world, cmd)
    return finished


async def release(world: Any, cmd: ExecuteRun) -> None:
    for binding in cmd.bindings:
        await world.leases.release_holder(binding.lease_key, cmd.run_id)


# -- recording ------------------------------------------------------------------------------------
async def test_a_run_records_its_start_each_checkpoint_and_its_end(world: Any) -> None:
    async with state_log(world) as states:
        cmd = await world.command("two_transfers", TRANSFER)
        finished = await run(world, cmd)
        assert finished.outcome == "completed", finished.error
        await states.until(cmd.run_id, "run_finished")

        recorded = states.of(cmd.run_id)
        assert [(e.kind, e.checkpoint) for e in recorded] == [
            ("run_started", None),
            ("checkpoint", "transfer#2"),
            ("checkpoint", "transfer#3"),
            ("run_finished", None),
        ]
        assert all(size < 8 * 1024 for size in states.raw_sizes)  # claim checks, not bodies
        dest = []
        for event in recorded:
            assert event.workcell_name == world.workcell
            assert sorted(event.asset_names) == BOUND
            assert event.object_name == snapshot_object_name(world.workcell, event.snapshot_id)
            body, size = await states.body(event)
            assert (body.snapshot_id, body.kind) == (event.snapshot_id, event.kind)
            assert event.size_bytes == size == body.size_bytes
            assert sorted(body_states(body)) == BOUND
            assert {a.asset_id for a in body.assets} == {b.asset_id for b in cmd.bindings}
            dest.append(volume(body_states(body), "dest_plate"))
        assert dest == [0.0, 20.0, 40.0, 40.0]
        # The run record still carries the final state inline (small enough).
        assert volume(finished.asset_states, "dest_plate") == 40.0


async def test_unchanged_state_is_not_recorded_again_and_a_redelivery_records_once(
    world: Any,
) -> None:
    async with state_log(world) as states:
        first = await world.command("keep_stepping", {"plate": "source_plate"}, {"until": "/"})
        assert (await run(world, first)).outcome == "completed"
        await states.until(first.run_id, "run_finished")
        # Its steps only read the plate: no checkpoint changed anything.
        assert [e.kind for e in states.of(first.run_id)] == ["run_started", "run_finished"]

        # The same plate, unchanged since: no run_started; the command delivered twice.
        second = await world.command("keep_stepping", {"plate": "source_plate"}, {"until": "/"})
        log = await world.follow(second.run_id)
        await world.client.publish(second)
        await world.client.publish(second)
        assert (await log.finished()).outcome == "completed"
        await release(world, second)
        await states.until(second.run_id, "run_finished")  # its run_started would be before
        assert [e.kind for e in states.of(second.run_id)] == ["run_finished"]
        assert len(log.of(RunFinished)) == 1


async def test_asset_states_too_large_for_the_event_are_sent_as_a_reference(world: Any) -> None:
    world.edge.executor.asset_states_inline_bytes = 10_000  # the demo's four assets: ~100 KB
    async with state_log(world) as states:
        cmd = await world.command("transfer", TRANSFER)
        finished = await run(world, cmd)
        assert finished.outcome == "completed", finished.error
        await states.until(cmd.run_id, "run_finished")
        final = states.of(cmd.run_id)[-1]
        assert final.kind == "run_finished"
        assert finished.asset_states == {
            "snapshot_id": str(final.snapshot_id),
            "object_name": final.object_name,
            "size_bytes": final.size_bytes,
        }
        body, _ = await states.body(final)
        assert volume(body_states(body), "dest_plate") == 20.0


async def test_where_a_run_left_its_labware_is_recorded_with_its_state(world: Any) -> None:
    """A plate parked in the reader, then put back on a site by a later run: each run's final
    snapshot says where the plate is (for the inventory to follow); machines have no place."""
    ids = {a.name: a.accession_id for a in world.layout.assets}
    async with state_log(world) as states:
        park = await world.command(
            "park_in_reader", {"reader": "plate_reader", "plate": "source_plate"}
        )
        finished = await run(world, park)
        assert (finished.outcome, finished.result) == ("completed", "plate_reader"), finished.error
        await states.until(park.run_id, "run_finished")
        body, _ = await states.body(states.of(park.run_id)[-1])
        places = {a.asset_name: a.placement for a in body.assets}
        assert places == {
            "plate_reader": None,
            "source_plate": Placement(parent_id=ids["plate_reader"], parent="plate_reader"),
        }

        back = await world.command(
            "put_on_site",
            {"lh": "liquid_handler", "plate": "source_plate"},
            {"site": "plate_carrier-2"},
        )
        finished = await run(world, back)
        assert (finished.outcome, finished.result) == ("completed", "plate_carrier-2"), (
            finished.error
        )
        await states.until(back.run_id, "run_finished")
        body, _ = await states.body(states.of(back.run_id)[-1])
        (plate,) = [a for a in body.assets if a.asset_name == "source_plate"]
        assert plate.placement == Placement(
            parent_id=ids["deck"], parent="deck", slot="plate_carrier-2"
        )
        assert live_volume(world, "source_plate") == 200.0  # it moved with its liquid


# -- rollback -------------------------------------------------------------------------------------
async def test_a_failed_run_that_asked_for_rollback_is_rolled_back(world: Any) -> None:
    async with state_log(world) as states:
        cmd = await world.command("transfer_then_fail", TRANSFER)
        cmd = cmd.model_copy(update={"on_failure": "rollback"})
        finished = await run(world, cmd)
        assert finished.outcome == "failed"
        await states.until(cmd.run_id, "rolled_back")

        recorded = states.of(cmd.run_id)
        kinds = [e.kind for e in recorded]
        assert kinds == ["run_started", "checkpoint", "run_finished", "rolled_back"]
        bodies = [body_states((await states.body(e))[0]) for e in recorded]
        # What really happened is recorded, then the state before the run.
        assert [volume(b, "dest_plate") for b in bodies] == [0.0, 20.0, 20.0, 0.0]
        assert [volume(b, "source_plate") for b in bodies] == [200.0, 180.0, 180.0, 200.0]
        assert bodies[-1] == bodies[0]
        assert volume(finished.asset_states, "dest_plate") == 0.0
    assert live_volume(world, "dest_plate") == 0.0
    assert live_volume(world, "source_plate") == 200.0


async def test_a_rollback_leaves_an_asset_the_run_lost_to_whoever_holds_it(
    world: Any, eventually: Any
) -> None:
    """A run fenced off ``dest_plate`` (force-released: another run may be pipetting into it)
    rolls back only what it still holds, and records only that."""
    async with state_log(world) as states:
        flag = world.flag()
        cmd = await world.command("transfer_then_wait", TRANSFER, {"until": str(flag)})
        cmd = cmd.model_copy(update={"on_failure": "rollback"})
        log = await world.execute(cmd)
        live = world.edge.executor.workcell
        await eventually(
            lambda: live.live is not None and live_volume(world, "dest_plate") == 20.0,
            "the transfer",
        )
        dest = next(b for b in cmd.bindings if b.asset_name == "dest_plate")
        assert await world.leases.force_release(dest.lease_key, "taken by the test")
        run_ = world.edge.executor.runs[cmd.run_id]
        await eventually(lambda: run_.keeper.lost is not None, "the keeper saw it go")
        flag.touch()
        finished = await log.finished()
        await release(world, cmd)
        assert finished.outcome == "failed"
        await states.until(cmd.run_id, "rolled_back")
        rolled_back = [e for e in states.of(cmd.run_id) if e.kind == "rolled_back"][-1]
        assert "dest_plate" not in rolled_back.asset_names
        assert "source_plate" in rolled_back.asset_names
    assert live_volume(world, "dest_plate") == 20.0  # not its to roll back
    assert live_volume(world, "source_plate") == 200.0


async def test_a_failed_run_that_keeps_its_state_is_not_rolled_back(world: Any) -> None:
    async with state_log(world) as states:
        cmd = await world.command("transfer_then_fail", TRANSFER)  # on_failure: keep
        finished = await run(world, cmd)
        assert finished.outcome == "failed"
        await states.until(cmd.run_id, "run_finished")
        assert [e.kind for e in states.of(cmd.run_id)] == [
            "run_started",
            "checkpoint",
            "run_finished",
        ]
        assert volume(finished.asset_states, "dest_plate") == 20.0
    assert live_volume(world, "dest_plate") == 20.0


# -- an operator's restore ------------------------------------------------------------------------
async def put_restored(world: Any, assets: list[AssetState]) -> WorkcellStateRestored:
    """As the asset-manager does: a ``restored`` snapshot in the store, and its event."""
    snapshot_id = uuid.uuid4()
    info = SnapshotInfo(
        snapshot_id=snapshot_id,
        workcell_name=world.workcell,
        kind="restored",
        taken_at=datetime.now(UTC),
        asset_ids=[a.asset_id for a in assets],
        asset_names=[a.asset_name for a in assets],
        object_name=snapshot_object_name(world.workcell, snapshot_id),
    )
    body = WorkcellSnapshot(**info.model_dump(), assets=assets).model_dump_json().encode()
    store = await world.client.js.object_store(workcell_state(world.workcell).bucket)
    await store.put(info.object_name, body)
    return WorkcellStateRestored(
        workcell_name=world.workcell,
        restored=info,
        source_snapshot_id=uuid.uuid4(),
        reason="test",
        at=datetime.now(UTC),
    )


async def test_a_restore_is_loaded_into_the_live_objects_but_not_into_those_in_use(
    world: Any, eventually: Any
) -> None:
    async with state_log(world) as states:
        cmd = await world.command("two_transfers", TRANSFER)
        assert (await run(world, cmd)).outcome == "completed"
        await states.until(cmd.run_id, "run_finished")
        before = body_states((await states.body(states.of(cmd.run_id)[0]))[0])
    ids = {b.asset_name: b.asset_id for b in cmd.bindings}
    assert (live_volume(world, "source_plate"), live_volume(world, "dest_plate")) == (160, 40)

    # dest_plate is held by a run now; source_plate is free.
    flag = world.flag()
    busy = await world.command("keep_stepping", {"plate": "dest_plate"}, {"until": str(flag)})
    busy_log = await world.execute(busy)
    await eventually(lambda: busy.run_id in world.edge.executor.runs, "the busy run is here")
    event = await put_restored(
        world,
        [
            AssetState(asset_id=ids[n], asset_name=n, state=before[n])
            for n in ("source_plate", "dest_plate")
        ],
    )
    await world.client.publish(event)
    await world.client.publish(event)  # redelivered: the same state loaded again
    await eventually(lambda: live_volume(world, "source_plate") == 200, "source_plate restored")
    assert live_volume(world, "dest_plate") == 40  # in use: not touched
    await asyncio.to_thread(flag.touch)
    assert (await busy_log.finished()).outcome == "completed"
    assert live_volume(world, "dest_plate") == 40


# -- NATS away ------------------------------------------------------------------------------------
async def test_snapshots_taken_while_nats_is_away_are_stored_and_announced_once_it_is_back(
    own_nats: NatsServer, tmp_path: Path, make_world: Any, eventually: Any
) -> None:
    settings = {"edge_heartbeat_ttl_seconds": 3, "request_timeout_seconds": 2}
    async with make_world(own_nats, tmp_path, **settings) as world:
        edge = await world.edge.start()
        flag = world.flag()
        cmd = await world.command(
            "keep_transferring", {**TRANSFER}, {"until": str(flag)}, lease_ttl=30
        )
        log = await world.follow(cmd.run_id)
        await world.client.publish(cmd)
        recorder = edge.parts.recorder
        assert recorder is not None
        await eventually(lambda: edge.outbox.published >= 10, "events published before")

        await asyncio.to_thread(own_nats.stop)
        queued = len(edge.outbox)
        await eventually(lambda: len(edge.outbox) >= queued + 20, "snapshots queue up")
        await asyncio.to_thread(own_nats.start)
        await asyncio.to_thread(flag.touch)
        finished = await log.finished(timeout=30)
        assert finished.outcome == "completed", finished.error

        async with state_log(world) as states:
            await states.until(cmd.run_id, "run_finished", timeout=30)
            recorded = states.of(cmd.run_id)
            volumes = [
                volume(body_states((await states.body(e))[0]), "dest_plate") for e in recorded
            ]
    # One snapshot per transfer (each adds 1 uL), none lost, in order, none twice.
    transfers = finished.result
    assert [e.kind for e in recorded] == ["run_started"] + ["checkpoint"] * transfers + [
        "run_finished"
    ]
    assert volumes == [0.0] + [float(n) for n in range(1, transfers + 1)] + [float(transfers)]
    assert len({e.snapshot_id for e in recorded}) == len(recorded)


# -- a restarted orchestrator ---------------------------------------------------------------------
async def test_a_restarted_orchestrator_carries_on_from_the_recorded_state(world: Any) -> None:
    async with state_log(world) as states:
        cmd = await world.command("transfer", TRANSFER)
        assert (await run(world, cmd)).outcome == "completed"
        await states.until(cmd.run_id, "run_finished")
        # The asset-manager keeps each asset's newest recorded state; the layout carries it.
        newest: dict[str, Any] = {}
        for event in states.events:
            newest.update(body_states((await states.body(event))[0]))

    await world.edge.stop()
    layout = world.layouts.layout
    world.layouts.layout = layout.model_copy(
        update={
            "assets": [
                a.model_copy(update={"state": newest[a.name]}) if a.name in newest else a
                for a in layout.assets
            ]
        }
    )
    world.edge = type(world.edge)(world.edge.settings)
    await world.edge.start()

    again = await world.command("transfer", TRANSFER)
    finished = await run(world, again)
    assert finished.outcome == "completed", finished.error
    assert finished.result == 40.0  # dest A1: 20 from the first process, 20 from this one
    assert volume(finished.asset_states, "source_plate") == 160.0
