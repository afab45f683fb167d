"""Orchestrator wiring: settings in, a ``Service`` out. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from nats.js.object_store import ObjectStore
from pydantic import Field

from praxis_contracts.assets import GetWorkcellLayout, WorkcellLayout
from praxis_contracts.permissions import needs, orchestrator
from praxis_contracts.runs import ExecuteRun
from praxis_contracts.topology import ASSET_LEASES, PROTOCOL_CODE, workcell_state
from praxis_orchestrator.code import CodeCache
from praxis_orchestrator.edge import EdgeBeacon
from praxis_orchestrator.executor import Executor
from praxis_orchestrator.handlers import handlers_for
from praxis_orchestrator.isolation import Zygote
from praxis_orchestrator.outbox import ACK_TIMEOUT_SECONDS, Outbox
from praxis_orchestrator.snapshots import StateRecorder
from praxis_orchestrator.workcell import WorkcellHost
from praxis_runtime.leases import LeaseStore
from praxis_runtime.sandbox import Sandbox
from praxis_runtime.service import Service, bus_for
from praxis_runtime.settings import SandboxedSettings, ServiceSettings
from praxis_runtime.topology import object_stream

log = logging.getLogger(__name__)

FLUSH_FLOOR_SECONDS = 1.0
"""Least time a graceful stop gives the outbox to publish what is queued."""


class Settings(ServiceSettings, SandboxedSettings):
    service_name: str = "orchestrator"
    praxis_workcell: str = Field(
        default="demo", pattern=r"^[A-Za-z0-9_-]+$", description="PRAXIS_WORKCELL"
    )
    protocol_code_cache_dir: Path = Field(
        default=Path(".praxis/orchestrator/code"), description="PROTOCOL_CODE_CACHE_DIR"
    )
    max_concurrent_runs: int = Field(default=4, ge=1, description="MAX_CONCURRENT_RUNS")
    run_scratch_dir: Path = Field(
        default=Path(".praxis/orchestrator/runs"),
        description="RUN_SCRATCH_DIR: where each run's process gets the one folder it may write",
    )
    run_memory_mb: int = Field(
        default=4096,
        ge=256,
        description="RUN_MEMORY_MB: address space of a run's process (its protocol, its copies "
        "of the leased assets)",
    )
    zygote_socket: Path | None = Field(
        default=None,
        description="ZYGOTE_SOCKET: reach the zygote (which forks each run's process) at this "
        "Unix socket instead of starting it: in Kubernetes it runs in a container of its own "
        "with no Secret mounted (python -m praxis_orchestrator.zygote --listen ...)",
    )
    run_blocked_seconds: float = Field(
        default=60.0,
        gt=0,
        description="RUN_BLOCKED_SECONDS: a protocol that keeps its worker's event loop busy "
        "this long (blocking code, a busy loop) is reported (RunBlocked)",
    )
    cancel_escalation_seconds: float = Field(
        default=10.0,
        gt=0,
        description="CANCEL_ESCALATION_SECONDS: a cancel ends a running protocol within this "
        "long: half waiting for a checkpoint, half for its cancelled task; then the worker is "
        "abandoned (fenced) and the run requires intervention",
    )
    edge_stop_grace_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="EDGE_STOP_GRACE_SECONDS: asked to stop (an upgrade, a node drain), the "
        "orchestrator takes no new run, gives back the runs it has not started, and lets "
        "running protocols finish for up to this long before it interrupts them (they then "
        "need an operator). Kubernetes: terminationGracePeriodSeconds must exceed it",
    )
    edge_heartbeat_ttl_seconds: int = Field(
        default=6,
        ge=1,
        description="EDGE_HEARTBEAT_TTL_SECONDS: this process's key in the edges bucket expires "
        "this long after its last beat; it beats every third of it",
    )


def package_version() -> str:
    try:
        return importlib.metadata.version("praxis-orchestrator")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Orchestrator:
    """The parts of one orchestrator process, once the service has started (tests look in)."""

    instance: str = field(default_factory=lambda: uuid.uuid4().hex)  # new at every start
    executor: Executor | None = None
    zygote: Zygote | None = None
    outbox: Outbox | None = None
    beacon: EdgeBeacon | None = None
    recorder: StateRecorder | None = None


def build(settings: Settings) -> tuple[Service, Orchestrator]:
    """The service and a handle on its parts."""
    bus = bus_for(settings)
    stores: dict[str, ObjectStore] = {}

    async def fetch_layout(query: GetWorkcellLayout) -> WorkcellLayout:
        return await bus.request(query)

    workcell = WorkcellHost(settings.praxis_workcell, fetch_layout)
    code = CodeCache(lambda: stores[PROTOCOL_CODE.bucket], settings.protocol_code_cache_dir)
    zygote = Zygote(
        # A zygote in a container of its own confines itself; none is spawned here then.
        Sandbox(settings) if settings.zygote_socket is None else None,
        settings.protocol_code_cache_dir.absolute(),
        settings.run_scratch_dir.absolute(),
        settings.run_memory_mb,
        socket_path=settings.zygote_socket,
    )
    service = Service(
        name=settings.service_name,
        settings=settings,
        bus=bus,
        topology=needs(orchestrator(settings.praxis_workcell)),
    )
    parts = Orchestrator(zygote=zygote)

    async def wire() -> None:
        state = workcell_state(settings.praxis_workcell).bucket
        code_store, state_store = await asyncio.gather(
            bus.js.object_store(PROTOCOL_CODE.bucket), bus.js.object_store(state)
        )
        stores[PROTOCOL_CODE.bucket], stores[state] = code_store, state_store
        # Snapshot bodies are written through a context that waits a second per chunk's ack.
        quick = bus.nc.jetstream(timeout=ACK_TIMEOUT_SECONDS)
        writer = ObjectStore(name=state, stream=object_stream(state), js=quick)
        outbox = Outbox(bus.publisher)
        outbox.start()
        recorder = StateRecorder(
            settings.praxis_workcell, outbox, lambda: stores[state], lambda: writer
        )
        executor = Executor(
            workcell,
            code,
            LeaseStore(bus.publisher, ASSET_LEASES.bucket),
            outbox,
            parts.instance,
            run_blocked_seconds=settings.run_blocked_seconds,
            cancel_escalation_seconds=settings.cancel_escalation_seconds,
            recorder=recorder,
            max_concurrent_runs=settings.max_concurrent_runs,
            zygote=zygote,
        )
        beacon = EdgeBeacon(
            bus.publisher,
            workcell=settings.praxis_workcell,
            instance=parts.instance,
            version=package_version(),
            ttl_seconds=settings.edge_heartbeat_ttl_seconds,
            runs=executor.edge_runs,
            on_recovered=executor.resync_leases,
        )
        executor.on_runs_changed = beacon.poke
        executor.list_runs = beacon.sync
        parts.executor, parts.outbox, parts.beacon = executor, outbox, beacon
        parts.recorder = recorder
        await zygote.start()  # warms up (imports) while the first beat goes out
        await beacon.start()  # the first beat goes out before any command is taken
        service.include(handlers_for(settings.praxis_workcell), executor)

    async def stop_taking_runs() -> None:
        """First on a stop, while pause, resume and cancel are still taken: no new run placed
        here (the asset-manager learns it from the heartbeat) and none started; running
        protocols given up to the grace period to finish; then every run not started handed
        back to the workcell's next orchestrator."""
        if parts.beacon is None or parts.executor is None:
            await bus.stop_consuming(only=[ExecuteRun])
            return
        executor = parts.executor
        executor.stopping = True  # a run taken from now on is claimed and kept, never started
        await parts.beacon.stop_accepting()
        grace = settings.edge_stop_grace_seconds
        log.info("stopping: waiting up to %.0f s for the running protocols", grace)
        started = asyncio.get_running_loop().time()
        await executor.finish_started(grace)
        # Commands dispatched here meanwhile were taken and their leases renewed (a drain can
        # outlast an unclaimed lease); now they all go back, claims withdrawn.
        await bus.stop_consuming(only=[ExecuteRun])
        handed = await executor.hand_back()
        await parts.beacon.sync()  # listing no run it gave back
        log.info("stopping: %d unstarted runs handed back", handed)
        left = grace - (asyncio.get_running_loop().time() - started)
        await executor.drain(max(0.0, left))

    async def drain() -> None:
        # Runs and the flush of their last events share the graceful timeout; the flush gets
        # a moment even when the runs used it all (with NATS up it takes milliseconds).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.graceful_timeout_seconds
        if parts.executor is not None:
            await parts.executor.drain(settings.graceful_timeout_seconds)
        if parts.outbox is not None:
            await parts.outbox.close(max(FLUSH_FLOOR_SECONDS, deadline - loop.time()))
        if parts.beacon is not None:
            await parts.beacon.stop()  # last: the scheduler sees RunFinished before the key go
        await zygote.stop()
        await workcell.stop()

    async def accepting() -> bool:
        return parts.beacon is not None and parts.beacon.accepting

    service.on_start.append(wire)
    service.on_stopping.append(stop_taking_runs)
    service.on_stop.append(drain)
    service.checks["accepting"] = accepting
    return service, parts


def build_app(settings: Settings) -> Service:
    return build(settings)[0]
