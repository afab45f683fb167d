"""A real nats-server with the generated authorization refuses what an identity may not do.

The server has identities for two workcells, ``wc-x`` and ``wc-y``. Refusals are observed as
they happen: nats-server answers a denied publish or subscription with ``-ERR 'Permissions
Violation ...'``, which nats-py hands to the error callback. That a forged message reached
nobody is shown without waiting: after the forger's flush the server has already dropped it, so
a sentinel published afterwards is the first thing a subscriber receives, and the stream that
would have stored it has nothing on its subject.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError

from praxis_contracts.permissions import OPERATOR
from praxis_contracts.runs import ExecuteRun, RunFinished, RunStarted, RunStatusChanged
from praxis_contracts.topology import COMMANDS, EVENTS
from praxis_devstack.pytest_plugin import server_unavailable
from praxis_devstack.servers import NatsServer, provision_blocking
from praxis_runtime.bus import Bus, Handlers
from praxis_runtime.natsauth import NatsAuth

pytestmark = pytest.mark.integration

VIOLATION_TIMEOUT = 10.0
"""Upper bound for the server's -ERR to arrive (it comes at once; generous for slow CI)."""


class Connection:
    """A NATS connection as one identity, with the errors the server sent it."""

    def __init__(self, nc: Client, errors: asyncio.Queue[Exception]) -> None:
        self.nc = nc
        self.errors = errors

    async def violation(self) -> str:
        """The next permissions violation the server reported to this connection."""
        async with asyncio.timeout(VIOLATION_TIMEOUT):
            while True:
                error = str(await self.errors.get()).lower()
                if "permissions violation" in error:
                    return error


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    auth = NatsAuth(("wc-x", "wc-y"))
    nats_server = NatsServer(tmp_path_factory.mktemp("nats-authorization"), auth=auth)
    try:
        nats_server.start()
    except Exception as exc:
        server_unavailable(f"could not start nats-server: {exc}")
    provision_blocking(nats_server.operator_url, ("wc-x", "wc-y"))
    yield nats_server
    nats_server.stop()


@pytest.fixture
async def connect(server: NatsServer) -> AsyncIterator[Any]:
    opened: list[Client] = []

    async def as_identity(identity: str) -> Connection:
        assert server.auth is not None
        errors: asyncio.Queue[Exception] = asyncio.Queue()

        async def on_error(exc: Exception) -> None:
            errors.put_nowait(exc)

        nc = await nats.connect(
            server.url,
            user=identity,
            password=server.auth.passwords[identity],
            inbox_prefix=f"_INBOX.{identity}",
            error_cb=on_error,
            allow_reconnect=False,
        )
        opened.append(nc)
        return Connection(nc, errors)

    yield as_identity
    for nc in opened:
        await nc.close()


async def first_message(nc: Client, subject: str) -> asyncio.Future[Msg]:
    received: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    async def on_message(msg: Msg) -> None:
        if not received.done():
            received.set_result(msg)

    await nc.subscribe(subject, cb=on_message)
    await nc.flush()
    return received


async def assert_not_stored(operator: Connection, stream: str, subject: str) -> None:
    with pytest.raises(NotFoundError):
        await operator.nc.jetstream().get_last_msg(stream, subject)


@pytest.mark.parametrize("event_type", [RunFinished, RunStatusChanged])
async def test_the_gateway_cannot_forge_a_run_event(connect: Any, event_type: Any) -> None:
    operator = await connect(OPERATOR)
    gateway = await connect("gateway")
    forged_run, sentinel_run = str(uuid.uuid4()), str(uuid.uuid4())
    received = await first_message(operator.nc, event_type.subscription_subject())
    forged = event_type.subscription_subject(forged_run)

    await gateway.nc.publish(forged, json.dumps({"run_id": forged_run}).encode())
    await gateway.nc.flush()  # the server has handled (refused) it once this returns

    assert f'publish to "{forged}"' in await gateway.violation()
    await operator.nc.publish(event_type.subscription_subject(sentinel_run), b"{}")
    assert (await received).subject.endswith(sentinel_run)  # the forged one never came
    await assert_not_stored(operator, EVENTS.name, forged)


async def test_the_orchestrator_may_publish_run_events_and_they_are_stored(connect: Any) -> None:
    """Under its own workcell's key only: a run event about a run on another workcell, or with
    no workcell in its key, never reaches the stream."""
    operator = await connect(OPERATOR)
    orchestrator = await connect("orchestrator-wc-x")
    run = str(uuid.uuid4())
    subject = RunFinished.subscription_subject(f"wc-x.{run}")

    ack = await orchestrator.nc.jetstream().publish(subject, b"{}")

    stored = await operator.nc.jetstream().get_last_msg(EVENTS.name, subject)
    assert stored.seq == ack.seq
    assert orchestrator.errors.empty()
    for forged in (f"wc-y.{run}", run):
        subject = RunFinished.subscription_subject(forged)
        with pytest.raises(nats.errors.TimeoutError):
            await orchestrator.nc.jetstream(timeout=2).publish(subject, b"{}")
        assert f'publish to "{subject}"' in await orchestrator.violation()


