"""Executing runs against a real nats-server and live chatterbox instruments: the command is
acknowledged before the protocol is called (never run twice), a cancel works in any phase, and a
run whose leases are held for an operator is fenced."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from praxis_contracts.errors import ErrorCode
from praxis_contracts.runs import (
    ControlRunExecution,
    FunctionCallRecorded,
    RunFinished,
    RunHandedBack,
    RunPreparing,
    RunStarted,
)
from praxis_contracts.topology import COMMANDS

pytestmark = pytest.mark.integration

TOUCH = {"lh": "liquid_handler", "plate": "source_plate", "tips": "tip_rack"}


async def test_the_command_is_acknowledged_before_the_protocol_is_called(
    world: Any, eventually: Any
) -> None:
    # The ack and the run's events leave the orchestrator over one connection, in the order it
    # sent them; one subscriber sees them in that order.
    seen: list[str] = []

    async def on_ack(msg: Msg) -> None:
        seen.append("ack")

    async def on_event(msg: Msg) -> None:
        seen.append(msg.subject.split(".")[4])  # praxis.evt.orchestrator.run.<what>.<run>

    flag = world.flag()
    cmd = await world.command("keep_stepping", {"plate": "source_plate"}, {"until": str(flag)})
    nc = world.client.nc
    subs = [
        await nc.subscribe(f"$JS.ACK.{COMMANDS.name}.{world.durable}.>", cb=on_ack),
        await nc.subscribe(f"praxis.evt.orchestrator.run.*.*.{cmd.run_id}", cb=on_event),
    ]
    await nc.flush()
    try:
        log = await world.execute(cmd)
        await log.first(FunctionCallRecorded)
        await eventually(lambda: "started" in seen, "RunStarted seen live")
        assert seen[:3] == ["preparing", "ack", "started"]
        # While the protocol runs, the server has nothing left to (re)deliver: a crash now
        # cannot hand the run to another process.
        consumer = await world.consumer()
        assert (consumer.num_ack_pending, consumer.num_pending) == (0, 0)
        await asyncio.to_thread(flag.touch)
        assert (await log.finished()).outcome == "completed"
    finally:
        for sub in subs:
            await sub.unsubscribe()


async def test_a_redelivered_command_waits_for_the_first_and_the_run_executes_once(
    world: Any, eventually: Any
) -> None:
    cmd = await world.command("touch", TOUCH)
    world.layouts.hold()  # preparation hangs on the layout until released
    log = await world.follow(cmd.run_id)
    await world.client.publish(cmd)
    await world.client.publish(cmd)  # a second delivery while the first is still preparing
    await log.first(RunPreparing)
    await eventually(lambda: world.layouts.requests >= 1, "the layout was asked for")
    world.layouts.release()

    finished = await log.finished()
    assert finished.outcome == "completed", finished.error
    assert finished.result == "source_plate"
    await eventually(lambda: cmd.run_id not in world.edge.executor.runs, "the run left")
    consumer = await world.consumer()
    assert (consumer.num_ack_pending, consumer.num_pending) == (0, 0)  # both acknowledged
    assert len(log.of(RunPreparing)) == len(log.of(RunStarted)) == 1
    assert len(log.of(RunFinished)) == 1
    assert [c.status for c in log.of(FunctionCallRecorded)] == ["running", "completed"]


async def test_a_layout_that_cannot_be_fetched_for_now_is_asked_again(
    world: Any, eventually: Any
) -> None:
    """The asset-manager (or NATS) away while a run prepares: the layout is asked again until
    it comes, and the run completes (it used to fail with the request's error)."""
    world.layouts.fail_next(2)
    finished = await (await world.execute(await world.command("touch", TOUCH))).finished()
    assert finished.outcome == "completed", finished.error
    assert world.layouts.requests == 3


async def test_a_cancel_while_preparing_aborts_the_preparation(world: Any, eventually: Any) -> None:
    cmd = await world.command("touch", TOUCH)
    world.layouts.hold()  # the layout fetch hangs: the run is stuck in preparing
    log = await world.execute(cmd)
    await log.first(RunPreparing)
    await eventually(lambda: world.layouts.requests >= 1, "the layout was asked for")
    listed = await eventually(lambda: world.listed(cmd.run_id), "the heartbeat lists the run")
    assert listed.phase == "preparing"

    cancel = ControlRunExecution(run_id=cmd.run_id, workcell_name=world.workcell, action="cancel")
    await world.client.publish(cancel)

    finished = await log.finished()
    assert (finished.outcome, finished.edge_instance) == ("cancelled", world.edge.instance)
    assert log.of(RunStarted) == [] and log.of(FunctionCallRecorded) == []
    await eventually(lambda: not world.edge.executor.runs, "the run is no longer active")
    consumer = await world.consumer()
    assert (consumer.num_ack_pending, consumer.num_pending) == (0, 0)


async def test_a_cancel_before_its_command_is_noted_for_it(world: Any, eventually: Any) -> None:
    cmd = await world.command("touch", TOUCH)
    cancel = ControlRunExecution(run_id=cmd.run_id, workcell_name=world.workcell, action="cancel")
    await world.client.publish(cancel)
    await eventually(
        lambda: cmd.run_id in world.edge.executor.cancelled_early, "the cancel is noted"
    )

    log = await world.execute(cmd)

    finished = await log.finished()
    assert finished.outcome == "cancelled"
    assert log.of(RunPreparing) == [] and log.of(RunStarted) == []


async def test_a_run_held_for_intervention_is_fenced_at_its_next_call(
    world: Any, eventually: Any
) -> None:
    flag = world.flag()
    cmd = await world.command(
        "keep_stepping", {"plate": "source_plate"}, {"until": str(flag)}, lease_ttl=3600
    )
    log = await world.execute(cmd)
    await log.first(FunctionCallRecorded)

    # The scheduler decided the run needs an operator; the asset-manager keeps its lease
    # without expiry, which moves the token.
    await world.hold_for_intervention(cmd.bindings[0].lease_key)

    finished = await log.finished()
    assert finished.outcome == "failed"
    assert finished.error is not None and finished.error.code == ErrorCode.LEASE_LOST
    assert "held for intervention" in finished.error.message
    # Stopped at a call boundary: the next step never began, the protocol function failed.
    last = log.of(FunctionCallRecorded)[-1]
    assert (last.function, last.status) == ("keep_stepping", "failed")
    assert last.error is not None and "LeaseLost" in last.error


async def test_a_run_a_graceful_stop_abandons_while_preparing_is_prepared_again_elsewhere(
    nats_access: Any, tmp_path: Path, make_world: Any, eventually: Any
) -> None:
    async with make_world(nats_access, tmp_path, graceful_timeout_seconds=1) as world:
        first = await world.edge.start()
        cmd = await world.command("touch", TOUCH)
        world.layouts.hold()  # the first process never gets past preparing
        log = await world.execute(cmd)
        await log.first(RunPreparing)
        await eventually(lambda: world.layouts.requests >= 1, "the layout was asked for")

        await first.stop()  # the command was not acknowledged: it is handed back, not lost
        world.layouts.release()
        world.edge = second = await type(first)(first.settings).start()

        finished = await log.finished()
        assert (finished.outcome, finished.edge_instance) == ("completed", second.instance)
        preparing = [e.edge_instance for e in log.of(RunPreparing)]
        assert preparing == [first.instance, second.instance]
        assert [e.edge_instance for e in log.of(RunStarted)] == [second.instance]
        assert [e.edge_instance for e in log.of(RunHandedBack)] == [first.instance]
        consumer = await world.consumer()
        assert (consumer.num_ack_pending, consumer.num_pending) == (0, 0)


async def test_a_run_handed_back_goes_to_the_orchestrator_already_beside_it(
    nats_access: Any, tmp_path: Path, make_world: Any, eventually: Any
) -> None:
    """A rolling restart: the new process is up before the old one stops; the run the old one
    had not started is handed back (its claim withdrawn) and the new one takes it."""
    async with make_world(nats_access, tmp_path, graceful_timeout_seconds=1) as world:
        old = await world.edge.start()
        cmd = await world.command("touch", TOUCH)
        world.layouts.hold()  # the process that takes it never gets past preparing
        log = await world.execute(cmd)
        await log.first(RunPreparing)
        await eventually(lambda: world.layouts.requests >= 1, "the layout was asked for")
        new = await type(old)(old.settings).start()

        await old.stop()
        world.layouts.release()
        world.edge = new

        finished = await log.finished()
        assert (finished.outcome, finished.edge_instance) == ("completed", new.instance)
        assert [e.edge_instance for e in log.of(RunHandedBack)] == [old.instance]
