"""Scheduler wiring: settings in, a ``Service`` out. Nothing happens at import time."""

from __future__ import annotations

import logging
from pathlib import Path

from praxis_runtime.service import Migrations, Service, bus_for, database_for
from praxis_runtime.settings import DatabaseSettings
from praxis_scheduler.calls import CallLog
from praxis_scheduler.handlers import Deps, handlers
from praxis_scheduler.orm import SCHEMA, Base
from praxis_scheduler.service import Outbox, RunService

log = logging.getLogger(__name__)


class Settings(DatabaseSettings):
    service_name: str = "scheduler"


def build_app(settings: Settings) -> Service:
    bus = bus_for(settings)
    db = database_for(settings, SCHEMA)
    deps = Deps(runs=RunService(db), calls=CallLog(db), bus=bus)
    service = Service(
        name=settings.service_name,
        settings=settings,
        bus=bus,
        database=db,
        migrations=Migrations(Path(__file__).parent / "migrations", Base.metadata),
    )

    async def recover() -> None:
        outbox = Outbox()
        count = await deps.runs.recover(outbox)
        await deps.flush(outbox)
        if count:
            log.info("re-drove %d queued/pending runs", count)

    service.on_started.append(recover)
    service.include(handlers, deps)
    return service
