"""The message bus: typed publish/request, and handler wiring with one error policy.

Services declare handlers in ``Handlers`` groups; the bus turns them into FastStream subscribers:

- request/reply (``Handlers.rpc``): core NATS with a queue group. Domain errors become an
  ``ErrorReply`` with the ``Praxis-Error`` header; requesters re-raise them by code.
- JetStream consumers (``Handlers.consume``): durable, load-balanced, manual acks; up to
  ``max_workers`` messages at once, in order when it is 1. Malformed or non-retryable messages are
  dead-lettered and terminated. A failure because PostgreSQL or NATS is unavailable
  (``is_infrastructure``) is waited out: redelivered with backoff for up to
  ``infra_retry_seconds`` since the message was stored, however many attempts that takes. Any
  other retryable failure is redelivered until ``max_deliver`` attempts, then dead-lettered. One
  bad message never blocks others. A handler that must confirm its message before an
  irreversible step (the orchestrator, before it calls a protocol) calls ``acknowledge()``.

Publishing to JetStream goes through ``Publisher`` (acks on one inbox, batches under one deadline).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import sys
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar, cast

import nats.errors
import nats.js.errors
from faststream import AckPolicy
from faststream.nats import ConsumerConfig, JStream, NatsBroker, NatsResponse, NatsUserPassword
from faststream.nats.annotations import NatsMessage
from faststream.nats.security import NatsSecurity
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError

from praxis_contracts import headers as h
from praxis_contracts.base import Command, Event, Message, Request
from praxis_contracts.deadletters import ReplayDeadLetter
from praxis_contracts.errors import (
    ErrorReply,
    InternalError,
    InvalidRequest,
    PayloadTooLarge,
    PraxisError,
    ReplyTooLarge,
    Timeout,
    Unavailable,
    error_from_reply,
)
from praxis_contracts.permissions import OPERATOR
from praxis_contracts.topology import COMMANDS, EVENTS, dead_letter_subject
from praxis_runtime import tracing
from praxis_runtime.claims import Claims
from praxis_runtime.dberrors import as_domain_error
from praxis_runtime.logging import context_headers, message_context
from praxis_runtime.metrics import DEAD_LETTERS
from praxis_runtime.publisher import Outgoing, Publisher
from praxis_runtime.replay import Replayer
from praxis_runtime.settings import nats_servers

log = logging.getLogger(__name__)

MESSAGES = Counter("praxis_messages_total", "Messages handled", ["service", "subject", "outcome"])
HANDLER_SECONDS = Histogram(
    "praxis_handler_seconds",
    "Handler latency",
    ["service", "subject"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
)

RECONNECT_SECONDS = 0.5
"""Between reconnection attempts to a server that went away."""

RPC_WORKERS = 16
"""Requests of one type a service process answers at once."""

DepsT = TypeVar("DepsT")
M = TypeVar("M", bound=Message)
R = TypeVar("R", bound=BaseModel)

RpcFn = Callable[[Any, DepsT], Awaitable[BaseModel]]
ConsumeFn = Callable[[Any, DepsT], Awaitable[None]]


@dataclass(frozen=True)
class RpcRoute(Generic[DepsT]):
    request_type: type[Request[Any]]
    fn: RpcFn[DepsT]
    key: str | None = None
    """For a keyed request type: the keys (a pattern) this route answers."""


@dataclass(frozen=True)
class ConsumeRoute(Generic[DepsT]):
    message_type: type[Message]
    fn: ConsumeFn[DepsT]
    durable: str
    key: str | None
    max_workers: int
    ack_wait_seconds: float


@dataclass
class Handlers(Generic[DepsT]):
    """A group of handlers sharing one dependency object (a service's router)."""

    rpcs: list[RpcRoute[DepsT]] = field(default_factory=list)
    consumers: list[ConsumeRoute[DepsT]] = field(default_factory=list)

    def rpc(
        self, request_type: type[Request[R]]
    ) -> Callable[[Callable[[Any, DepsT], Awaitable[R]]], Callable[[Any, DepsT], Awaitable[R]]]:
        def register(
            fn: Callable[[Any, DepsT], Awaitable[R]],
        ) -> Callable[[Any, DepsT], Awaitable[R]]:
            self.rpcs.append(RpcRoute(request_type, cast(RpcFn[DepsT], fn)))
            return fn

        return register

    def consume(
        self,
        message_type: type[M],
        *,
        durable: str,
        key: str | None = None,
        max_workers: int = 1,
        ack_wait_seconds: float = 30.0,
    ) -> Callable[[Callable[[M, DepsT], Awaitable[None]]], Callable[[M, DepsT], Awaitable[None]]]:
        def register(
            fn: Callable[[M, DepsT], Awaitable[None]],
        ) -> Callable[[M, DepsT], Awaitable[None]]:
            route = ConsumeRoute(
                message_type,
                cast(ConsumeFn[DepsT], fn),
                durable,
                key,
                max_workers,
                ack_wait_seconds,
            )
            self.consumers.append(route)
            return fn

        return register


def _stream_for(message_type: type[Message]) -> str:
    if issubclass(message_type, Command):
        return COMMANDS.name
    if issubclass(message_type, Event):
        return EVENTS.name
    raise TypeError(f"{message_type.__name__} is not a JetStream message")


def retry_delay(attempt: int, cap: float = 10.0) -> float:
    """Backoff between redeliveries: 0.2 s, 0.4 s, 0.8 s ... capped at ``cap``."""
    return min(cap, 0.2 * 2.0 ** min(max(0, attempt - 1), 10))


INFRA_RETRY_CAP = 1.0
"""Longest wait between attempts while a dependency is down: recovery is noticed within a
second (a cluster's leader election ends unannounced; 2 s here showed in every stall after it)."""

_INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    ConnectionError,  # a socket to PostgreSQL or NATS was refused, reset or broken
    socket.gaierror,
    TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoServersError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    # A stream without a leader for a moment (a cluster member died and the others elect a
    # new one: seconds): the write got no answer, or JetStream said it is unavailable.
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    Unavailable,
    Timeout,
)


