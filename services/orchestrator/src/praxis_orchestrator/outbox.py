"""The orchestrator's outgoing events: an in-order queue that a relay task publishes.

A protocol must never stop, or fail, because NATS is briefly away (a restart, a network blip):
it drives instruments, and an exception in the middle of a transfer is worse than a late event.
So ``emit`` only appends to a queue (it never blocks and never raises), and one relay task
publishes the queue in order, each event only once the one before it is stored.

Why one at a time rather than a pipelined batch: a batch that is cut by a disconnect can lose an
earlier message (written to the dead socket) while a later one reaches the server over the new
connection, and the earlier one's re-publish would then land after it. One in flight keeps the
stream in emission order. Each event carries a stable ``Nats-Msg-Id``, so a re-publish after an
unknown outcome (the ack was lost, not the message) is dropped by JetStream's duplicate window
(``EVENTS.duplicate_window_seconds``).

Each attempt waits ``ack_timeout`` (a second) for its ack, not the bus's request timeout: an ack
takes milliseconds when the stream has a leader, and a message sent while it has none (a cluster
node died, the others elect) is never answered. Waiting five seconds for that lost ack was most
of a workcell's stall after a node kill (the events land, and show progress, only once the
re-publish reaches the new leader); a re-publish that was not needed is a dropped duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import nats.errors
from nats.js.errors import APIError

from praxis_contracts import headers as h
from praxis_contracts.base import Event
from praxis_runtime.bus import INFRA_RETRY_CAP, retry_delay
from praxis_runtime.logging import context_headers
from praxis_runtime.publisher import Publisher

log = logging.getLogger(__name__)


class Undeliverable(Exception):
    """Raised by an event's ``before`` step when no retry can help: the event is dropped."""


class _Queued(NamedTuple):
    seq: int
    name: str
    subject: str
    payload: bytes
    headers: dict[str, str]
    before: Callable[[], Awaitable[None]] | None = None


ACK_TIMEOUT_SECONDS = 1.0
"""How long one publish attempt waits for the stream's ack before it sends again."""


class Outbox:
    """Events in emission order; ``emit`` queues, the relay publishes until acknowledged."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        retry_cap: float = INFRA_RETRY_CAP,
        ack_timeout: float = ACK_TIMEOUT_SECONDS,
    ) -> None:
        self.publisher = publisher
        self.retry_cap = retry_cap
        self.ack_timeout = ack_timeout
        self.emitted = 0  # sequence of the last event queued
        self.published = 0  # sequence of the last event stored (or given up on)
        self._queue: deque[_Queued] = deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # set and cleared on every event published
        self._relay: asyncio.Task[None] | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None

    def __len__(self) -> int:
        """Events waiting to be published."""
        return len(self._queue)

    def pending(self) -> list[str]:
        """The types of the events waiting to be published, in order."""
        with self._lock:
            return [item.name for item in self._queue]

    def start(self) -> None:
        if self._relay is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.get_ident()
            self._relay = self._loop.create_task(self._run())

    def emit(
        self,
        event: Event,
        msg_id: str | None = None,
        *,
        before: Callable[[], Awaitable[None]] | None = None,
    ) -> int:
        """Queue ``event``; returns its sequence (see ``delivered``). Never blocks, never raises
        for NATS' sake: the event is serialised now, so later changes to it cannot leak in.

        ``before``: what must be done (on the relay, retried like the publish, idempotent)
        before the event goes out, e.g. putting the body it names in an object store (a claim
        check stays in order with the events, and survives NATS being away like they do).

        Safe from any thread (protocols run on threads of their own): the sequence and the
        queue move together under a lock, and the relay is woken on its own loop."""
        headers = {
            **context_headers(),
            h.MSG_ID: msg_id or f"edge-event:{uuid.uuid4().hex}",
        }
        payload = event.model_dump_json().encode()
        with self._lock:
            self.emitted += 1
            seq = self.emitted
            self._queue.append(
                _Queued(
                    seq, type(event).__name__, event.routing_subject(), payload, headers, before
                )
            )
        if self._loop is None or threading.get_ident() == self._thread:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process stops
                self._loop.call_soon_threadsafe(self._wake.set)
        return seq

    async def delivered(self, seq: int) -> None:
        """Wait until the event ``seq`` (and so every one before it) has been published."""
        while self.published < seq:
            await self._progress.wait()

    async def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for everything queued so far; whether it all went out."""
        try:
            async with asyncio.timeout(timeout):
                await self.delivered(self.emitted)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> None:
        """On shutdown: flush (bounded), then stop the relay; says what could not be sent."""
        if not await self.flush(timeout):
            log.error("%d events could not be published before shutdown", len(self._queue))
        if self._relay is not None:
            self._relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._relay
            self._relay = None

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._publish(self._queue[0])
            self._queue.popleft()
            self.published += 1
            self._progress.set()
            self._progress.clear()

    async def _publish(self, item: _Queued) -> None:
        """Publish one event until the stream has it; the same message id every attempt."""
        attempt = 0
        before = item.before
        while True:
            try:
                if before is not None:
                    await before()
                    before = None  # done: a retry only publishes
                await self.publisher.publish(
                    item.subject, item.payload, item.headers, timeout=self.ack_timeout
                )
                if attempt:
                    log.info("published %s after %d failed attempts", item.name, attempt)
                return
            except Exception as exc:
                if _permanent(exc):
                    # Retrying cannot help, and holding the queue would stop every later event.
                    log.error("dropped %s on %s: %s", item.name, item.subject, exc)
                    return
                attempt += 1
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "publishing %s failed (attempt %d, %d queued), will retry: %s",
                        item.name,
                        attempt,
                        len(self._queue),
                        type(exc).__name__,
                    )
                await asyncio.sleep(retry_delay(attempt, self.retry_cap))


def _permanent(exc: BaseException) -> bool:
    """An error no retry can cure: a message over the size limit or one the stream refuses.
    Everything else (time-outs, no responders, a closed or reconnecting connection, JetStream
    unavailable while the server recovers) is NATS being away, and is waited out."""
    if isinstance(exc, nats.errors.MaxPayloadError | Undeliverable):
        return True
    return isinstance(exc, APIError) and exc.code == 400
