"""One lifecycle for every service: connect, ensure topology, migrate, serve, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from praxis_contracts.permissions import Topology
from praxis_runtime import tracing
from praxis_runtime.bus import Bus, Handlers
from praxis_runtime.health import HealthServer, ReadinessCheck
from praxis_runtime.logging import configure_logging
from praxis_runtime.metrics import (
    DB_CONNECTIONS,
    OUTBOX_BACKLOG,
    OUTBOX_OLDEST_SECONDS,
    ScrapeHook,
)
from praxis_runtime.sandbox import harden
from praxis_runtime.settings import (
    DatabaseSettings,
    ServiceSettings,
    database_url,
    nats_password,
    nats_tls,
)
from praxis_runtime.topology import verify

if TYPE_CHECKING:  # SQLAlchemy is imported only by services with a database (not the edge's)
    from sqlalchemy import MetaData

    from praxis_runtime.db import Database
    from praxis_runtime.outbox import OutboxRelay

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


@dataclass
class Migrations:
    path: Path
    metadata: MetaData | None = None


@dataclass
class Service:
    """What a service is made of; ``build_app(settings)`` in each service returns one."""

    name: str
    settings: ServiceSettings
    bus: Bus
    database: Database | None = None
    migrations: Migrations | None = None
    outbox: OutboxRelay | None = None
    """Publishes what the service's units of work commit; started with the service (what a
    crash left committed is published then) and stopped after the stop hooks."""
    handlers: list[tuple[Handlers[Any], Any]] = field(default_factory=list)
    on_start: list[Hook] = field(default_factory=list)
    on_started: list[Hook] = field(default_factory=list)
    on_stopping: list[Hook] = field(default_factory=list)
    """Run first when the service is asked to stop, while it still consumes everything and its
    health endpoints answer (the orchestrator stops taking runs and lets running ones finish
    here, for as long as its grace period allows)."""
    on_stop: list[Hook] = field(default_factory=list)
    checks: dict[str, ReadinessCheck] = field(default_factory=dict)
    on_scrape: list[ScrapeHook] = field(default_factory=list)
    """Set the service's gauges when ``/metrics`` is scraped (``praxis_runtime.metrics``)."""
    health: HealthServer | None = None
    stopping: bool = False
    topology: Topology | None = None
    """What the service binds to: checked at start-up (``praxis_runtime.topology.verify``);
    a service never creates a stream, bucket or store (provisioning does)."""

    def include(self, handlers: Handlers[Any], deps: Any) -> None:
        self.handlers.append((handlers, deps))

    async def start(self) -> None:
        """Bring the service up; returns once it is serving."""
        await self.bus.connect()
        if self.topology is not None:
            await verify(self.bus.js, self.topology)
        if self.database is not None and self.migrations is not None:
            await self.database.migrate(self.migrations.path, self.migrations.metadata)
        if self.outbox is not None:
            self.outbox.start()
        for hook in self.on_start:
            await hook()
        for group, deps in self.handlers:
            self.bus.include(group, deps)
        await self.bus.start()
        for hook in self.on_started:
            await hook()
        await self._start_health()
        log.info("%s ready", self.name)

    async def _start_health(self) -> None:
        if self.settings.health_port is None:
            return
        checks: dict[str, ReadinessCheck] = {
            "serving": self._serving,
            "nats": self._nats_ready,
            **self.checks,
        }
        if self.database is not None:
            checks["database"] = self.database.ping
        self.health = HealthServer(
            self.settings.health_host,
            self.settings.health_port,
            checks,
            [self._plumbing_gauges, *self.on_scrape],
        )
        port = await self.health.start()
        log.info("health endpoints on port %d", port)

    async def _plumbing_gauges(self) -> None:
        """The outbox's backlog and the connection pool, for every service that has them."""
        if self.outbox is not None:
            backlog, oldest = self.outbox.backlog()
            OUTBOX_BACKLOG.labels(self.name).set(backlog)
            OUTBOX_OLDEST_SECONDS.labels(self.name).set(oldest)
        if self.database is not None:
            in_use, idle = self.database.pool_use()
            DB_CONNECTIONS.labels(self.name, "checked_out").set(in_use)
            DB_CONNECTIONS.labels(self.name, "idle").set(idle)

    async def _nats_ready(self) -> bool:
        return self.bus.connected

    async def stop(self) -> None:
        """Stop taking messages, let in-flight handlers finish, then release resources. The
        health endpoints answer until the end (a long stop is not a dead process), and
        ``/readyz`` says not ready from the start."""
        self.stopping = True
        for hook in self.on_stopping:
            await hook()
        await self.bus.stop_consuming()  # no message starts work the hooks below wind down
        for hook in reversed(self.on_stop):
            await hook()  # before the bus closes: hooks may still publish (e.g. drained runs)
        if self.outbox is not None:
            await self.outbox.stop(self.settings.graceful_timeout_seconds)
        await self.bus.stop()
        if self.database is not None:
            await self.database.dispose()
        if self.health is not None:
            await self.health.stop()
        log.info("%s stopped", self.name)

    async def _serving(self) -> bool:
        return not self.stopping


def database_for(settings: DatabaseSettings, schema: str) -> Database:
    """The service's database: ``DATABASE_URL_FILE`` (a mounted Secret) or ``DATABASE_URL``."""
    from praxis_runtime.db import Database

    return Database(database_url(settings), schema, pool_size=settings.database_pool_size)


def bus_for(settings: ServiceSettings) -> Bus:
    return Bus(
        settings.nats_url,
        settings.service_name,
        request_timeout=settings.request_timeout_seconds,
        graceful_timeout=settings.graceful_timeout_seconds,
        max_deliver=settings.max_deliver,
        infra_retry_seconds=settings.infra_retry_seconds,
        user=settings.nats_user,
        password=nats_password(settings),
        tls=nats_tls(settings),
    )


async def serve(service: Service) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tracing.configure(service.name)  # only where an OTLP endpoint is configured
    await service.start()
    # What start-up built (modules, PyLabRobot's classes, the catalog, mappings) lives as long as
    # the process: out of the collector's sight, a full collection stops scanning it, and its
    # pauses shrink (README, Design measurements).
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
    finally:
        log.info("%s shutting down", service.name)
        await service.stop()
        tracing.shutdown()  # the last spans are exported


def run(build: Callable[[Any], Service], settings: ServiceSettings) -> None:
    """Entry point used by every service's ``__main__``: the process is hardened first
    (``praxis_runtime.sandbox.harden``: not readable by processes of its own user)."""
    harden()
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    asyncio.run(serve(build(settings)))
