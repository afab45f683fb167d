"""A NATS outage in the middle of a run: the protocol carries on, and every event it emitted
reaches the stream once NATS is back, in order, once each. The server is this test's own (it is
stopped and started again on the same port with the same data)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from praxis_contracts.runs import FunctionCallRecorded, RunFinished, RunPreparing, RunStarted
from praxis_devstack.servers import NatsServer

pytestmark = pytest.mark.integration


async def test_events_survive_a_nats_restart_in_order_none_lost(
    own_nats: NatsServer, tmp_path: Path, make_world: Any, eventually: Any
) -> None:
    settings = {"edge_heartbeat_ttl_seconds": 3, "request_timeout_seconds": 2}
    async with make_world(own_nats, tmp_path, **settings) as world:
        edge = await world.edge.start()
        flag = world.flag()
        cmd = await world.command(
            "keep_stepping", {"plate": "source_plate"}, {"until": str(flag)}, lease_ttl=30
        )
        await world.client.publish(cmd)
        await eventually(lambda: edge.outbox.published >= 10, "events published before")

        await asyncio.to_thread(own_nats.stop)
        # The protocol goes on calling functions: its events queue up, nothing raises.
        stalled = edge.outbox.published
        await eventually(lambda: len(edge.outbox) >= 40, "events queued while NATS is down")
        await eventually(lambda: edge.beacon.failures >= 1, "a heartbeat failed")
        assert edge.outbox.published <= stalled + 1  # at most the one in flight at the stop
        run = edge.executor.runs[cmd.run_id]
        assert run.phase == "running" and run.keeper is not None
        await run.keeper.check()  # not fenced: NATS being away is no lost lease

        await asyncio.to_thread(own_nats.start)
        await asyncio.to_thread(flag.touch)
        log = await world.follow(cmd.run_id)  # read from the start of the stream
        finished = await log.finished(timeout=30)
        await eventually(lambda: edge.beacon.failures == 0, "the heartbeat is back")

    assert finished.outcome == "completed", finished.error
    events = log.events
    assert isinstance(events[0], RunPreparing) and isinstance(events[1], RunStarted)
    assert events[-1] is finished and len(log.of(RunFinished)) == 1
    assert all(e.edge_instance == edge.instance for e in events if not _is_call(e))
    calls = log.of(FunctionCallRecorded)
    assert len(calls) == len(events) - 3  # nothing else in between
    steps = finished.result
    assert finished.final_state == {"steps": steps}
    # keep_stepping is call 1; step calls 2 .. steps + 1, each started and completed in turn.
    expected = [(1, "running")]
    for sequence in range(2, steps + 2):
        expected += [(sequence, "running"), (sequence, "completed")]
    expected.append((1, "completed"))
    assert [(c.sequence, c.status) for c in calls] == expected
    assert [c.function for c in calls[1:-1:2]] == ["step"] * steps


def _is_call(event: Any) -> bool:
    return isinstance(event, FunctionCallRecorded)


async def test_a_graceful_stop_waits_until_the_queued_events_are_published(
    own_nats: NatsServer, tmp_path: Path, make_world: Any, eventually: Any
) -> None:
    settings = {"edge_heartbeat_ttl_seconds": 3, "graceful_timeout_seconds": 15}
    async with make_world(own_nats, tmp_path, **settings) as world:
        edge = await world.edge.start()
        flag = world.flag()
        cmd = await world.command("keep_stepping", {"plate": "source_plate"}, {"until": str(flag)})
        await world.client.publish(cmd)
        await eventually(lambda: edge.outbox.published >= 4, "the run is under way")

        await asyncio.to_thread(own_nats.stop)
        await asyncio.to_thread(flag.touch)
        await eventually(lambda: "RunFinished" in edge.outbox.pending(), "the run ended, unheard")
        stopping = asyncio.create_task(edge.stop())
        await asyncio.to_thread(own_nats.start)
        async with asyncio.timeout(20):
            await stopping  # returns once the queue is empty (or the graceful timeout is up)
        assert len(edge.outbox) == 0

        log = await world.follow(cmd.run_id)
        finished = await log.finished()
    assert finished.outcome == "completed", finished.error
    assert log.events[-1] is finished
