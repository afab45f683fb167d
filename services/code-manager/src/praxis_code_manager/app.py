"""Code-manager wiring: settings in, a ``Service`` out. Nothing happens at import time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

from nats.js.object_store import ObjectStore
from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from praxis_code_manager.discovery import Discovery, DiscoveryLimits
from praxis_code_manager.handlers import Deps, handlers
from praxis_code_manager.orm import OUTBOX, SCHEMA, Base
from praxis_code_manager.policy import KNOWN_SCHEMES, SourcePolicy
from praxis_code_manager.service import CodeService, Secrets
from praxis_contracts.permissions import CODE_MANAGER, needs
from praxis_contracts.topology import PROTOCOL_CODE
from praxis_runtime.outbox import OutboxRelay
from praxis_runtime.sandbox import Sandbox, Spawner
from praxis_runtime.service import Migrations, Service, bus_for, database_for
from praxis_runtime.settings import DatabaseSettings, SandboxedSettings
from praxis_runtime.spawner import RemoteSandbox

log = logging.getLogger(__name__)


class Settings(DatabaseSettings, SandboxedSettings):
    service_name: str = "code-manager"
    protocol_git_timeout_seconds: float = Field(
        default=300, gt=0, description="PROTOCOL_GIT_TIMEOUT_SECONDS"
    )
    protocol_repo_dir: Path = Field(
        default=Path(".praxis/code-manager"), description="PROTOCOL_REPO_DIR"
    )
    source_allowed_schemes: Annotated[list[str], NoDecode] = Field(
        default=["https", "ssh"],
        description="SOURCE_ALLOWED_SCHEMES: comma-separated transports git sources may use "
        "(of https, http, ssh, git, file); a bare path counts as file",
    )
    source_allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default=[], description="SOURCE_ALLOWED_HOSTS: comma-separated; empty = any public host"
    )
    source_allowed_roots: Annotated[list[Path], NoDecode] = Field(
        default=[],
        description="SOURCE_ALLOWED_ROOTS: comma-separated folders file URLs and filesystem "
        "sources must lie under; empty = no local sources",
    )
    source_allow_private_hosts: bool = Field(
        default=False,
        description="SOURCE_ALLOW_PRIVATE_HOSTS: allow hosts on private networks (RFC 1918, "
        "fc00::/7); loopback, link-local and unspecified addresses are refused regardless",
    )
    source_secrets_dir: Path | None = Field(
        default=None,
        description="SOURCE_SECRETS_DIR: where credentials_ref 'file:<name>' secrets are mounted",
    )
    discovery_timeout_seconds: float = Field(
        default=60.0, gt=0, description="DISCOVERY_TIMEOUT_SECONDS: per module imported"
    )
    discovery_memory_mb: int = Field(
        default=1024, ge=256, description="DISCOVERY_MEMORY_MB: address space of the child"
    )
    discovery_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="DISCOVERY_CONCURRENCY: discovery children running at once; the others "
        "are paused and take turns, those that ran least first",
    )
    discovery_socket: Path | None = Field(
        default=None,
        description="DISCOVERY_SOCKET: ask for discovery children at this Unix socket instead "
        "of starting them here: a sandbox container beside this one (Kubernetes), with no "
        "Secret mounted (python -m praxis_runtime.spawner --listen ...); no local sandbox is "
        "set up then",
    )
    discovery_scratch_dir: Path | None = Field(
        default=None,
        description="DISCOVERY_SCRATCH_DIR: where discovery children get their scratch "
        "folders (default <PROTOCOL_REPO_DIR>/scratch); with DISCOVERY_SOCKET a folder the "
        "sandbox container mounts at the same path and may write (its --write)",
    )

    @field_validator(
        "source_allowed_schemes", "source_allowed_hosts", "source_allowed_roots", mode="before"
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("source_allowed_schemes")
    @classmethod
    def _known_schemes(cls, value: list[str]) -> list[str]:
        unknown = {v.lower() for v in value} - KNOWN_SCHEMES
        if unknown:
            raise ValueError(f"unknown schemes {sorted(unknown)}; known: {sorted(KNOWN_SCHEMES)}")
        return [v.lower() for v in value]

    def source_policy(self) -> SourcePolicy:
        return SourcePolicy(
            schemes=frozenset(self.source_allowed_schemes),
            hosts=frozenset(h.lower() for h in self.source_allowed_hosts),
            roots=tuple(self.source_allowed_roots),
            allow_private=self.source_allow_private_hosts,
        )


def build_app(settings: Settings) -> Service:
    bus = bus_for(settings)
    db = database_for(settings, SCHEMA)
    stores: dict[str, ObjectStore] = {}

    def store() -> ObjectStore:
        return stores[PROTOCOL_CODE.bucket]

    async def bind_store() -> None:
        stores[PROTOCOL_CODE.bucket] = await bus.js.object_store(PROTOCOL_CODE.bucket)

    relay = OutboxRelay(db, OUTBOX, lambda: bus.publisher)
    # A sandbox container confines its children itself: no local sandbox then (a node without
    # Landlock does not refuse the service: that container, holding no Secret, is the boundary).
    sandbox: Spawner = (
        Sandbox(settings)
        if settings.discovery_socket is None
        else RemoteSandbox(settings.discovery_socket)
    )
    log.info("discovery children run confined: %s", sandbox.describe())
    scratch = settings.discovery_scratch_dir or settings.protocol_repo_dir / "scratch"
    code = CodeService(
        db,
        store,
        settings.protocol_repo_dir,
        settings.protocol_git_timeout_seconds,
        relay,
        policy=settings.source_policy(),
        secrets=Secrets(settings.source_secrets_dir),
        discovery=Discovery(
            DiscoveryLimits(
                timeout=settings.discovery_timeout_seconds,
                memory_mb=settings.discovery_memory_mb,
                concurrency=settings.discovery_concurrency,
            ),
            sandbox,
            scratch.absolute(),
        ),
    )
    service = Service(
        name=settings.service_name,
        topology=needs(CODE_MANAGER),
        settings=settings,
        bus=bus,
        database=db,
        migrations=Migrations(Path(__file__).parent / "migrations", Base.metadata),
        outbox=relay,
    )

    service.on_start.append(bind_store)
    service.include(handlers, Deps(service=code))
    return service
