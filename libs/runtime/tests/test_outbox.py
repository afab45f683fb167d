"""The unit of work and its outbox relay against a real PostgreSQL and nats-server.

A service's rows and the messages they cause commit together; what a crash leaves committed but
unpublished is published by the next relay, in commit order, once each (message ids).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.js.api import ConsumerConfig, DeliverPolicy
from sqlalchemy import Column, MetaData, String, Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import registry

from praxis_contracts.runs import RunStatusChanged
from praxis_contracts.topology import EVENTS
from praxis_runtime import testing
from praxis_runtime.bus import Bus
from praxis_runtime.db import Database
from praxis_runtime.outbox import (
    InMemoryUnitOfWork,
    OutboxRelay,
    SqlUnitOfWork,
    outbox_table,
)
from praxis_runtime.publisher import Outgoing, Publisher, Result

pytestmark = pytest.mark.integration


class World:
    def __init__(self, db: Database, bus: Bus, table: Table, things: Table) -> None:
        self.db, self.bus, self.table, self.things = db, bus, table, things
        self.Thing = type("Thing", (), {})  # an ORM class of this test's schema
        registry().map_imperatively(self.Thing, things)

    def relay(self, publisher: Any = None) -> OutboxRelay:
        return OutboxRelay(self.db, self.table, publisher or (lambda: self.bus.publisher))

    async def rows(self) -> int:
        async with self.db.transaction() as session:
            return int(
                await session.scalar(text(f'SELECT count(*) FROM "{self.db.schema}".outbox')) or 0
            )


@pytest.fixture
async def world(database_url: str, nats_url: str) -> AsyncIterator[World]:
    schema = f"outbox_{uuid.uuid4().hex[:8]}"
    metadata = MetaData(schema=schema)
    table = outbox_table(metadata)
    things = Table("things", metadata, Column("name", String, primary_key=True))
    db = Database(database_url, schema)
    async with db.engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.run_sync(metadata.create_all)
    bus = Bus(nats_url, f"outbox-test-{schema}")
    await bus.connect()
    yield World(db, bus, table, things)
    await bus.stop()
    await db.dispose()


def changed(run_id: uuid.UUID, n: int) -> RunStatusChanged:
    return RunStatusChanged(
        run_id=run_id, status="running", previous=None, reason=f"step {n}", at=datetime.now(UTC)
    )


async def received(bus: Bus, run_id: uuid.UUID, count: int) -> list[str]:
    """The reasons of the run's status events stored in the stream, in stream order."""
    subject = RunStatusChanged.subscription_subject(str(run_id))
    sub = await bus.js.subscribe(
        subject,
        stream=EVENTS.name,
        ordered_consumer=True,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL),
    )
    reasons = []
    try:
        for _ in range(count):
            msg = await sub.next_msg(timeout=10)
            reasons.append(RunStatusChanged.model_validate_json(msg.data).reason)
        with pytest.raises(Exception):  # noqa: B017 - nothing more: a time-out
            await sub.next_msg(timeout=0.3)
    finally:
        await sub.unsubscribe()
    return reasons


async def test_committed_messages_are_published_in_order_and_removed(world: World) -> None:
    relay = world.relay()
    relay.start()
    run_id = uuid.uuid4()
    try:
        for n in range(3):
            async with SqlUnitOfWork(world.db, relay) as uow:
                await uow.session.execute(insert(world.things).values(name=f"{run_id}-{n}"))
                uow.emit(changed(run_id, n), msg_id=f"{run_id}:{n}")
                uow.emit(changed(run_id, n + 10))
        assert await relay.flush(10)
    finally:
        await relay.stop()
    assert await received(world.bus, run_id, 6) == [
        "step 0",
        "step 10",
        "step 1",
        "step 11",
        "step 2",
        "step 12",
    ]
    assert await world.rows() == 0


async def test_a_rolled_back_unit_publishes_nothing(world: World) -> None:
    relay = world.relay()
    run_id = uuid.uuid4()
    with pytest.raises(RuntimeError):
        async with SqlUnitOfWork(world.db, relay) as uow:
            await uow.session.execute(insert(world.things).values(name=str(run_id)))
            uow.emit(changed(run_id, 0))
            raise RuntimeError("the handler failed")
    assert await world.rows() == 0
    async with world.db.transaction() as session:
        assert (await session.scalars(select(world.things.c.name))).all() == []


class CrashingAtCommit(SqlUnitOfWork):
    """The process dies as it commits: nothing of the unit may be left behind."""

    async def _commit_transaction(self, session: AsyncSession) -> None:
        raise ConnectionResetError("the process died")


async def test_a_crash_at_commit_leaves_neither_rows_nor_messages(world: World) -> None:
    """ORM rows are flushed only at commit: the outbox insert must not commit ahead of them
    (it did, as a statement outside SQLAlchemy's not yet begun transaction)."""
    run_id = uuid.uuid4()
    with pytest.raises(ConnectionResetError):
        async with CrashingAtCommit(world.db, world.relay()) as uow:
            thing = world.Thing()
            thing.name = str(run_id)  # type: ignore[attr-defined]
            uow.session.add(thing)
            uow.emit(changed(run_id, 0))
    assert await world.rows() == 0
    async with world.db.transaction() as session:
        assert (await session.scalars(select(world.things.c.name))).all() == []


