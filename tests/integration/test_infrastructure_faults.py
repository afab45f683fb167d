"""Infrastructure faults are waited out: a PostgreSQL restart loses no run result.

A PostgreSQL server of this module's own (so it can be stopped and started on the same port)
serves a real scheduler process. A run finishes on its edge while the database is down for a few
seconds; once it is back, the run is recorded as completed and its assets are released. (Before,
the scheduler gave up after about three seconds and dead-lettered the result: the run never
finished and its plates were never released.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from praxis_contracts.assets import ReleaseAssets
from praxis_contracts.runs import (
    RunFinished,
    RunPreparing,
    RunStarted,
    RunStatusChanged,
    SubmitRun,
)
from praxis_devstack.pytest_plugin import NatsIdentity, server_unavailable
from praxis_devstack.servers import PostgresServer, free_port
from praxis_devstack.testdata import plate_grant, plate_protocol
from praxis_runtime.bus import Bus
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay
from praxis_scheduler import app as scheduler_app
from praxis_scheduler.orm import OUTBOX
from praxis_scheduler.repository import sql_units
from praxis_scheduler.service import RunService

pytestmark = pytest.mark.integration

OUTAGE_SECONDS = 5.0
"""Longer than the old retry budget (about 3 s) and the default request time-out."""

EDGE = f"edge{uuid.uuid4().hex[:8]}"
WORKCELL = f"wc_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
async def postgres(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresServer]:
    server = PostgresServer(
        Path(tmp_path_factory.mktemp("pg-restart")), fast=True, port=free_port()
    )
    try:
        await asyncio.to_thread(server.start)
    except Exception as exc:
        server_unavailable(f"PostgreSQL for the restart test did not start: {exc}")
    yield server
    await asyncio.to_thread(server.stop)


@pytest.fixture(scope="module")
async def scheduler(
    nats_identity: NatsIdentity,
    postgres: PostgresServer,
    services: Callable[..., Awaitable[Any]],
) -> Any:
    settings = scheduler_app.Settings(
        **nats_identity("scheduler"), database_url=postgres.url, log_format="text", max_deliver=3
    )
    return await services(scheduler_app.build_app, settings)


async def test_a_database_restart_loses_no_run_result(
    scheduler: Any, postgres: PostgresServer, client: Bus, tap: Any
) -> None:
    db = Database(postgres.url, "scheduler")
    relay = OutboxRelay(db, OUTBOX, lambda: client.publisher)
    relay.start()
    runs = RunService(sql_units(db, relay))
    try:
        run = await runs.create(SubmitRun(protocol_name="mix", workcell=WORKCELL), plate_protocol())
        run_id = run.accession_id
        pending = await tap(RunStatusChanged, str(run_id), where=lambda e: e.status == "pending")
        running = await tap(RunStatusChanged, str(run_id), where=lambda e: e.status == "running")
        completed = await tap(
            RunStatusChanged, str(run_id), where=lambda e: e.status == "completed"
        )
        released = await tap(ReleaseAssets, where=lambda c: c.run_id == run_id)
        await client.publish(plate_grant(run_id, WORKCELL))
        await pending.next()  # as an edge does: it prepares a run once it was dispatched to it
        await client.publish(
            RunPreparing(run_id=run_id, at=_now(), workcell=WORKCELL, edge_instance=EDGE)
        )
        await client.publish(
            RunStarted(run_id=run_id, at=_now(), workcell=WORKCELL, edge_instance=EDGE)
        )
        await running.next()

        await asyncio.to_thread(postgres.stop)
        finished = RunFinished(
            run_id=run_id,
            at=_now(),
            outcome="completed",
            result=42,
            workcell=WORKCELL,
            edge_instance=EDGE,
        )
        await client.publish(finished, msg_id=f"finished:{run_id}")
        await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself, not a wait for a condition
        await asyncio.to_thread(postgres.start)

        await completed.next(timeout=30)
        assert (await released.next(timeout=30)).run_id == run_id
        await db.engine.dispose()  # the test's own pooled connections died with the server
        assert (await runs.get(run_id)).result == 42
    finally:
        await relay.stop()
        await db.dispose()


def _now() -> datetime:
    return datetime.now(UTC)
