"""The edge survives its protocols, and a protocol reaches only what its run leased.

Real nats-server, the orchestrator in-process, real chatterbox PyLabRobot objects. A protocol
runs in a runner process of its own, on copies of its leased assets. One that blocks its loop
(``time.sleep``) or spins on the CPU leaves the edge alone: meanwhile the edge heartbeat beats,
the lease keeper renews, another run on the workcell completes and the health endpoint answers;
a cancel kills its runner and ends it ``cancelled`` within ``cancel_escalation_seconds``. A
protocol cannot see an asset its run did not lease, and a command it forges naming one is refused.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from praxis_contracts.errors import ErrorCode
from praxis_contracts.runs import (
    ControlRunExecution,
    FunctionCallRecorded,
    RunBlocked,
    RunFinished,
    RunStarted,
)
from praxis_devstack.servers import free_port

pytestmark = pytest.mark.integration

ESCALATION = 2.0
ESCALATION_MARGIN = 8.0  # before the edge isolation, such a cancel took 28 s
ISOLATION = {
    "edge_heartbeat_ttl_seconds": 1,
    "run_blocked_seconds": 0.5,
    "cancel_escalation_seconds": ESCALATION,
}
OTHER = {"lh": "liquid_handler", "plate": "dest_plate", "tips": "tip_rack"}
ROBOT = {"lh": "liquid_handler", "tips": "tip_rack", "dest": "dest_plate"}
BOTH = {**ROBOT, "source": "source_plate"}
SOURCE_HOME = "plate_carrier-0"  # the demo workcell's source plate sits on this site


async def health(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    answer = await reader.read(200)
    writer.close()
    return answer


def source_volumes(world: Any) -> list[float]:
    plate = world.edge.executor.workcell.live.get("source_plate")
    return [well.tracker.get_used_volume() for well in plate.get_all_items()]


@pytest.mark.parametrize("protocol", ["block", "spin"])
async def test_a_protocol_that_hogs_its_loop_leaves_the_edge_alive_and_is_cancelled_in_time(
    protocol: str, nats_access: Any, tmp_path: Path, make_world: Any, eventually: Any
) -> None:
    port = free_port()
    async with make_world(nats_access, tmp_path, health_port=port, **ISOLATION) as world:
        await world.edge.start()
        flag = world.flag()
        cmd = await world.command(
            protocol, {"plate": "source_plate"}, {"until": str(flag)}, lease_ttl=2
        )
        log = await world.execute(cmd)
        try:
            blocked = await log.first(RunBlocked)
            assert blocked.blocked_seconds >= 0.5 and blocked.last_call == protocol
            run = world.edge.executor.runs[cmd.run_id]
            assert run.keeper is not None and run.link is not None
            runner = run.link.pid
            key = cmd.bindings[0].lease_key
            beats = world.edge.beacon.beats

            # While it hogs its loop: the beacon beats, the keeper renews the 2 s lease,
            # another run on the workcell completes, the health endpoint answers.
            other = await world.execute(await world.command("touch", OTHER))
            assert (await other.finished()).outcome == "completed"
            await eventually(lambda: world.edge.beacon.beats >= beats + 3, "three more beats")
            for renewal in range(3):
                token = run.keeper.tokens[key]
                await eventually(
                    lambda token=token: run.keeper.tokens[key] > token, f"renewal {renewal}"
                )
            assert run.keeper.lost is None
            assert (await health(port)).startswith(b"HTTP/1.1 200")
            assert log.of(RunFinished) == []

            cancelled_at = time.monotonic()
            await world.client.publish(
                ControlRunExecution(
                    run_id=cmd.run_id, workcell_name=world.workcell, action="cancel"
                )
            )
            # The protocol is still blocked (its flag is touched only below): the escalation,
            # not the protocol, ended the run, within its documented bound. The margin is wide
            # on purpose (a loaded 2-core machine): this is the bound holding, not a speed.
            finished = await log.finished()
            assert time.monotonic() - cancelled_at < ESCALATION + ESCALATION_MARGIN
            # No instrument command was under way: killing its runner leaves every instrument
            # in a known state, so the run is cancelled (not held for an operator).
            assert finished.outcome == "cancelled", finished.error
            assert run.given_up and run.link.killed
            await eventually(
                lambda: cmd.run_id not in world.edge.executor.runs, "its leases were released"
            )
        finally:
            await asyncio.to_thread(flag.touch)
        await eventually(lambda: not _alive(runner), "the runner process is gone")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_protocol_awaiting_without_checkpoints_is_cancelled_cleanly(
    nats_access: Any, tmp_path: Path, make_world: Any
) -> None:
    async with make_world(nats_access, tmp_path, **ISOLATION) as world:
        await world.edge.start()
        cmd = await world.command("await_forever", {"plate": "source_plate"})
        log = await world.execute(cmd)
        await log.first(FunctionCallRecorded)
        await world.client.publish(
            ControlRunExecution(run_id=cmd.run_id, workcell_name=world.workcell, action="cancel")
        )
        finished = await log.finished()  # it never returns by itself
        # Its task was cancelled on its own loop between instrument commands: a clean stop.
        assert finished.outcome == "cancelled", finished.error
        assert log.of(RunBlocked) == []


@pytest.mark.parametrize(
    ("protocol", "assets"),
    [
        ("steal_via_root", {"dest": "dest_plate"}),
        ("steal_via_deck", ROBOT),
        ("steal_via_children", ROBOT),
    ],
)
async def test_a_protocol_cannot_see_an_asset_its_run_did_not_lease(
    protocol: str, assets: dict[str, str], world: Any
) -> None:
    """Its runner holds copies of its leased assets only: the liquid handler above a leased
    plate, the source plate on a leased liquid handler's deck are not there to be found."""
    held = await world.command("keep_stepping", {"plate": "source_plate"}, {"until": "/nope"})
    cmd = await world.command(protocol, assets)
    log = await world.execute(cmd)
    finished = await log.finished()
    assert finished.outcome == "failed"
    assert finished.error is not None and finished.error.code == ErrorCode.PROTOCOL_ERROR
    assert finished.error.type in {"AttributeError", "ResourceNotFoundError"}, finished.error
    assert source_volumes(world) == [200.0] * 96
    tips = world.edge.executor.workcell.live.get("tip_rack")
    assert tips.get_item("A1").has_tip()  # the tip went back (or was never taken)
    assert held.run_id != cmd.run_id