async def test_what_a_crash_left_unpublished_goes_out_at_the_next_start(world: World) -> None:
    run_id = uuid.uuid4()
    crashed = world.relay()  # never started: the process died right after committing
    for n in range(3):
        async with SqlUnitOfWork(world.db, crashed) as uow:
            uow.emit(changed(run_id, n), msg_id=f"{run_id}:{n}")
    assert await world.rows() == 3

    restarted = world.relay()
    restarted.start()
    try:
        assert await restarted.flush(10)
    finally:
        await restarted.stop()
    assert await received(world.bus, run_id, 3) == ["step 0", "step 1", "step 2"]
    assert await world.rows() == 0


async def test_published_but_not_deleted_rows_are_not_published_twice(world: World) -> None:
    """A crash between the acks and the DELETE: the next relay publishes again, and JetStream
    drops the copies by their message ids."""
    run_id = uuid.uuid4()
    crashed = world.relay()
    async with SqlUnitOfWork(world.db, crashed) as uow:
        for n in range(2):
            uow.emit(changed(run_id, n), msg_id=f"{run_id}:{n}")
    async with world.db.transaction() as session:
        rows = (await session.execute(select(world.table).order_by(world.table.c.id))).all()
    await world.bus.publisher.publish_all(
        [Outgoing(r.subject, bytes(r.payload), dict(r.headers)) for r in rows]
    )

    restarted = world.relay()
    restarted.start()
    try:
        assert await restarted.flush(10)
    finally:
        await restarted.stop()
    assert await received(world.bus, run_id, 2) == ["step 0", "step 1"]


class FlakyPublisher:
    """NATS unavailable for the first ``failures`` passes (an outage), then the real thing."""

    def __init__(self, real: Publisher, failures: int) -> None:
        self.real = real
        self.failures = failures

    async def publish_all(self, messages: list[Outgoing], **kw: Any) -> list[Result]:
        if self.failures:
            self.failures -= 1
            import nats.errors

            return [nats.errors.TimeoutError() for _ in messages]
        return await self.real.publish_all(messages, **kw)

    async def publish_in_order(self, messages: list[Outgoing], **kw: Any) -> int:
        if self.failures:
            self.failures -= 1
            import nats.errors

            raise nats.errors.TimeoutError
        return await self.real.publish_in_order(messages, **kw)


async def test_an_outage_delays_messages_and_loses_none(world: World) -> None:
    flaky = FlakyPublisher(world.bus.publisher, failures=3)
    relay = world.relay(lambda: flaky)
    relay.start()
    run_id = uuid.uuid4()
    try:
        for n in range(4):
            async with SqlUnitOfWork(world.db, relay) as uow:
                uow.emit(changed(run_id, n), msg_id=f"{run_id}:{n}")
        assert await relay.flush(20)
    finally:
        await relay.stop()
    assert flaky.failures == 0
    assert await received(world.bus, run_id, 4) == ["step 0", "step 1", "step 2", "step 3"]
    assert await world.rows() == 0


async def test_the_in_memory_unit_keeps_only_what_committed() -> None:
    uow = InMemoryUnitOfWork()
    run_id = uuid.uuid4()
    async with uow:
        uow.emit(changed(run_id, 0), msg_id="a")
    with pytest.raises(ValueError):
        async with uow:
            uow.emit(changed(run_id, 1))
            raise ValueError
    assert [m.headers["Nats-Msg-Id"] for m in uow.published if m.headers] == ["a"]
    assert (uow.commits, uow.rollbacks) == (1, 1)


async def unit_scenario(unit: Any, run_id: uuid.UUID) -> None:
    """Committed units publish what they emitted, in order; a unit that raises, nothing;
    re-entering starts afresh."""
    async with unit() as uow:
        uow.emit(changed(run_id, 0), msg_id=f"{run_id}:0")
        uow.emit(changed(run_id, 1), msg_id=f"{run_id}:1")
    with pytest.raises(ValueError):
        async with unit() as uow:
            uow.emit(changed(run_id, 2), msg_id=f"{run_id}:2")
            raise ValueError("discarded with its rows")
    async with unit() as uow:
        pass  # nothing emitted, nothing published
    async with unit() as uow:
        uow.emit(changed(run_id, 3), msg_id=f"{run_id}:3")


async def test_the_in_memory_unit_of_work_publishes_as_the_outbox_does(world: World) -> None:
    """One scenario through ``SqlUnitOfWork`` (PostgreSQL, the relay, JetStream) and through
    ``InMemoryUnitOfWork``: the same messages, in the same order."""
    run_id = uuid.uuid4()
    relay = world.relay()
    relay.start()
    try:
        await unit_scenario(lambda: SqlUnitOfWork(world.db, relay), run_id)
        assert await relay.flush(20)
    finally:
        await relay.stop()
    real = await received(world.bus, run_id, 3)

    memory = testing.InMemoryUnitOfWork()
    await unit_scenario(lambda: memory, run_id)
    published = [RunStatusChanged.model_validate_json(m.payload) for m in memory.published]
    assert [event.reason for event in published] == real
    assert real == ["step 0", "step 1", "step 3"]
