"""Following the events stream into the trail: an ordered consumer from where the trail ends,
batches of what has arrived written with their position in one transaction.

- Nothing is lost: the position is stored with the events it covers, and the consumer starts
  after it; a crash between the two stores neither.
- Nothing is stored twice: an event already stored (same stream incarnation and sequence) is
  skipped, so a replica following beside this one, or a redelivery, changes nothing.
- Memory is bounded: the consumer's callback waits while ``QUEUED`` events are queued, and the
  server stops sending (flow control) until the trail catches up.
- PostgreSQL or NATS away: the follower starts again from the stored position, with backoff.
- Events the stream no longer holds when the trail reaches them (a trail down for longer than
  the stream's age limit) are counted (``praxis_audit_gap_events_total``) and logged. A
  sequence missing from what arrived while the stream still holds it (dropped on the way) is
  read again: the follower stores what came before it and starts again from there.
- The connection back after a loss: the follower starts again from the stored position (the
  stream may be another incarnation, its consumer gone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from praxis_audit.domain import Entry, Position, entry_of
from praxis_audit.store import Trail
from praxis_contracts.topology import EVENTS
from praxis_runtime.metrics import AUDIT_GAP, AUDIT_LAG, AUDIT_STORED
from praxis_runtime.retry import Backoff

log = logging.getLogger(__name__)

BATCH = 500
QUEUED = 1_000
RETRY_FIRST, RETRY_MAX = 0.5, 10.0


class Follower:
    def __init__(self, js: Callable[[], JetStreamContext], trail: Trail) -> None:
        self._js = js
        self.trail = trail
        self.position: Position | None = None
        self._moved = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._backoff = Backoff(RETRY_FIRST, RETRY_MAX)
        self._resync = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-follower")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def caught_up(self, seq: int, timeout: float) -> bool:
        """Wait (pushed: every stored batch wakes it) until the trail holds the stream up to
        ``seq``; False if it does not within ``timeout`` seconds."""

        def reached() -> bool:
            return self.position is not None and self.position.last_seq >= seq

        async with self._moved:
            try:
                await asyncio.wait_for(self._moved.wait_for(reached), timeout)
            except TimeoutError:
                return False
        return True

    def resync(self) -> None:
        """Follow again from the stored position (called when the connection is back)."""
        self._resync.set()

    async def _run(self) -> None:
        while True:  # ``_follow`` only ever ends by failing, or by a resync
            self._resync.clear()
            follow = asyncio.ensure_future(self._follow())
            resync = asyncio.ensure_future(self._resync.wait())
            try:
                await asyncio.wait({follow, resync}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (follow, resync):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
            if follow.cancelled() or (exc := follow.exception()) is None:
                log.info("following the events stream again from the stored position")
                continue
            delay = self._backoff.failed()
            log.warning("following the events stream stopped (%r); again in %.1f s", exc, delay)
            await asyncio.sleep(delay)  # backoff after a failure, then from the position

    async def _follow(self) -> None:
        js = self._js()
        info = await js.stream_info(EVENTS.name)
        epoch = info.created.isoformat() if info.created is not None else "unknown"
        position = await self.trail.position(epoch)
        await self._moved_to(position)
        queue: asyncio.Queue[Msg] = asyncio.Queue(QUEUED)
        sub = await js.subscribe(
            EVENTS.subjects[0],
            stream=EVENTS.name,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
            config=api.ConsumerConfig(opt_start_seq=position.start_at()),
            cb=queue.put,
        )
        log.info("following %s from sequence %d", EVENTS.name, position.start_at())
        try:
            while True:
                batch = [await queue.get()]
                while len(batch) < BATCH and not queue.empty():
                    batch.append(queue.get_nowait())
                entries, again = await self._contiguous(js, position, map(_entry, batch))
                if entries:
                    stored = await self.trail.append(epoch, entries)
                    AUDIT_STORED.inc(stored)
                    position = Position(epoch, entries[-1].stream_seq)
                    AUDIT_LAG.set(batch[-1].metadata.num_pending or 0)
                    await self._moved_to(position)
                    self._backoff.succeeded()
                if again:
                    raise Missed(f"sequence {position.start_at()} did not arrive")
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    @staticmethod
    async def _contiguous(
        js: JetStreamContext, position: Position, arrived: Iterable[Entry]
    ) -> tuple[list[Entry], bool]:
        """What to store of what arrived: the entries that follow the position without a
        break (those already stored skipped), and whether to read again from after them
        (a sequence is missing that the stream still holds). Sequences the stream no longer
        holds are counted as lost and stepped over."""
        kept: list[Entry] = []
        expected = position.start_at()
        for entry in arrived:
            if entry.stream_seq < expected:
                continue  # stored already
            if entry.stream_seq > expected:
                if kept:
                    return kept, True  # store these first
                first = (await js.stream_info(EVENTS.name)).state.first_seq
                if first > expected:  # aged out (or deleted) before the trail came to them
                    lost = min(first, entry.stream_seq) - expected
                    AUDIT_GAP.inc(lost)
                    log.error(
                        "%d events (from sequence %d) left the stream before the trail stored them",
                        lost,
                        expected,
                    )
                    expected += lost
                if entry.stream_seq > expected:
                    return kept, True  # still in the stream: read again
            kept.append(entry)
            expected = entry.stream_seq + 1
        return kept, False

    async def _moved_to(self, position: Position) -> None:
        async with self._moved:
            self.position = position
            self._moved.notify_all()


class Missed(Exception):
    """A sequence the stream holds did not arrive: follow again from the position."""


def _entry(msg: Msg) -> Entry:
    meta = msg.metadata
    return entry_of(meta.sequence.stream, msg.subject, msg.data, msg.headers, meta.timestamp)
