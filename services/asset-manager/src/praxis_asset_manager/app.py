"""Asset-manager wiring: settings in, a ``Service`` out. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from pathlib import Path

from nats.js.kv import KeyValue
from pydantic import Field, field_validator

from praxis_asset_manager.catalog import Catalog
from praxis_asset_manager.edges import EdgeWatch
from praxis_asset_manager.handlers import Deps, handlers
from praxis_asset_manager.inventory import Inventory
from praxis_asset_manager.inventory_commands import InventoryCommands
from praxis_asset_manager.inventory_handlers import InventoryDeps
from praxis_asset_manager.inventory_handlers import handlers as inventory_handlers
from praxis_asset_manager.orm import OUTBOX, SCHEMA, Base
from praxis_asset_manager.reservations import Reservations, StatusUpdate
from praxis_asset_manager.snapshots import Snapshots, StateStores
from praxis_asset_manager.snapshots import handlers as snapshot_handlers
from praxis_asset_manager.status import StatusChange, StatusQueue, StatusRecorder
from praxis_contracts.permissions import asset_manager, needs
from praxis_contracts.topology import ASSET_LEASES, EDGES
from praxis_runtime.leases import LeaseStore
from praxis_runtime.outbox import OutboxRelay, SqlUnitOfWork
from praxis_runtime.service import Migrations, Service, bus_for, database_for
from praxis_runtime.settings import DatabaseSettings, at_least

log = logging.getLogger(__name__)


class Settings(DatabaseSettings):
    service_name: str = "asset-manager"
    asset_lock_timeout_seconds: int = Field(
        default=3600,
        description="ASSET_LOCK_TIMEOUT_SECONDS: lease TTL; its edge renews a lease every "
        "third of it",
    )
    snapshots_kept: int = Field(
        default=50, ge=1, description="SNAPSHOTS_KEPT: workcell state snapshots kept per workcell"
    )
    snapshots_kept_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="SNAPSHOTS_KEPT_SECONDS: and every snapshot younger than this is kept too, "
        "however many there are",
    )
    call_results_kept_seconds: float = Field(
        default=30 * 86400.0,
        ge=0,
        description="CALL_RESULTS_KEPT_SECONDS: how long a protocol call's large return value "
        "(kept by reference in its workcell's state store) is kept",
    )
    edge_placement: bool = Field(
        default=True,
        description="EDGE_PLACEMENT: place a run only on a workcell whose orchestrator beats and "
        "accepts runs (elsewhere it waits holding no lease: waiting_for_edge). false places "
        "runs whether or not an orchestrator serves the workcell: only for testing the "
        "asset-manager alone",
    )

    @field_validator("asset_lock_timeout_seconds")
    @classmethod
    def _survives_a_slow_renewal(cls, value: int) -> int:
        at_least(
            value,
            MIN_LEASE_SECONDS,
            "ASSET_LOCK_TIMEOUT_SECONDS",
            "an edge renews its leases every third of the TTL and gives each attempt up to "
            "a second; a shorter lease runs out under one slow renewal, and every run whose "
            "lease runs out needs an operator",
        )
        return value


MIN_LEASE_SECONDS = 3


def build_app(settings: Settings) -> Service:
    bus = bus_for(settings)
    db = database_for(settings, SCHEMA)
    relay = OutboxRelay(db, OUTBOX, lambda: bus.publisher)
    inventory = Inventory(db, relay)
    service = Service(
        name=settings.service_name,
        topology=needs(asset_manager(())),
        settings=settings,
        bus=bus,
        database=db,
        migrations=Migrations(Path(__file__).parent / "migrations", Base.metadata),
        outbox=relay,
    )
    catalog, status = Catalog(db), StatusRecorder(db, relay, inventory.apply_statuses)
    statuses = StatusQueue(status)
    commands = InventoryCommands(db, inventory, catalog, relay)

    service.on_start.append(catalog.sync)
    service.include(inventory_handlers, InventoryDeps(commands, catalog, status))

    def record_statuses(updates: list[StatusUpdate]) -> None:
        statuses.submit(StatusChange(*update) for update in updates)

    holder: dict[str, Reservations] = {}

    def leased(asset_id: uuid.UUID) -> bool:
        return "r" in holder and holder["r"].index.holder(asset_id) is not None

    snapshots = Snapshots(
        db,
        inventory,
        relay,
        StateStores(lambda: bus.js),
        settings.snapshots_kept,
        leased,
        kept_seconds=settings.snapshots_kept_seconds,
        results_kept_seconds=settings.call_results_kept_seconds,
    )
    service.include(snapshot_handlers, snapshots)
    tasks: list[asyncio.Task[None]] = []
    watchers: list[KeyValue.KeyWatcher] = []

    def opened(workcells: frozenset[str]) -> None:
        holder["r"].workcells_opened(workcells)  # the reservations exist once it is called

    edges = EdgeWatch(opened)

    async def start_reservations() -> None:
        leases = LeaseStore(bus.publisher, ASSET_LEASES.bucket)
        reservations = Reservations(
            db,
            inventory,
            leases,
            settings.asset_lock_timeout_seconds,
            bus.publish,
            lambda: SqlUnitOfWork(db, relay),
            status=record_statuses,
            placement=edges if settings.edge_placement else None,
        )
        statuses.start()
        holder["r"] = reservations
        commands.on_resumed = lambda workcell: reservations.workcells_opened([workcell])
        if settings.edge_placement:
            await edges.start(await bus.js.key_value(EDGES.bucket))
        ready = asyncio.Event()
        watcher = await (await bus.js.key_value(ASSET_LEASES.bucket)).watchall()
        watchers.append(watcher)
        tasks.append(asyncio.create_task(_watch(watcher, reservations, ready)))
        await ready.wait()
        held = {asset: h.run_id for asset, h in reservations.index.live().items()}
        await status.reconcile(held)
        log.info("resumed %d waiting reservations", await reservations.resume())
        service.include(
            handlers, Deps(inventory=inventory, reservations=reservations, snapshots=snapshots)
        )

    async def serve_resumed() -> None:
        await holder["r"].serve_all()

    async def stop_watch() -> None:
        await edges.stop()
        await statuses.stop()
        # Stopping the watcher ends its iterator; cancelling alone is not enough, since
        # CPython 3.11's wait_for (inside nats-py requests) can swallow a cancellation.
        for watcher in watchers:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=settings.graceful_timeout_seconds)
            for task in stuck:
                log.warning("lease watcher did not stop in time: %s", task)
        if "r" in holder:
            holder["r"].close()  # no expiry deadline fires into a stopped service

    async def queue_gauges() -> None:
        if "r" in holder:
            holder["r"].queue_gauges()

    service.on_scrape.append(queue_gauges)
    service.on_start.append(start_reservations)
    service.on_started.append(serve_resumed)
    service.on_stop.append(stop_watch)
    return service


async def _watch(
    watcher: KeyValue.KeyWatcher, reservations: Reservations, ready: asyncio.Event
) -> None:
    """Mirror the lease bucket; wake waiters when a lease is released, expires or is forced."""
    async for entry in watcher:
        if entry is None:  # the initial replay is done: the mirror is current
            ready.set()
            continue
        change = reservations.observe(entry.key, entry.revision, entry.value, entry.operation)
        if change is None or not ready.is_set():
            continue
        try:
            reservations.on_change(change, entry.operation)
        except Exception:
            log.exception("reacting to a lease change failed")
