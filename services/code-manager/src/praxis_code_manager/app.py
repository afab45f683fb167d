"""Code-manager wiring: settings in, a ``Service`` out. Nothing happens at import time."""

from __future__ import annotations

from pathlib import Path

from nats.js.object_store import ObjectStore
from pydantic import Field

from praxis_code_manager.handlers import Deps, handlers
from praxis_code_manager.orm import OUTBOX, SCHEMA, Base
from praxis_code_manager.service import CodeService
from praxis_contracts.topology import PROTOCOL_CODE
from praxis_runtime.outbox import OutboxRelay
from praxis_runtime.service import Migrations, Service, bus_for, database_for
from praxis_runtime.settings import DatabaseSettings


class Settings(DatabaseSettings):
    service_name: str = "code-manager"
    protocol_git_timeout_seconds: float = Field(
        default=300, gt=0, description="PROTOCOL_GIT_TIMEOUT_SECONDS"
    )
    protocol_repo_dir: Path = Field(
        default=Path(".praxis/code-manager"), description="PROTOCOL_REPO_DIR"
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
    code = CodeService(
        db, store, settings.protocol_repo_dir, settings.protocol_git_timeout_seconds, relay
    )
    service = Service(
        name=settings.service_name,
        settings=settings,
        bus=bus,
        database=db,
        migrations=Migrations(Path(__file__).parent / "migrations", Base.metadata),
        outbox=relay,
    )

    service.on_start.append(bind_store)
    service.include(handlers, Deps(service=code))
    return service
