"""Where runs may be placed: the edges a heartbeat bucket says accept runs (no servers)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from nats.js.errors import KeyNotFoundError

from praxis_asset_manager.edges import EdgeBook, EdgeWatch
from praxis_contracts.runs import EdgeHeartbeat, edge_key


def beat(workcell: str, instance: str, *, accepting: bool = True, ttl: int = 6) -> EdgeHeartbeat:
    now = datetime.now(UTC)
    return EdgeHeartbeat(
        workcell=workcell,
        instance=instance,
        version="t",
        started_at=now,
        at=now,
        ttl_seconds=ttl,
        accepting=accepting,
    )


def test_a_workcell_accepts_runs_while_one_of_its_processes_does() -> None:
    book = EdgeBook()
    book.beat(beat("a", "1"), now=0)
    book.beat(beat("a", "2", accepting=False), now=0)  # the old one, stopping
    book.beat(beat("b", "3", accepting=False), now=0)
    assert book.accepting() == {"a"} and book.live() == {"a", "b"}
    book.gone("1")
    assert book.accepting() == frozenset()
    assert not book.expire("3", now=5) and book.expire("3", now=8)  # TTL 6 + 1 s slack
    assert book.live() == {"a"}


class FakeBucket:
    """``get`` answers what the test says: an exception, a missing key, or a value."""

    def __init__(self) -> None:
        self.answer: Any = None

    async def get(self, key: str) -> Any:
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class Entry:
    def __init__(self, value: bytes) -> None:
        self.value, self.operation = value, None


async def test_an_edge_past_its_deadline_is_read_before_it_is_taken_for_gone() -> None:
    opened: list[frozenset[str]] = []
    watch = EdgeWatch(opened.append)
    watch._kv = bucket = FakeBucket()  # type: ignore[assignment]
    watch.ready.set()
    heartbeat = beat("a", "1")
    watch.observe(edge_key("a", "1"), heartbeat.model_dump_json().encode(), None)
    assert opened == [frozenset({"a"})] and watch.accepting("a")
    long_ago = asyncio.get_running_loop().time() - 100
    watch.book.beat(heartbeat, long_ago)  # its last beat we saw is long past its TTL

    bucket.answer = TimeoutError()  # a leader election: nothing can be read
    await watch._confirm("1")
    assert watch.accepting("a")  # no evidence: still placed there

    bucket.answer = Entry(heartbeat.model_dump_json().encode())  # it beat; we missed it
    watch.book.beat(heartbeat, long_ago)
    await watch._confirm("1")
    assert watch.accepting("a")

    bucket.answer = KeyNotFoundError()  # really gone
    watch.book.beat(heartbeat, long_ago)
    await watch._confirm("1")
    assert not watch.accepting("a")
    await watch.stop()
