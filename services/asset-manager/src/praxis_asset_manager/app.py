"""Asset-manager wiring: settings in, a ``Service`` out. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from pydantic import Field

from praxis_asset_manager.handlers import Deps, handlers
from praxis_asset_manager.inventory import Inventory
from praxis_asset_manager.orm import SCHEMA, Base
from praxis_asset_manager.reservations import Reservations
from praxis_contracts.topology import ASSET_LEASES
from praxis_runtime.leases import LeaseStore
from praxis_runtime.service import Migrations, Service, bus_for, database_for
from praxis_runtime.settings import DatabaseSettings

log = logging.getLogger(__name__)


class Settings(DatabaseSettings):
    service_name: str = "asset-manager"
    asset_lock_timeout_seconds: int = Field(
        default=3600, ge=1, description="ASSET_LOCK_TIMEOUT_SECONDS"
    )


def build_app(settings: Settings) -> Service:
    bus = bus_for(settings)
    db = database_for(settings, SCHEMA)
    inventory = Inventory(db)
    service = Service(
        name=settings.service_name,
        settings=settings,
        bus=bus,
        database=db,
        migrations=Migrations(Path(__file__).parent / "migrations", Base.metadata),
    )
    holder: dict[str, Reservations] = {}
    tasks: list[asyncio.Task[None]] = []

    async def start_reservations() -> None:
        leases = LeaseStore(bus.js, ASSET_LEASES.bucket)
        reservations = Reservations(
            db, inventory, leases, settings.asset_lock_timeout_seconds, bus.publish
        )
        holder["r"] = reservations
        ready = asyncio.Event()
        tasks.append(asyncio.create_task(_watch(bus.js, reservations, ready)))
        await ready.wait()
        log.info("resumed %d waiting reservations", await reservations.resume())
        service.include(handlers, Deps(inventory=inventory, reservations=reservations))

    async def serve_resumed() -> None:
        await holder["r"].serve_waiters()

    async def stop_watch() -> None:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    service.on_start.append(start_reservations)
    service.on_started.append(serve_resumed)
    service.on_stop.append(stop_watch)
    return service


async def _watch(js: object, reservations: Reservations, ready: asyncio.Event) -> None:
    """Follow the lease bucket; wake waiters whenever a lease is released or expires."""
    kv = await js.key_value(ASSET_LEASES.bucket)  # type: ignore[attr-defined]
    watcher = await kv.watchall()
    async for entry in watcher:
        if entry is None:
            ready.set()
            continue
        freed = reservations.observe(entry.key, entry.value, entry.operation in ("DEL", "PURGE"))
        if freed and ready.is_set():
            try:
                await reservations.serve_waiters()
            except Exception:
                log.exception("serving waiters failed")