async def test_only_workcell_x_orchestrator_consumes_its_commands(connect: Any) -> None:
    operator = await connect(OPERATOR)
    scheduler = await connect("scheduler")
    x = await connect("orchestrator-wc-x")
    y = await connect("orchestrator-wc-y")
    subject = ExecuteRun.subscription_subject("wc-x")

    # Y can neither subscribe to the subject nor create a consumer filtered on it, whatever
    # the consumer's name (its own, or X's).
    await y.nc.subscribe(subject)
    await y.nc.flush()
    assert f'subscription to "{subject}"' in await y.violation()
    for name in ("orchestrator-wc-y", "orchestrator-wc-x"):
        config = ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=subject,
            deliver_subject=f"_INBOX.orchestrator-wc-y.{name}",
            deliver_group=name,
        )
        with pytest.raises(nats.errors.TimeoutError):
            await y.nc.jetstream(timeout=2).add_consumer(COMMANDS.name, config)
        assert f"$js.api.consumer.create.{COMMANDS.name.lower()}.{name}" in await y.violation()

    # X can, the way the bus does it, and receives what the scheduler sends to wc-x.
    received: asyncio.Queue[Msg] = asyncio.Queue()
    await x.nc.jetstream().subscribe(
        subject,
        durable="orchestrator-wc-x",
        queue="orchestrator-wc-x",
        stream=COMMANDS.name,
        config=ConsumerConfig(name="orchestrator-wc-x"),
        cb=received.put,
        manual_ack=True,
    )
    await scheduler.nc.jetstream().publish(subject, b'{"probe": 1}')
    message = await asyncio.wait_for(received.get(), VIOLATION_TIMEOUT)
    assert message.data == b'{"probe": 1}'
    await message.ack_sync()

    consumers = await operator.nc.jetstream().consumers_info(COMMANDS.name)
    assert {(c.name, c.config.filter_subject) for c in consumers} == {
        ("orchestrator-wc-x", subject)
    }
    assert x.errors.empty() and scheduler.errors.empty()


async def test_nobody_reads_another_identitys_inbox(connect: Any) -> None:
    gateway = await connect("gateway")
    await gateway.nc.subscribe("_INBOX.scheduler.>")
    await gateway.nc.flush()
    assert 'subscription to "_inbox.scheduler.>"' in await gateway.violation()


async def test_a_wrong_password_is_refused(server: NatsServer) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(server.url, user="scheduler", password="guessed", allow_reconnect=False)


async def test_a_consumer_from_before_identities_is_taken_over_by_its_identity(
    server: NatsServer, connect: Any
) -> None:
    """A durable created when services had no identity delivers to a plain ``_INBOX.<id>``;
    the identity's bus points it at its own inbox and receives what was and is published."""
    assert server.auth is not None
    operator = await connect(OPERATOR)
    orchestrator = await connect("orchestrator-wc-x")
    durable = "asset-manager-run-started"
    await operator.nc.jetstream().add_consumer(
        EVENTS.name,
        ConsumerConfig(
            durable_name=durable,
            deliver_group=durable,
            deliver_subject=f"_INBOX.{uuid.uuid4().hex}",  # what nats-py made before
            filter_subject=RunStarted.subscription_subject(),
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    run_id = uuid.uuid4()
    event = RunStarted(run_id=run_id, at=datetime.now(UTC), workcell="wc-x", edge_instance="edge-1")
    await orchestrator.nc.jetstream().publish(
        event.routing_subject(), event.model_dump_json().encode()
    )

    received: asyncio.Queue[RunStarted] = asyncio.Queue()
    handlers: Handlers[None] = Handlers()

    @handlers.consume(RunStarted, durable=durable)
    async def on_started(message: RunStarted, _: None) -> None:
        received.put_nowait(message)

    password = server.auth.passwords["asset-manager"]
    bus = Bus(server.url, "asset-manager", user="asset-manager", password=password)
    await bus.connect()
    try:
        bus.include(handlers, None)
        await bus.start()
        got = await asyncio.wait_for(received.get(), VIOLATION_TIMEOUT)
        assert got.run_id == run_id
        info = await operator.nc.jetstream().consumer_info(EVENTS.name, durable)
        assert info.config.deliver_subject.startswith("_INBOX.asset-manager.")
    finally:
        await bus.stop()