async def test_a_command_naming_an_asset_its_run_did_not_lease_is_refused(world: Any) -> None:
    """A protocol can make up any name (or message) it likes: the orchestrator resolves names
    among the run's leased assets only, and refuses the command."""
    cmd = await world.command("steal_via_channel", ROBOT)
    log = await world.execute(cmd)
    finished = await log.finished()
    assert finished.outcome == "failed"
    assert finished.error is not None and finished.error.code == ErrorCode.ASSET_NOT_LEASED
    assert "source_plate" in finished.error.message and str(cmd.run_id) in finished.error.message
    assert source_volumes(world) == [200.0] * 96
    tips = world.edge.executor.workcell.live.get("tip_rack")
    assert tips.get_item("A1").has_tip()  # returned after the refusal


async def test_a_plate_moved_by_hand_moves_on_the_workcell(world: Any) -> None:
    """PyLabRobot moves a plate into a reader by hand (``assign_child_resource``): the move in
    the runner is made on the live objects, the reading comes back (NaN for a well the
    chatterbox does not read: null in the result), and the plate is back on its site."""
    cmd = await world.command("read_by_hand", {"reader": "plate_reader", "plate": "source_plate"})
    finished = await (await world.execute(cmd)).finished()
    assert finished.outcome == "completed", finished.error
    assert isinstance(finished.result, list) and len(finished.result) == 2
    plate = world.edge.executor.workcell.live.get("source_plate")
    assert plate.parent.name == SOURCE_HOME


async def test_a_plate_moved_by_hand_where_its_run_leased_nothing_is_refused(world: Any) -> None:
    cmd = await world.command("misplace", {"plate": "source_plate"})
    finished = await (await world.execute(cmd)).finished()
    assert finished.outcome == "failed"
    assert finished.error is not None and finished.error.code == ErrorCode.ASSET_NOT_LEASED
    plate = world.edge.executor.workcell.live.get("source_plate")
    assert plate.parent.name == SOURCE_HOME  # the live plate never moved


async def test_honest_protocols_are_unaffected(world: Any) -> None:
    cmd = await world.command("transfer", BOTH)
    transfer = await world.execute(cmd)
    finished = await transfer.finished()
    assert (finished.outcome, finished.result) == ("completed", 20.0), finished.error
    for binding in cmd.bindings:  # as the asset-manager does once the run finished
        await world.leases.force_release(binding.lease_key, "run finished")
    dilution = await world.execute(await world.command("serial_dilution", BOTH))
    finished = await dilution.finished()
    assert (finished.outcome, finished.result) == ("completed", [50.0, 0.0, 50.0]), finished.error
    volumes = source_volumes(world)
    assert (volumes[0], volumes[1]) == (180.0, 100.0)  # A1 and B1 (column-major)


async def test_a_revoked_lease_refuses_the_next_instrument_command(
    world: Any, eventually: Any
) -> None:
    flag = world.flag()
    cmd = await world.command(
        "fenced_between_commands",
        {"lh": "liquid_handler", "tips": "tip_rack"},
        {"until": str(flag)},
        lease_ttl=3600,
    )
    log = await world.execute(cmd)
    await log.first(RunStarted)
    tips = world.edge.executor.workcell.live.get("tip_rack")
    await eventually(lambda: not tips.get_item("C1").has_tip(), "the tip was picked up")
    run = world.edge.executor.runs[cmd.run_id]

    tip_rack = next(b for b in cmd.bindings if b.requirement == "tips")
    assert await world.leases.force_release(tip_rack.lease_key, "revoked by the test")
    await eventually(lambda: run.keeper.lost is not None, "the keeper saw the lease go")
    await asyncio.to_thread(flag.touch)

    finished = await log.finished()
    assert finished.outcome == "failed"
    assert finished.error is not None and finished.error.code == ErrorCode.LEASE_LOST
    # No protocol-function boundary lay between: the guard refused the command itself.
    assert [c.status for c in log.of(FunctionCallRecorded)] == ["running", "failed"]
    assert run.view.commands == 1  # the pick-up went out, the return did not
    assert not tips.get_item("C1").has_tip()
    # Clean-up put the tip in the trash: the rack is no longer the run's to return it to.
    assert finished.cleanup == ["liquid_handler: discarded the tips on channels [0]"]
