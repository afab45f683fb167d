"""Edge liveness against a real scheduler process, nats-server and PostgreSQL.

The test plays the orchestrator: it writes heartbeats to the edges bucket (with TTLs, as the
orchestrator does) and publishes the run events an edge publishes. When the heartbeats stop, the
scheduler must leave the edge's runs to an operator (``requires_intervention``) and ask the
asset-manager to hold their leases; a run whose edge keeps beating is left alone.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from praxis_contracts.assets import HoldAssets
from praxis_contracts.common import RunStatus
from praxis_contracts.runs import (
    EdgeHeartbeat,
    EdgeRun,
    RunPreparing,
    RunStarted,
    RunStatusChanged,
    SubmitRun,
)
from praxis_contracts.topology import EDGES
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity
from praxis_devstack.testdata import plate_grant, plate_protocol
from praxis_runtime.bus import Bus
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay
from praxis_scheduler import app as scheduler_app
from praxis_scheduler.orm import OUTBOX
from praxis_scheduler.repository import sql_units
from praxis_scheduler.service import RunService

pytestmark = pytest.mark.integration

TTL = 1
GRACE = 3.0
WORKCELL = f"wc_{uuid.uuid4().hex[:8]}"


class World:
    def __init__(self, bus: Bus, runs: RunService) -> None:
        self.bus = bus
        self.runs = runs

    async def beat(self, instance: str, *runs: uuid.UUID, ttl: int = TTL) -> None:
        now = datetime.now(UTC)
        heartbeat = EdgeHeartbeat(
            workcell=WORKCELL,
            instance=instance,
            version="test",
            started_at=now,
            at=now,
            ttl_seconds=ttl,
            runs=[EdgeRun(run_id=r, phase="running", last_call="mix_well") for r in runs],
        )
        subject = f"$KV.{EDGES.bucket}.{heartbeat.key}"
        await self.bus.publisher.publish(subject, heartbeat.model_dump_json().encode(), ttl=ttl)

    async def running_on(self, edge: str, tap: Any) -> uuid.UUID:
        """A run the scheduler records as running on ``edge``."""
        run = await self.runs.create(
            SubmitRun(protocol_name="mix", workcell=WORKCELL), plate_protocol()
        )
        run_id = run.accession_id
        started = await tap(RunStatusChanged, str(run_id), where=lambda e: e.status == "running")
        pending = await tap(RunStatusChanged, str(run_id), where=lambda e: e.status == "pending")
        await self.bus.publish(plate_grant(run_id, WORKCELL))
        # Dispatched before an edge reports it, as in life (the edge hears of the run from the
        # ExecuteRun its grant causes): the grant's consumer may lag the progress consumers.
        await pending.next()
        await self.bus.publish(
            RunPreparing(run_id=run_id, at=_now(), workcell=WORKCELL, edge_instance=edge)
        )
        await self.bus.publish(
            RunStarted(run_id=run_id, at=_now(), workcell=WORKCELL, edge_instance=edge)
        )
        await started.next()
        return run_id


@pytest.fixture(scope="module")
async def world(
    nats_identity: NatsIdentity,
    make_database: MakeDatabase,
    client: Bus,
    services: Callable[..., Awaitable[Any]],
) -> AsyncIterator[World]:
    url = make_database("sched_edges")
    settings = scheduler_app.Settings(
        **nats_identity("scheduler"),
        database_url=url,
        edge_grace_seconds=GRACE,
        log_format="text",
    )
    await services(scheduler_app.build_app, settings)
    db = Database(url, "scheduler")  # the test's own way into the scheduler's records
    relay = OutboxRelay(db, OUTBOX, lambda: client.publisher)
    relay.start()
    yield World(client, RunService(sql_units(db, relay)))
    await relay.stop()
    await db.dispose()


async def test_runs_of_an_edge_that_stops_beating_need_an_operator(world: World, tap: Any) -> None:
    dead, alive = f"dead{uuid.uuid4().hex[:8]}", f"alive{uuid.uuid4().hex[:8]}"
    await world.beat(dead)
    await world.beat(alive)
    lost_run = await world.running_on(dead, tap)
    kept_run = await world.running_on(alive, tap)
    await world.beat(dead, lost_run)
    intervention = await tap(
        RunStatusChanged, str(lost_run), where=lambda e: e.status == "requires_intervention"
    )
    holds = await tap(HoldAssets, where=lambda c: c.run_id in (lost_run, kept_run))

    # ``alive`` keeps beating for longer than the dead edge's TTL plus the grace period.
    for _ in range(2 * (TTL + int(GRACE)) + 2):
        await world.beat(alive, kept_run)
        try:
            event = await intervention.next(timeout=0.5)
            break
        except pytest.fail.Exception:
            continue
    else:
        event = await intervention.next()

    assert "mix_well" in event.reason and dead in event.reason
    hold = await holds.next()
    assert hold.run_id == lost_run
    lost = await world.runs.get(lost_run)
    assert lost.status == RunStatus.REQUIRES_INTERVENTION
    assert lost.error is not None and lost.error.code == "edge_lost"
    assert (await world.runs.get(kept_run)).status == RunStatus.RUNNING
    await holds.assert_silent()


async def test_a_new_edge_process_releases_runs_of_its_dead_predecessor_at_once(
    world: World, tap: Any
) -> None:
    old, new = f"old{uuid.uuid4().hex[:8]}", f"new{uuid.uuid4().hex[:8]}"
    await world.beat(old, ttl=60)  # it would be considered alive for a minute
    run_id = await world.running_on(old, tap)
    kv = await world.bus.js.key_value(EDGES.bucket)
    await kv.delete(f"edge.{WORKCELL}.{old}")  # e.g. it was stopped; then a new one starts
    intervention = await tap(
        RunStatusChanged, str(run_id), where=lambda e: e.status == "requires_intervention"
    )

    await world.beat(new, ttl=60)

    # The new process's heartbeat decides, not the old one's grace period running out.
    event = await intervention.next(timeout=GRACE + 5)
    assert "restarted" in event.reason, event.reason


def _now() -> datetime:
    return datetime.now(UTC)
