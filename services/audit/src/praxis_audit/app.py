"""Audit wiring: settings in, a ``Service`` out. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import Field

from praxis_audit.handlers import Deps, handlers
from praxis_audit.ingest import Follower
from praxis_audit.orm import SCHEMA, Base
from praxis_audit.store import Trail
from praxis_contracts.permissions import AUDIT_IDENTITY, needs
from praxis_runtime.service import Migrations, Service, bus_for, database_for
from praxis_runtime.settings import DatabaseSettings

log = logging.getLogger(__name__)


class Settings(DatabaseSettings):
    service_name: str = "audit"
    audit_retention_days: int = Field(
        default=3650,
        ge=1,
        description="AUDIT_RETENTION_DAYS: how long the trail keeps an event (ten years by "
        "default), whatever becomes of its run or asset",
    )
    audit_prune_interval_seconds: float = Field(
        default=3600, gt=0, description="AUDIT_PRUNE_INTERVAL_SECONDS: how often to prune"
    )


def build_app(settings: Settings) -> Service:
    bus = bus_for(settings)
    db = database_for(settings, SCHEMA)
    trail = Trail(db)
    follower = Follower(lambda: bus.js, trail)
    bus.on_reconnected.append(follower.resync)  # the stream may be another one now
    retention = timedelta(days=settings.audit_retention_days)
    pruning: list[asyncio.Task[None]] = []

    async def prune_forever() -> None:
        while True:
            try:
                if deleted := await trail.prune(datetime.now(UTC) - retention):
                    log.info("pruned %d events older than %s", deleted, retention)
            except Exception as exc:  # PostgreSQL away: the next round prunes
                log.warning("pruning the audit trail failed: %r", exc)
            await asyncio.sleep(settings.audit_prune_interval_seconds)

    async def start() -> None:
        await follower.start()
        pruning.append(asyncio.create_task(prune_forever(), name="audit-prune"))

    async def stop() -> None:
        for task in pruning:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await follower.stop()

    service = Service(
        name=settings.service_name,
        topology=needs(AUDIT_IDENTITY),
        settings=settings,
        bus=bus,
        database=db,
        migrations=Migrations(Path(__file__).parent / "migrations", Base.metadata),
    )
    service.on_started.append(start)
    service.on_stop.append(stop)
    service.include(handlers, Deps(trail=trail, follower=follower))
    return service
