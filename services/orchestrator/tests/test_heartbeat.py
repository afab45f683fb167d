"""The orchestrator's heartbeat in the edges bucket, against a real nats-server: written before
the first command, listing the runs it executes as they change, repeated every third of its TTL
with the TTL on each message, and deleted on a graceful stop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.js.kv import KeyValue

from praxis_contracts.runs import EdgeHeartbeat, RunPreparing, RunStarted, edge_key
from praxis_contracts.topology import EDGES

pytestmark = pytest.mark.integration


class Beats:
    """What a watcher of one workcell's heartbeat keys sees (as the scheduler would)."""

    def __init__(self) -> None:
        self.entries: asyncio.Queue[KeyValue.Entry] = asyncio.Queue()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(self, world: Any) -> Beats:
        kv = await world.client.js.key_value(EDGES.bucket)
        self._watcher = await kv.watch(f"edge.{world.workcell}.*")
        self._task = asyncio.create_task(self._pump())
        return self

    async def _pump(self) -> None:
        assert self._watcher is not None
        async for entry in self._watcher:
            if entry is not None:
                self.entries.put_nowait(entry)

    async def next(self, timeout: float = 5.0) -> KeyValue.Entry:
        async with asyncio.timeout(timeout):
            return await self.entries.get()

    async def beat(self, timeout: float = 5.0) -> EdgeHeartbeat:
        entry = await self.next(timeout)
        assert entry.operation is None and entry.value, entry
        return EdgeHeartbeat.model_validate_json(entry.value)

    async def until(
        self, want: Callable[[EdgeHeartbeat], Any], timeout: float = 5.0
    ) -> EdgeHeartbeat:
        """The first beat from now on for which ``want`` holds."""
        async with asyncio.timeout(timeout):
            while not want(beat := await self.beat(timeout)):
                pass
        return beat

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()  # type: ignore[no-untyped-call]
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)


def phase_of(beat: EdgeHeartbeat) -> str | None:
    return beat.runs[0].phase if beat.runs else None


async def test_heartbeat_lists_runs_as_they_change_and_leaves_on_a_graceful_stop(
    nats_access: Any, tmp_path: Path, make_world: Any
) -> None:
    # A 30 s TTL beats every 10 s on its own: each beat this test waits at most 5 s for is one
    # the orchestrator sent because something changed.
    async with make_world(nats_access, tmp_path, edge_heartbeat_ttl_seconds=30) as world:
        beats = await Beats().open(world)
        try:
            await world.edge.start()
            assert world.edge.beacon.beats >= 1  # the first beat is part of start-up
            first = await beats.beat()
            assert (first.workcell, first.instance) == (world.workcell, world.edge.instance)
            assert (first.version, first.ttl_seconds, first.runs) == ("0.1.0", 30, [])
            assert first.key == edge_key(world.workcell, world.edge.instance) == world.key

            flag = world.flag()
            cmd = await world.command(
                "keep_stepping", {"plate": "source_plate"}, {"until": str(flag)}
            )
            log = await world.execute(cmd)
            listed = await beats.until(lambda b: bool(b.runs))
            assert [r.run_id for r in listed.runs] == [cmd.run_id]
            assert listed.started_at == first.started_at and listed.at > first.at
            await beats.until(lambda b: phase_of(b) == "running")

            for kind in (RunPreparing, RunStarted):
                assert (await log.first(kind)).edge_instance == world.edge.instance
            await asyncio.to_thread(flag.touch)
            finished = await log.finished()
            assert finished.outcome == "completed", finished.error
            assert finished.edge_instance == world.edge.instance
            await beats.until(lambda b: b.runs == [])

            await world.edge.stop()
            # Stopping, it first says it takes no new run (the asset-manager places none here),
            # then leaves.
            stopping = await beats.beat()
            assert (stopping.accepting, stopping.runs) == (False, [])
            assert first.accepting is True
            entry = await beats.next()
            while entry.operation is None:  # the listing beat after the hand-back
                assert EdgeHeartbeat.model_validate_json(entry.value).accepting is False
                entry = await beats.next()
            assert (entry.key, entry.operation) == (world.key, "DEL")
        finally:
            await beats.close()


async def test_heartbeat_repeats_every_third_of_its_ttl_and_reports_progress(
    nats_access: Any, tmp_path: Path, make_world: Any
) -> None:
    async with make_world(nats_access, tmp_path, edge_heartbeat_ttl_seconds=1) as world:
        beats = await Beats().open(world)
        try:
            await world.edge.start()
            flag = world.flag()
            cmd = await world.command(
                "keep_stepping", {"plate": "source_plate"}, {"until": str(flag)}
            )
            log = await world.execute(cmd)
            progress = await beats.until(
                lambda b: bool(b.runs) and b.runs[0].last_checkpoint_at is not None
            )
            run = progress.runs[0]
            assert (run.run_id, run.phase, run.last_call) == (cmd.run_id, "running", "step")

            # Nothing changes from here on but the run's progress: beats keep coming, about
            # three a second, each stored with the TTL.
            stamps = [(await beats.beat(timeout=2.0)).at for _ in range(4)]
            assert stamps == sorted(stamps)
            stored = await world.client.js.get_msg(
                f"KV_{EDGES.bucket}", subject=f"$KV.{EDGES.bucket}.{world.key}"
            )
            assert stored.headers is not None and stored.headers.get("Nats-TTL") == "1"
            later = EdgeHeartbeat.model_validate_json(stored.data)
            assert run.last_checkpoint_at is not None
            assert later.runs[0].last_checkpoint_at is not None
            assert later.runs[0].last_checkpoint_at >= run.last_checkpoint_at

            await asyncio.to_thread(flag.touch)
            assert (await log.finished()).outcome == "completed"
        finally:
            await beats.close()
