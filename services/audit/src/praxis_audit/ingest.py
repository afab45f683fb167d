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
  the stream's age limit) are counted (``praxis_audit_gap_events_total``) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext, api

from praxis_audit.domain import Entry, Position, entry_of
from praxis_audit.store import Trail
from praxis_contracts.topology import EVENTS
from praxis_runtime.metrics import AUDIT_GAP, AUDIT_LAG, AUDIT_STORED
from praxis_runtime.retry import Backoff

log = logging.getLogger(__name__)

BATCH = 500
QUEUED = 2_000
RETRY_FIRST, RETRY_MAX = 0.5, 10.0


class Follower:
    def __init__(self, js: Callable[[], JetStreamContext], trail: Trail) -> None:
        self._js = js
        self.trail = trail
        self.position: Position | None = None
        self._moved = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self.stream_last = 0
        self._backoff = Backoff(RETRY_FIRST, RETRY_MAX)

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

    async def _run(self) -> None:
        while True:  # ``_follow`` only ever ends by failing
            try:
                await self._follow()
            except Exception as exc:
                delay = self._backoff.failed()
                log.warning("following the events stream stopped (%r); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)  # backoff after a failure, then from the position

    async def _follow(self) -> None:
        js = self._js()
        info = await js.stream_info(EVENTS.name)
        epoch = info.created.isoformat() if info.created is not None else "unknown"
        position = await self.trail.position(epoch)
        await self._moved_to(position)
        self.stream_last = info.state.last_seq
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
                entries = [_entry(m) for m in batch]
                if gap := position.gap_before(entries[0].stream_seq):
                    AUDIT_GAP.inc(gap)
                    log.error(
                        "%d events (sequences %d to %d) left the stream before the trail "
                        "stored them",
                        gap,
                        position.start_at(),
                        entries[0].stream_seq - 1,
                    )
                stored = await self.trail.append(epoch, entries)
                AUDIT_STORED.inc(stored)
                position = Position(epoch, entries[-1].stream_seq)
                AUDIT_LAG.set(batch[-1].metadata.num_pending or 0)
                await self._moved_to(position)
                self._backoff.succeeded()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _moved_to(self, position: Position) -> None:
        async with self._moved:
            self.position = position
            self._moved.notify_all()


def _entry(msg: Msg) -> Entry:
    meta = msg.metadata
    return entry_of(meta.sequence.stream, msg.subject, msg.data, msg.headers, meta.timestamp)
