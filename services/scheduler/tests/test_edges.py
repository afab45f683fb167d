"""Edge liveness: the pure book of deadlines, and the monitor over a fake bucket."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from nats.js.errors import KeyNotFoundError

from praxis_contracts.runs import EdgeHeartbeat, EdgeRun
from praxis_runtime.testing import InMemoryKeyValue
from praxis_scheduler.edges import EdgeBook, EdgeMonitor, Lost


def beat(instance: str, ttl: int = 1, *runs: uuid.UUID, workcell: str = "wc") -> EdgeHeartbeat:
    now = datetime.now(UTC)
    return EdgeHeartbeat(
        workcell=workcell,
        instance=instance,
        version="t",
        started_at=now,
        at=now,
        ttl_seconds=ttl,
        runs=[EdgeRun(run_id=r, phase="running") for r in runs],
    )


def test_an_edge_is_gone_only_after_its_ttl_and_the_grace_period() -> None:
    book = EdgeBook(grace_seconds=30)
    assert book.beat(beat("a", 10), now=100.0) is True
    assert book.beat(beat("a", 10), now=105.0) is False  # known already
    assert book.is_live("a") and book.deadline("a") == 145.0
    assert book.expire("a", now=144.9) is None
    lost = book.expire("a", now=145.0)
    assert lost is not None and lost.instance == "a" and lost.workcell == "wc"
    assert book.expire("a", now=200.0) is None  # reported once


def test_a_deleted_key_starts_the_grace_period_at_once() -> None:
    book = EdgeBook(grace_seconds=5)
    run = uuid.uuid4()
    book.beat(beat("a", 60, run), now=0.0)
    book.left("a", now=10.0)
    assert not book.is_live("a") and book.deadline("a") == 15.0
    lost = book.expire("a", now=15.0)
    assert lost is not None and set(lost.runs) == {str(run)}


def test_a_suspected_edge_that_never_beats_is_gone_after_the_grace_period() -> None:
    book = EdgeBook(grace_seconds=5)
    book.suspect(None, now=1.0)
    assert not book.is_live(None)
    lost = book.expire("", now=6.0)
    assert lost is not None and lost.instance is None


def test_a_nats_outage_gives_every_edge_a_full_period_from_its_end() -> None:
    """Nobody could beat, or be seen beating, while NATS was away: the keys that expired
    meanwhile say nothing about the edges. Deadlines count again from the reconnection."""
    book = EdgeBook(grace_seconds=6)
    book.beat(beat("a", 6), now=0.0)  # due at 12
    book.beat(beat("b", 6), now=0.0)
    book.left("b", now=7.0)  # its key expired during the outage: due at 12
    book.suspect("c", now=1.0)  # a run names it, it never beat: due at 7

    assert sorted(book.outage_over(now=20.0)) == ["a", "b", "c"]

    assert (book.deadline("a"), book.deadline("b"), book.deadline("c")) == (32.0, 32.0, 26.0)
    assert book.expire("a", now=31.9) is None
    book.beat(beat("b", 6), now=22.0)  # it beat again soon after: alive
    assert book.is_live("b") and book.expire("b", now=32.0) is None
    assert book.outage_over(now=10.0) == []  # a deadline is never brought forward


def test_live_processes_of_a_workcell() -> None:
    book = EdgeBook(grace_seconds=5)
    book.beat(beat("a", workcell="w1"), now=0.0)
    book.beat(beat("b", workcell="w2"), now=0.0)
    book.beat(beat("c", workcell="w1"), now=0.0)
    book.left("c", now=1.0)
    assert book.live_on("w1") == {"a"}


class Entry:
    def __init__(self, key: str, value: bytes | None, operation: str | None = None) -> None:
        self.key, self.value, self.operation = key, value, operation


class FakeBucket:
    """A bucket whose watcher tells of one heartbeat and then lags (as after a reconnect),
    while a direct read sees what is really there."""

    def __init__(self, first: EdgeHeartbeat) -> None:
        self.first = first
        self.current: EdgeHeartbeat | None = first
        self.reads = 0

    async def watchall(self) -> Any:
        return Watcher(Entry(self.first.key, self.first.model_dump_json().encode()))

    async def get(self, key: str) -> Entry:
        self.reads += 1
        if self.current is None:
            raise KeyNotFoundError
        return Entry(key, self.current.model_dump_json().encode())


class Watcher:
    def __init__(self, *entries: Entry) -> None:
        self.entries = list(entries)
        self.stopped = asyncio.Event()

    def __aiter__(self) -> AsyncIterator[Entry | None]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Entry | None]:
        for entry in self.entries:
            yield entry
        yield None  # the initial values are done
        await self.stopped.wait()  # then nothing: the watcher lags

    async def stop(self) -> None:
        self.stopped.set()


async def test_a_live_edge_the_watcher_lost_sight_of_is_not_declared_gone() -> None:
    bucket = FakeBucket(beat("a", ttl=1))
    lost: list[Lost] = []
    confirmed = asyncio.Event()

    async def on_lost(gone: Lost) -> None:
        lost.append(gone)
        confirmed.set()

    async def on_new(_: EdgeHeartbeat) -> None:
        return None

    async def get_bucket() -> Any:
        return bucket

    monitor = EdgeMonitor(EdgeBook(grace_seconds=0.1), get_bucket, on_lost, on_new)
    await monitor.start()
    try:
        # The edge keeps beating, but only a direct read shows it: never lost.
        while bucket.reads < 2:
            bucket.current = beat("a", ttl=1)
            await asyncio.sleep(0.05)  # the test's own edge beating, 20 times a second
        assert lost == [] and monitor.book.is_live("a")

        bucket.current = None  # now it is really gone
        await asyncio.wait_for(confirmed.wait(), 10)
        assert [g.instance for g in lost] == ["a"]
    finally:
        await monitor.stop()


def test_the_book_lists_each_edge_live_or_gone_with_its_runs() -> None:
    book = EdgeBook(grace_seconds=5)
    run = uuid.uuid4()
    book.beat(beat("b", 6, run, workcell="two"), now=0.0)
    book.beat(beat("a", 6, workcell="one"), now=0.0)
    stopping = beat("c", 6, workcell="one").model_copy(update={"accepting": False})
    book.beat(stopping, now=1.0)
    book.suspect("never-beat", now=0.0)  # no heartbeat: nothing to show
    book.left("b", now=2.0)
    shown = {(e.workcell, e.instance): e for e in book.edges()}
    assert list(shown) == [("one", "a"), ("one", "c"), ("two", "b")]
    assert shown[("one", "a")].live and shown[("one", "a")].accepting
    assert shown[("one", "c")].live and not shown[("one", "c")].accepting
    gone = shown[("two", "b")]
    assert not gone.live and not gone.accepting and [r.run_id for r in gone.runs] == [run]
    assert [e.instance for e in book.edges("two")] == ["b"]
    book.expire("b", now=7.0)
    assert [e.instance for e in book.edges("two")] == []


async def test_the_monitor_follows_edges_coming_and_going_in_memory() -> None:
    """The edge monitor on ``InMemoryKeyValue`` (held to the real bucket's behaviour by
    ``praxis_runtime``'s contract test): a heartbeat makes an edge known, its key expiring
    (the orchestrator's heartbeat TTL) makes it gone once the grace period passes."""
    kv = InMemoryKeyValue("praxis_edges")
    seen: asyncio.Queue[str] = asyncio.Queue()
    lost: asyncio.Queue[Lost] = asyncio.Queue()

    async def on_new(heartbeat: EdgeHeartbeat) -> None:
        await seen.put(heartbeat.instance)

    async def get_bucket() -> Any:
        return kv

    first = beat("a", 1, workcell="wc")
    await kv.put(first.key, first.model_dump_json().encode())  # beating before the monitor
    monitor = EdgeMonitor(EdgeBook(grace_seconds=0.1), get_bucket, lost.put, on_new)
    await monitor.start()
    try:
        assert await asyncio.wait_for(seen.get(), 5) == "a"
        late = beat("b", 1, workcell="wc")
        await kv.create(late.key, late.model_dump_json().encode(), msg_ttl=0.2)  # then stops
        assert await asyncio.wait_for(seen.get(), 5) == "b"
        assert monitor.book.is_live("b")
        gone = await asyncio.wait_for(lost.get(), 5)
        assert (gone.instance, gone.workcell) == ("b", "wc")
        assert monitor.book.is_live("a") and not monitor.book.is_live("b")
    finally:
        await monitor.stop()