def _database_infrastructure() -> tuple[type[BaseException], ...]:
    """asyncpg's and SQLAlchemy's outage errors, for a process that loaded them: one that
    never did (the edge: no database) cannot have raised them, and importing them (about a
    second) is spared its start-up."""
    if "asyncpg" not in sys.modules or "sqlalchemy.exc" not in sys.modules:
        return ()
    import asyncpg
    import sqlalchemy.exc

    return (
        asyncpg.PostgresConnectionError,
        asyncpg.InterfaceError,
        asyncpg.CannotConnectNowError,
        asyncpg.exceptions.AdminShutdownError,
        asyncpg.exceptions.CrashShutdownError,
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.InterfaceError,
        sqlalchemy.exc.TimeoutError,  # the pool had no connection for us
    )


def is_infrastructure(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says PostgreSQL or NATS is unavailable for now,
    rather than that the message cannot succeed."""
    kinds = _INFRASTRUCTURE + _database_infrastructure()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kinds) or _network_errno(current):
            return True
        if getattr(current, "connection_invalidated", False) is True:  # SQLAlchemy's DBAPIError
            return True
        current = current.__cause__ or current.__context__
    return False


_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ETIMEDOUT,
        errno.EPIPE,
    }
)


def _network_errno(exc: BaseException) -> bool:
    """A plain ``OSError`` from a socket (some drivers raise one rather than a
    ``ConnectionError``); a missing file or a denied permission is no outage."""
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


class _Delivery:
    """The JetStream message a consumer handler is working on (see ``acknowledge``)."""

    __slots__ = ("ack_wait", "acked", "msg")

    def __init__(self, msg: Any, ack_wait: float) -> None:
        self.msg = msg
        self.ack_wait = ack_wait
        self.acked = False


_delivery: ContextVar[_Delivery | None] = ContextVar("praxis_delivery", default=None)


async def acknowledge(timeout: float = 5.0) -> None:
    """Confirm the message being handled now, and wait until the server has recorded it.

    For a handler that is about to do something that must never be done twice (calling a
    protocol that drives instruments): once this returns, a crash no longer redelivers the
    message. Outside a consumer handler, or when already confirmed, it does nothing.
    """
    delivery = _delivery.get()
    if delivery is None or delivery.acked:
        return
    await delivery.msg.raw_message.ack_sync(timeout=timeout)
    delivery.acked = True


async def in_progress_until(done: asyncio.Event) -> None:
    """Wait for ``done``, telling the server every third of the consumer's ack wait that the
    message being handled is still being worked on (so it is not redelivered meanwhile). A
    notice that fails (NATS away) is skipped: the next one goes out on time. Outside a consumer
    handler, or once confirmed, it only waits."""
    delivery = _delivery.get()
    while not done.is_set():
        if delivery is None or delivery.acked:
            await done.wait()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), delivery.ack_wait / 3)
            return
        try:
            await delivery.msg.raw_message.in_progress()
        except Exception as exc:
            log.debug("in-progress notice failed: %r", exc)


class Bus:
    """One NATS connection per service: FastStream subscribers plus raw JetStream access."""

    def __init__(
        self,
        nats_url: str,
        service: str,
        *,
        request_timeout: float = 5.0,
        graceful_timeout: float = 20.0,
        max_deliver: int = 5,
        infra_retry_seconds: float = 600.0,
        user: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.service = service
        self.request_timeout = request_timeout
        self.max_deliver = max_deliver
        self.infra_retry_seconds = infra_retry_seconds
        self.broker = NatsBroker(
            nats_servers(nats_url),
            name=service,
            graceful_timeout=graceful_timeout,
            logger=logging.getLogger(f"faststream.{service}"),
            max_reconnect_attempts=-1,
            # A restarted server is back in about a second: retry every half second (nats-py
            # waits 2 s by default), so leases renewed every third of their TTL and heartbeats
            # catch up long before either runs out.
            # (FastStream annotates it ``int``; nats-py takes seconds as a float.)
            reconnect_time_wait=cast(Any, RECONNECT_SECONDS),
            # Handlers take the raw message (see ``_raw``) and validate it themselves. With
            # FastDepends on, every message's ``NatsMessage`` context field was resolved in a
            # worker thread (its cost: README, Design measurements).
            apply_types=False,
            reconnected_cb=self._reconnected,
            **_credentials(user, password, tls),
        )
        self.on_reconnected: list[Callable[[], None]] = []
        """Called (on the loop) each time the connection is back after a loss: what the
        service saw while it was away may be stale (e.g. heartbeats it could not read)."""
        self.identity = user or OPERATOR
        """The NATS identity this bus is (the operator's when the URL carries credentials)."""
        self._inbox_prefix = f"_INBOX.{user}" if user is not None else None
        self._durables: list[tuple[str, str]] = []  # (stream, durable) of every consumer route
        self._js: JetStreamContext | None = None
        self._publisher: Publisher | None = None
        self._claims: Claims | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._consumers: dict[type[Message], Any] = {}  # the subscriber of each consumed type
        self.replayer = Replayer(
            self.identity,
            lambda: self.js,
            lambda e: self.publish(e, msg_id=uuid.uuid4().hex),
            lambda t: not (self._refuse_all or t in self._refusing),
        )
        """Hands a dead letter back to the consumer that dead-lettered it (``replay``)."""
        self._refusing: set[type[Message]] = set()  # stopping: handed straight back
        self._refuse_all = False
        self.graceful_timeout = graceful_timeout

    # -- connection ---------------------------------------------------------------------------
    async def _reconnected(self) -> None:
        for callback in self.on_reconnected:
            try:
                callback()
            except Exception:
                log.exception("a reconnection callback failed")

    async def connect(self) -> None:
        await self.broker.connect()
        self._js = self.nc.jetstream()
        self._publisher = Publisher(self.nc, timeout=self.request_timeout)
        self._claims = Claims(self._js, self.identity, timeout=self.request_timeout)

    @property
    def nc(self) -> Client:
        return self.broker.connection

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus is not connected")
        return self._js

    @property
    def claims(self) -> Claims:
        """Requests and replies over the inline threshold travel through the object store."""
        if self._claims is None:
            raise RuntimeError("bus is not connected")
        return self._claims

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("bus is not connected")
        return self._publisher

    @property
    def connected(self) -> bool:
        try:
            return bool(self.nc.is_connected)
        except Exception:
            return False

    async def start(self) -> None:
        """Start the subscribers; returns once the server has registered them all.

        nats-py queues SUB commands in its write buffer but writes a flush's PING straight to
        the socket, so one round trip can overtake them; the second is ordered after them
        (README, Design measurements).
        """
        await self._adopt_consumers()
        # An operator may replay what its consumers dead-lettered: asked of each durable by
        # name (services sharing one identity, the operator's, each answer only their own).
        for _, durable in self._durables:
            route: RpcRoute[None] = RpcRoute(
                ReplayDeadLetter,
                lambda request, _: self.replayer.replay(request),
                key=f"{self.identity}.{durable}",
            )
            self._subscribe_rpc(route, None, workers=1)
        await self.broker.start()
        await self.nc.flush()
        await self.nc.flush()

    async def _adopt_consumers(self) -> None:
        """A durable consumer created before this service had its NATS identity delivers to a
        plain ``_INBOX.<id>``, where the identity may not subscribe (only ``_INBOX.<user>.>``):
        point it at an inbox of ours (the server updates a push consumer's deliver subject)."""
        if self._inbox_prefix is None:
            return
        for stream, durable in self._durables:
            try:
                info = await self.js.consumer_info(stream, durable)
            except nats.js.errors.NotFoundError:
                continue
            config = info.config
            deliver = config.deliver_subject
            if deliver is None or deliver.startswith(f"{self._inbox_prefix}."):
                continue
            config.name = config.name or durable  # created by name and filter (permissions)
            config.deliver_subject = self.nc.new_inbox()
            await self.js.add_consumer(stream, config)
            log.info("consumer %s now delivers to this identity's inbox", durable)

    async def stop_consuming(self, only: Sequence[type[Message]] | None = None) -> None:
        """Stop taking messages and let in-flight handlers finish (up to the graceful
        timeout); the connection stays open for whatever shutdown still publishes.

        ``only``: stop taking just these types, and return at once (the orchestrator stops
        taking new runs first, and keeps taking pause, resume and cancel for the runs it lets
        finish)."""
        if only is not None:
            self._refusing.update(only)
            for message_type in only:
                if (subscriber := self._consumers.pop(message_type, None)) is not None:
                    await self._drain(subscriber)
            return
        self._refuse_all = True
        drained = list(self._consumers.values())
        self._consumers.clear()
        for subscriber in drained:
            await self._drain(subscriber)
        for subscriber in self.broker.subscribers:
            if not any(subscriber is d for d in drained):
                await subscriber.stop()
        if self._in_flight:
            _, late = await asyncio.wait(self._in_flight, timeout=self.graceful_timeout)
            if late:
                log.warning("%d handlers still running at shutdown", len(late))

    async def _drain(self, subscriber: Any) -> None:
        """Stop a consumer's subscription without losing what the client holds for it: the
        messages delivered but not yet handed to a handler go back to the server at once (a
        nack: to another member of the group, or to the next process), where an unsubscribe
        would drop them until their ack wait (30 s) ran out."""
        subscription = getattr(subscriber, "subscription", None)
        if subscription is not None:
            inner = getattr(subscription, "_sub", subscription)
            try:
                await asyncio.wait_for(inner.drain(), self.graceful_timeout)
                subscriber.subscription = None  # drained: nothing left to unsubscribe
            except Exception as exc:  # a handler that would not return: unsubscribe instead
                log.warning("draining a subscription failed (%r); unsubscribing", exc)
        try:
            await subscriber.stop()
        except Exception as exc:  # the connection went meanwhile: nothing left to stop
            log.warning("stopping a subscription failed: %r", exc)

    async def stop(self) -> None:
        """``stop_consuming``, then drain and close the connection."""
        await self.stop_consuming()
        await self.broker.stop()

    # -- outgoing -----------------------------------------------------------------------------
    def _headers(self, msg_id: str | None, correlation: str | None = None) -> dict[str, str]:
        headers = context_headers(correlation)
        if msg_id is not None:
            headers[h.MSG_ID] = msg_id
        tracing.inject(headers)  # the receiver's span continues this trace
        return headers

    async def publish(self, message: Command | Event, *, msg_id: str | None = None) -> int:
        """Publish to JetStream; ``msg_id`` de-duplicates retries. Returns the stream sequence."""
        return await self.publisher.publish(
            message.routing_subject(),
            message.model_dump_json().encode(),
            self._headers(msg_id),
        )

    async def publish_all(self, messages: Sequence[tuple[Event, str | None]]) -> None:
        """Publish events (each with its ``msg_id`` or None) in order, confirmed together by
        the last one's ack (``Publisher.publish_in_order``); raises if that fails."""
        correlation = context_headers()[h.CORRELATION_ID]  # one for the lot
        await self.publisher.publish_in_order(
            [
                Outgoing(
                    m.routing_subject(),
                    m.model_dump_json().encode(),
                    self._headers(msg_id, correlation),
                )
                for m, msg_id in messages
            ]
        )

    async def request(self, request: Request[R], *, timeout: float | None = None) -> R:
        """Send a request and return its typed reply, re-raising a remote domain error.

        A request or reply body over the claims threshold travels through the object store
        (``praxis_runtime.claims``); callers see only the typed objects."""
        with tracing.span(f"request {type(request).__name__}", tracing.SpanKind.CLIENT):
            return await self._request(request, timeout)

    async def _request(self, request: Request[R], timeout: float | None) -> R:
        body = request.model_dump_json().encode()
        if len(body) > self.claims.limit:
            raise PayloadTooLarge(
                f"{type(request).__name__} is {len(body)} bytes, over {self.claims.limit}",
                size=len(body),
                max_payload=self.claims.limit,
            )
        headers = self._headers(None)
        subject = request.routing_subject()
        body = await self._claimed(self.claims.check_in(body, headers))
        try:
            response = await self.nc.request(
                subject, body, timeout=timeout or self.request_timeout, headers=headers
            )
        except nats.errors.NoRespondersError as exc:
            self._unclaim(headers)
            raise Unavailable(f"no service answers {subject}") from exc
        except nats.errors.TimeoutError as exc:
            self._unclaim(headers)
            raise Timeout(f"{subject} did not answer in time") from exc
        data = await self._claimed(self.claims.check_out(response.data, response.headers))
        if response.headers and response.headers.get(h.ERROR):
            raise error_from_reply(ErrorReply.model_validate_json(data))
        return cast(R, request.reply_type.model_validate_json(data))

    @staticmethod
    async def _claimed(step: Awaitable[bytes]) -> bytes:
        """A claims-store step of a request: a domain error as it is, a store that cannot be
        reached as ``unavailable``."""
        try:
            return await step
        except PraxisError:
            raise
        except Exception as exc:
            raise Unavailable(f"the claims store is unavailable: {type(exc).__name__}") from exc

    def _unclaim(self, headers: dict[str, str]) -> None:
        """A claimed request nobody will read: delete its body now, not at the TTL."""
        if name := headers.get(h.CLAIM):
            self.claims.discard(name)

    # -- incoming -----------------------------------------------------------------------------
    def include(self, handlers: Handlers[DepsT], deps: DepsT) -> None:
        """Register a handler group's subscribers; call before ``start``."""
        for rpc in handlers.rpcs:
            self._subscribe_rpc(rpc, deps)
        for route in handlers.consumers:
            self._subscribe_consumer(route, deps)

    def _subscribe_rpc(
        self, route: RpcRoute[DepsT], deps: DepsT, *, workers: int = RPC_WORKERS
    ) -> None:
        subject = route.request_type.subscription_subject(route.key)

        async def serve(msg: NatsMessage) -> NatsResponse:
            started = time.perf_counter()
            name = f"{self.service} {route.request_type.__name__}"
            with (
                message_context(msg.headers) as correlation,
                tracing.span(name, tracing.SpanKind.SERVER, msg.headers or {}),
            ):
                headers = {h.CORRELATION_ID: correlation, h.ERROR: "1"}  # the larger set
                if not msg.reply_to.startswith(INBOX):
                    body, error = _not_a_request(route, msg.reply_to), True
                else:
                    body, error = await self._answer(route, deps, msg)
                if not error:
                    body, error = await self._deliverable(route, body, headers)
            if not error:
                del headers[h.ERROR]
            outcome = "error" if error else "ok"
            MESSAGES.labels(self.service, subject, outcome).inc()
            HANDLER_SECONDS.labels(self.service, subject).observe(time.perf_counter() - started)
            return NatsResponse(body, headers=headers)

        # Requests are answered concurrently: one slow query must not hold up the rest.
        self.broker.subscriber(subject, queue=self.service, decoder=_raw, max_workers=workers)(
            serve
        )

    async def _answer(
        self, route: RpcRoute[DepsT], deps: DepsT, msg: NatsMessage
    ) -> tuple[bytes, bool]:
        try:
            raw = await self.claims.check_out(msg.body, msg.headers)
            request = route.request_type.model_validate_json(raw)
            reply = await route.fn(request, deps)
            return reply.model_dump_json().encode(), False
        except ValidationError as exc:
            error: PraxisError = InvalidRequest(
                f"malformed {route.request_type.__name__}", errors=_errors(exc)
            )
        except PraxisError as exc:
            error = exc
        except Exception as exc:
            if (known := as_domain_error(exc)) is not None:  # input PostgreSQL refused
                error = known
            elif is_infrastructure(exc):  # e.g. a pooled connection that died with PostgreSQL
                log.warning("%s: dependency unavailable: %s", route.request_type.__name__, exc)
                error = Unavailable("a dependency is unavailable; try again")
            else:
                log.exception("unhandled error in %s", route.request_type.__name__)
                error = InternalError(f"{type(exc).__name__} while handling the request")
        return error.to_reply().model_dump_json().encode(), True

    async def _deliverable(
        self, route: RpcRoute[DepsT], body: bytes, headers: dict[str, str]
    ) -> tuple[bytes, bool]:
        """The reply as it can travel: inline, by claim check (over the threshold; the claim is
        named in ``headers``), or a ``reply_too_large`` error past the claims limit.

        nats-server drops a message over its ``max_payload`` (headers count too); without the
        claim check the requester would only see a time-out. The inline size is checked with
        ``headers``, the set an error reply carries, the largest, so it holds for either.
        """
        name = route.request_type.__name__
        size = len(body)
        if size > self.claims.limit:
            log.error("%s: reply of %d bytes exceeds %d bytes", name, size, self.claims.limit)
            error: PraxisError = ReplyTooLarge(
                f"the reply to {name} is {size} bytes, over the {self.claims.limit}-byte limit; "
                "ask for less (a smaller page)",
                size=size,
                max_payload=self.claims.limit,
            )
            return error.to_reply().model_dump_json().encode(), True
        if size + _header_bytes(headers) <= min(self.nc.max_payload, self.claims.threshold):
            return body, False
        try:
            return await self.claims.put(body, headers), False
        except Exception as exc:
            log.warning("%s: reply of %d bytes could not be stored: %s", name, size, exc)
            error = Unavailable("the reply could not be stored in the claims store; try again")
            return error.to_reply().model_dump_json().encode(), True

    def _subscribe_consumer(self, route: ConsumeRoute[DepsT], deps: DepsT) -> None:
        """One FastStream push subscriber per route, handling messages one at a time; a route
        with ``max_workers > 1`` hands each message to an asyncio task, at most that many at
        once (the subscriber waits for a free slot, so nats-py holds the rest).

        FastStream's own ``max_workers`` does the same through anyio (a memory stream, a task
        group and a semaphore taken twice per message), at a cost a plain task here does not
        have (README, Design measurements).
        """
        subject = route.message_type.subscription_subject(route.key)
        self._durables.append((_stream_for(route.message_type), route.durable))
        self.replayer.add(route.durable, route.message_type, subject, lambda m: route.fn(m, deps))
        slots = asyncio.Semaphore(route.max_workers) if route.max_workers > 1 else None

        async def handle(msg: NatsMessage) -> None:
            started = time.perf_counter()
            name = f"{self.service} {route.message_type.__name__}"
            try:
                with (
                    message_context(msg.headers),
                    tracing.span(name, tracing.SpanKind.CONSUMER, msg.headers or {}),
                ):
                    outcome = await self._process(route, deps, msg)
            finally:
                if slots is not None:
                    slots.release()
            MESSAGES.labels(self.service, route.message_type.subject, outcome).inc()
            HANDLER_SECONDS.labels(self.service, route.message_type.subject).observe(
                time.perf_counter() - started
            )

        async def consume(msg: NatsMessage) -> None:
            if self._refuse_all or route.message_type in self._refusing:
                await _quietly(msg.nack())  # stopping: back to the server, for another taker
                return
            if slots is None:
                await handle(msg)  # in order, one at a time
                return
            await slots.acquire()
            task = asyncio.create_task(handle(msg))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

        with warnings.catch_warnings():
            # FastStream warns on every durable push consumer, but with a deliver group (queue)
            # it does scale across instances: JetStream load-balances the group.
            warnings.filterwarnings("ignore", message=".*can't be scaled horizontally.*")
            subscriber = self.broker.subscriber(
                subject,
                stream=JStream(_stream_for(route.message_type), declare=False),
                durable=route.durable,
                queue=route.durable,
                # Named: nats-py then creates it on ``$JS.API.CONSUMER.CREATE.<stream>.<name>.
                # <filter>``, a subject the server's permissions can restrict by filter.
                config=ConsumerConfig(
                    name=route.durable,
                    ack_wait=route.ack_wait_seconds,
                    max_ack_pending=1000,
                    max_deliver=-1,
                ),
                ack_policy=AckPolicy.MANUAL,
                decoder=_raw,
            )
        subscriber(consume)
        self._consumers[route.message_type] = subscriber

    async def _process(self, route: ConsumeRoute[DepsT], deps: DepsT, msg: Any) -> str:
        name = route.message_type.__name__
        echoed = [k for k in (msg.headers or {}) if k in h.JETSTREAM_REPLY]
        if echoed:
            # Stored from a JetStream reply sent to this subject (a direct get whose reply
            # subject was set to an event's): its body is whatever was stored elsewhere, by
            # whoever may write there. The server cannot refuse it; no handler takes it.
            await self._dead_letter(
                route, msg, f"{name} stored from a JetStream reply ({echoed[0]})"
            )
            log.warning("%s refused: stored from a JetStream reply, not published", name)
            return "dead_lettered"
        try:
            message = route.message_type.model_validate_json(msg.body)
        except ValidationError as exc:
            await self._dead_letter(route, msg, f"malformed {name}: {_errors(exc)}")
            return "dead_lettered"
        subject = msg.raw_message.subject
        if subject != message.routing_subject():
            # The server let the sender publish on ``subject`` (permissions narrow by key, e.g.
            # a workcell): a body claiming another key is a forgery, never handled.
            await self._dead_letter(
                route, msg, f"{name} on {subject} names {message.routing_subject()}"
            )
            log.warning("%s refused: its body does not match its subject %s", name, subject)
            return "dead_lettered"
        delivery = _Delivery(msg, route.ack_wait_seconds)
        token = _delivery.set(delivery)
        try:
            await route.fn(message, deps)
        except PraxisError as exc:
            if is_infrastructure(exc):
                return await self._wait_out(route, msg, delivery, f"{exc.code}: {exc.message}")
            if exc.retryable:
                return await self._retry_or_dead_letter(route, msg, f"{exc.code}: {exc.message}")
            log.warning("%s rejected: %s", name, exc.message)
            await self._dead_letter(route, msg, f"{exc.code}: {exc.message}")
            return "dead_lettered"
        except Exception as exc:
            if (known := as_domain_error(exc)) is not None:  # it can never be stored
                await self._dead_letter(route, msg, f"{known.code}: {known.message}")
                return "dead_lettered"
            if is_infrastructure(exc):
                return await self._wait_out(route, msg, delivery, f"{type(exc).__name__}: {exc}")
            log.exception("unhandled error in %s", name)
            return await self._retry_or_dead_letter(route, msg, f"{type(exc).__name__}: {exc}")
        finally:
            _delivery.reset(token)
        if not delivery.acked:
            await msg.ack()
        return "ok"

    async def _wait_out(
        self, route: ConsumeRoute[DepsT], msg: Any, delivery: _Delivery, reason: str
    ) -> str:
        """A dependency is down: redeliver until it is back, up to ``infra_retry_seconds``
        after the message was stored; only then is it a dead letter."""
        if delivery.acked:
            log.error("%s failed after it was confirmed: %s", msg.raw_message.subject, reason)
            return "failed"
        metadata = msg.raw_message.metadata
        age = (datetime.now(UTC) - metadata.timestamp).total_seconds()
        if age >= self.infra_retry_seconds:
            await self._dead_letter(route, msg, f"dependency unavailable for {age:.0f} s: {reason}")
            return "dead_lettered"
        attempt = int(metadata.num_delivered)
        log.warning("dependency unavailable (attempt %d), will retry: %s", attempt, reason)
        await _quietly(msg.nack(delay=retry_delay(attempt, INFRA_RETRY_CAP)))
        return "waiting"

    async def _retry_or_dead_letter(self, route: ConsumeRoute[DepsT], msg: Any, reason: str) -> str:
        attempt = int(msg.raw_message.metadata.num_delivered)
        if attempt >= self.max_deliver:
            await self._dead_letter(route, msg, f"gave up after {attempt} attempts: {reason}")
            return "dead_lettered"
        await msg.nack(delay=retry_delay(attempt))
        return "retried"

    async def _dead_letter(self, route: ConsumeRoute[DepsT], msg: Any, reason: str) -> None:
        raw = msg.raw_message
        headers = dict(raw.headers or {})
        headers.pop(h.MSG_ID, None)
        headers[h.DEAD_LETTER_REASON] = reason[:2000]
        headers[h.DEAD_LETTER_SUBJECT] = raw.subject
        headers[h.DEAD_LETTER_IDENTITY] = self.identity  # where a replay is asked for
        headers[h.DEAD_LETTER_CONSUMER] = route.durable
        await self.publisher.publish(dead_letter_subject(raw.subject), raw.data, headers)
        DEAD_LETTERS.labels(self.service, raw.subject).inc()
        await msg.reject()
        log.error("dead-lettered %s: %s", raw.subject, reason)


def _credentials(
    user: str | None, password: str | None, tls: ssl.SSLContext | None = None
) -> dict[str, Any]:
    """Connect options of a NATS identity (``praxis_contracts.permissions``): user, password,
    and replies and push deliveries on ``_INBOX.<user>``, the only inbox it may subscribe to.
    Without a user the URL's own credentials, if any, apply. ``tls`` (``NATS_TLS_CA_FILE``):
    the server's certificate is verified against that CA, not the system's."""
    if user is None:
        return {} if tls is None else {"security": NatsSecurity(ssl_context=tls)}
    security = NatsUserPassword(user, password or "", ssl_context=tls)
    return {"security": security, "inbox_prefix": f"_INBOX.{user}"}


async def _quietly(action: Awaitable[None]) -> None:
    """A nack while NATS is down fails too; the server redelivers after ``ack_wait`` anyway."""
    try:
        await action
    except Exception as exc:
        log.debug("could not nack: %s", exc)


async def _raw(msg: NatsMessage) -> NatsMessage:
    """The "decoder" that hands handlers the message itself: they parse the body once, typed."""
    return msg


INBOX = "_INBOX."


def _not_a_request(route: RpcRoute[Any], reply_to: str) -> bytes:
    """A request must come from a requester: with a reply subject in an inbox (each identity
    may only receive on ``_INBOX.<identity>``). A message delivered here by a JetStream push
    consumer (its reply subject ``$JS.ACK...``), or by a JetStream reply sent to this subject
    (none), is somebody's way round the publish permissions: not handled."""
    name = route.request_type.__name__
    log.warning("%s refused: not a request (reply subject %r)", name, reply_to[:64])
    error = InvalidRequest(f"{name} is answered only to a requester's inbox")
    return error.to_reply().model_dump_json().encode()


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": ".".join(map(str, e["loc"])), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


# FastStream adds headers of its own to a reply (content type, correlation id): room for them.
_BROKER_HEADER_ROOM = 512


def _header_bytes(headers: dict[str, str]) -> int:
    """Bytes a header block takes on the wire (``NATS/1.0\\r\\n``, ``key: value\\r\\n``…, a
    blank line), plus room for the broker's own headers."""
    lines = sum(len(key.encode()) + len(value.encode()) + 4 for key, value in headers.items())
    return len(b"NATS/1.0\r\n\r\n") + lines + _BROKER_HEADER_ROOM
