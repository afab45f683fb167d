"""Orchestrator wiring: settings in, a ``Service`` out. Nothing happens at import time."""

from __future__ import annotations

from pathlib import Path

from nats.js.object_store import ObjectStore
from pydantic import Field

from praxis_contracts.assets import GetWorkcellLayout, WorkcellLayout
from praxis_contracts.topology import ASSET_LEASES, PROTOCOL_CODE
from praxis_orchestrator.code import CodeCache
from praxis_orchestrator.executor import Executor
from praxis_orchestrator.handlers import handlers_for
from praxis_orchestrator.workcell import WorkcellHost
from praxis_runtime.leases import LeaseStore
from praxis_runtime.service import Service, bus_for
from praxis_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "orchestrator"
    praxis_workcell: str = Field(
        default="demo", pattern=r"^[A-Za-z0-9_-]+$", description="PRAXIS_WORKCELL"
    )
    protocol_code_cache_dir: Path = Field(
        default=Path(".praxis/orchestrator/code"), description="PROTOCOL_CODE_CACHE_DIR"
    )
    max_concurrent_runs: int = Field(default=4, ge=1, description="MAX_CONCURRENT_RUNS")


def build_app(settings: Settings) -> Service:
    bus = bus_for(settings)
    stores: dict[str, ObjectStore] = {}

    async def fetch_layout(query: GetWorkcellLayout) -> WorkcellLayout:
        return await bus.request(query)

    workcell = WorkcellHost(settings.praxis_workcell, fetch_layout)
    code = CodeCache(lambda: stores[PROTOCOL_CODE.bucket], settings.protocol_code_cache_dir)
    service = Service(name=settings.service_name, settings=settings, bus=bus)
    executors: list[Executor] = []

    async def wire() -> None:
        stores[PROTOCOL_CODE.bucket] = await bus.js.object_store(PROTOCOL_CODE.bucket)
        executor = Executor(
            workcell, code, LeaseStore(bus.publisher, ASSET_LEASES.bucket), bus.publish
        )
        executors.append(executor)
        service.include(
            handlers_for(settings.praxis_workcell, settings.max_concurrent_runs), executor
        )

    async def drain() -> None:
        for executor in executors:
            await executor.drain(settings.graceful_timeout_seconds)
        await workcell.stop()

    service.on_start.append(wire)
    service.on_stop.append(drain)
    return service
