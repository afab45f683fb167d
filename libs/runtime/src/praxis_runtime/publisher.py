"""JetStream publishing with acknowledgements, one message or many at once.

nats-py's ``JetStreamContext.publish`` is a request per message: a future, a done-callback and an
``asyncio.wait_for`` timer each, and callers that want several acks at once add a task per
message through ``asyncio.gather``. Here every message carries a reply subject under one inbox
subscription; a batch is written in one go and awaited as one future under one deadline, each
ack filling in its message's result, at about half the CPU per acknowledged message (README,
Design measurements).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from typing import NamedTuple

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import APIError, NoStreamResponseError

TTL_HEADER = "Nats-TTL"
NO_RESPONDERS = "503"


class Outgoing(NamedTuple):
    """One message for a stream: ``ttl`` (whole seconds) is the per-message TTL, if any.

    A named tuple: twenty of these per reservation, and a frozen dataclass costs twice as much
    to build."""

    subject: str
    payload: bytes
    headers: dict[str, str] | None = None
    ttl: int | None = None


Result = int | Exception
"""A message's stream sequence, or why it was not stored (``APIError``, timeout, no stream)."""


class Publisher:
    """Publishes to JetStream over one connection; acks arrive on one wildcard inbox."""

    def __init__(self, nc: Client, *, timeout: float = 5.0) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.timeout = timeout
        self._prefix = ""
        self._pending: dict[str, tuple[_Batch, int]] = {}
        self._tokens = itertools.count()
        self._lock = asyncio.Lock()

    async def publish(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str] | None = None,
        *,
        ttl: int | None = None,
        timeout: float | None = None,
    ) -> int:
        """Store one message; its stream sequence. Raises what the server or the clock said
        (waiting ``timeout`` for the ack, the publisher's own by default)."""
        (result,) = await self.publish_all(
            [Outgoing(subject, payload, headers, ttl)], timeout=timeout
        )
        if isinstance(result, Exception):
            raise result
        return result

    async def publish_all(
        self, messages: Sequence[Outgoing], *, timeout: float | None = None
    ) -> list[Result]:
        """Write every message, then wait for all acks under one deadline; a result for each,
        in order (an error is returned, not raised, so a caller can undo the ones that landed).
        """
        if not messages:
            return []
        prefix = self._prefix or await self._subscribe()
        batch = _Batch(len(messages), asyncio.get_running_loop().create_future())
        tokens = []
        try:
            for index, message in enumerate(messages):
                token = str(next(self._tokens))
                self._pending[token] = (batch, index)
                tokens.append(token)
                try:
                    await self.nc.publish(
                        message.subject,
                        message.payload,
                        reply=prefix + token,
                        headers=_headers(message),
                    )
                except Exception as exc:
                    batch.settle(index, exc)
            if not batch.done.done():
                await asyncio.wait([batch.done], timeout=timeout or self.timeout)
        finally:  # answered, timed out or cancelled: late acks find nothing to fill in
            for token in tokens:
                self._pending.pop(token, None)
        return [nats.errors.TimeoutError() if r is None else r for r in batch.results]

    async def publish_in_order(
        self, messages: Sequence[Outgoing], *, timeout: float | None = None
    ) -> int:
        """Publish messages for one stream in order, confirmed by one ack: the last one's.

        A stream takes in what one connection sends in the order it was sent, so the ack of the
        last message means every message before it was processed too. Those are not
        acknowledged one by one, so a rejection specific to one of them would go unseen: use
        this only for messages that carry no expectations (no expected-sequence headers) and
        stay far below size limits, such as events. A duplicate message id is not a loss.
        Confirming the asset-manager's status events this way rather than one ack each cut its
        CPU per reservation (README, Design measurements).
        """
        if not messages:
            return 0
        *first, last = messages
        for message in first:
            await self.nc.publish(message.subject, message.payload, headers=_headers(message))
        (result,) = await self.publish_all([last], timeout=timeout)
        if isinstance(result, Exception):
            raise result
        return result

    async def _subscribe(self) -> str:
        async with self._lock:
            if not self._prefix:
                prefix = self.nc.new_inbox() + "."
                await self.nc.subscribe(prefix + "*", cb=self._on_ack)
                self._prefix = prefix
        return self._prefix

    async def _on_ack(self, msg: Msg) -> None:
        waiting = self._pending.pop(msg.subject[len(self._prefix) :], None)
        if waiting is None:
            return  # the publisher gave up on it already
        batch, index = waiting
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            batch.settle(index, NoStreamResponseError())
            return
        try:
            reply = json.loads(msg.data)
            if "error" in reply:
                APIError.from_error(reply["error"])  # raises the error's own class
            batch.settle(index, int(reply["seq"]))
        except Exception as exc:  # an API error, or a reply that is not an ack
            batch.settle(index, exc)


class _Batch:
    """The results of one ``publish_all``; ``done`` resolves when every message has one."""

    __slots__ = ("done", "left", "results")

    def __init__(self, size: int, done: asyncio.Future[None]) -> None:
        self.results: list[Result | None] = [None] * size
        self.left = size
        self.done = done

    def settle(self, index: int, result: Result) -> None:
        if self.results[index] is None:
            self.results[index] = result
            self.left -= 1
            if not self.left and not self.done.done():
                self.done.set_result(None)


def _headers(message: Outgoing) -> dict[str, str] | None:
    if message.ttl is None:
        return message.headers
    return {**(message.headers or {}), TTL_HEADER: str(message.ttl)}
