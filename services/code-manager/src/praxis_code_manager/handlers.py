"""Code-manager handlers: typed message in, one service call, typed reply out (events are
emitted in the service layer's unit of work)."""

from __future__ import annotations

from dataclasses import dataclass

from praxis_code_manager.service import CodeService
from praxis_contracts.base import Empty
from praxis_contracts.protocols import (
    DeleteProtocolSource,
    ListProtocolDefinitions,
    ListProtocolSources,
    ProtocolDefinitionPage,
    ProtocolSource,
    ProtocolSourcePage,
    RegisterProtocolSource,
    ResolvedProtocol,
    ResolveProtocol,
    SyncProtocolSource,
)
from praxis_runtime.bus import Handlers


@dataclass(frozen=True)
class Deps:
    service: CodeService


handlers: Handlers[Deps] = Handlers()


@handlers.rpc(RegisterProtocolSource)
async def register_source(cmd: RegisterProtocolSource, deps: Deps) -> ProtocolSource:
    source_id = await deps.service.register(cmd)
    sync = SyncProtocolSource(source_id=source_id, commit=cmd.commit, actor=cmd.actor)
    return await sync_source(sync, deps)


@handlers.rpc(SyncProtocolSource)
async def sync_source(cmd: SyncProtocolSource, deps: Deps) -> ProtocolSource:
    source, _ = await deps.service.sync(cmd.source_id, cmd.commit, cmd.actor)
    return source


@handlers.rpc(DeleteProtocolSource)
async def delete_source(cmd: DeleteProtocolSource, deps: Deps) -> Empty:
    await deps.service.delete(cmd.source_id, cmd.actor)
    return Empty()


@handlers.rpc(ListProtocolSources)
async def list_sources(query: ListProtocolSources, deps: Deps) -> ProtocolSourcePage:
    return await deps.service.list_sources(query)


@handlers.rpc(ListProtocolDefinitions)
async def list_definitions(query: ListProtocolDefinitions, deps: Deps) -> ProtocolDefinitionPage:
    return await deps.service.list_definitions(query)


@handlers.rpc(ResolveProtocol)
async def resolve(query: ResolveProtocol, deps: Deps) -> ResolvedProtocol:
    return await deps.service.resolve(query)
