"""Scheduler wiring: settings in, a ``Service`` out. Nothing happens at import time."""

from __future__ import annotations

import logging
from pathlib import Path

from nats.js.kv import KeyValue
from pydantic import Field

from praxis_contracts.permissions import SCHEDULER, needs
from praxis_contracts.topology import EDGES
from praxis_runtime.outbox import OutboxRelay
from praxis_runtime.service import Migrations, Service, bus_for, database_for
from praxis_runtime.settings import DatabaseSettings
from praxis_scheduler.calls import CallLog, RunLogs
from praxis_scheduler.edges import EdgeBook
from praxis_scheduler.handlers import Deps, handlers
from praxis_scheduler.metrics import Durations, Gauges
from praxis_scheduler.orm import OUTBOX, SCHEMA, Base
from praxis_scheduler.queries import RunQueries
from praxis_scheduler.recovery import CancelWatch, Recovery
from praxis_scheduler.repository import sql_units
from praxis_scheduler.service import RunService
from praxis_scheduler.statements import RunStatements

log = logging.getLogger(__name__)


class Settings(DatabaseSettings):
    """Edge loss is declared within ``TTL + EDGE_GRACE_SECONDS`` of an edge's last beat: with
    the defaults (the orchestrator's ``EDGE_HEARTBEAT_TTL_SECONDS`` 6, beating every 2 s, and a
    grace of 6 s) at most 12 s after it died. The TTL spans three beats, so one or two late
    beats (a pause, a slow write) do not expire the key; the grace covers a key that expired
    while its edge was alive but could not write, e.g. through a NATS leader election (seconds
    on a 3-node cluster: README, Design measurements): the edge beats again at most one
    interval after the stall.
    An outage of NATS itself restarts every edge's period (``EdgeBook.outage_over``). Whatever
    these settings, an asset of a run whose edge stopped answering is never handed on: its
    claimed leases are held when they run out (``LeaseExpired.held``)."""

    service_name: str = "scheduler"
    edge_grace_seconds: float = Field(
        default=6.0,
        gt=0,
        description="EDGE_GRACE_SECONDS: how long an orchestrator may be gone (its heartbeat "
        "key expired) before its runs need an operator",
    )
    cancel_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="CANCEL_TIMEOUT_SECONDS: how long the edge has to confirm a cancel",
    )


def build_app(settings: Settings) -> Service:
    bus = bus_for(settings)
    db = database_for(settings, SCHEMA)
    relay = OutboxRelay(db, OUTBOX, lambda: bus.publisher)
    runs = RunService(sql_units(db, relay), statements=RunStatements(db, relay))
    book = EdgeBook(settings.edge_grace_seconds)
    cancels = CancelWatch(runs, book, settings.cancel_timeout_seconds)

    async def edges_bucket() -> KeyValue:
        return await bus.js.key_value(EDGES.bucket)

    recovery = Recovery(runs, book, edges_bucket, cancels)
    bus.on_reconnected.append(recovery.monitor.nats_back)
    service = Service(
        name=settings.service_name,
        topology=needs(SCHEDULER),
        settings=settings,
        bus=bus,
        database=db,
        migrations=Migrations(Path(__file__).parent / "migrations", Base.metadata),
        outbox=relay,
    )

    async def start_recovery() -> None:
        await recovery.monitor.start()
        await recovery.reconcile()

    async def stop() -> None:
        await recovery.monitor.stop()
        await cancels.stop()

    relay.observers.append(Durations())
    service.on_scrape.append(Gauges(db, book).scrape)
    service.on_started.append(start_recovery)
    service.on_stop.append(stop)
    service.include(
        handlers,
        Deps(
            runs=runs,
            queries=RunQueries(db),
            calls=CallLog(db),
            logs=RunLogs(db),
            bus=bus,
            edges=book,
            cancels=cancels,
        ),
    )
    return service
