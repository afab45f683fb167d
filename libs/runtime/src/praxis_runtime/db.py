"""PostgreSQL: one async engine per service, one session per message, migrations per schema.

Each service owns one PostgreSQL schema and its own Alembic version table inside it. Migrations
run at start-up under an advisory lock, so replicas starting together migrate once.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Executable, MetaData, Row, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)


class Database:
    """An engine and a session factory bound to one service schema."""

    def __init__(self, url: str, schema: str, *, pool_size: int = 10) -> None:
        self.schema = schema
        # No pre-ping: it costs a round trip per transaction. A connection that died with the
        # server fails its transaction, and the message is retried (bus retry policy).
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits on success, rolls back on any exception."""
        async with self.sessions() as session, session.begin():
            yield session

    async def execute_alone(
        self, statement: Executable, params: dict[str, Any] | None = None
    ) -> list[Row[Any]]:
        """Run one statement in autocommit mode and return its rows. A single statement is
        atomic on its own; this spares a transaction's BEGIN and COMMIT round trips."""
        async with self.engine.connect() as conn:
            alone = await conn.execution_options(isolation_level="AUTOCOMMIT")
            result = await alone.execute(statement, params)
            return list(result.all()) if result.returns_rows else []

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def migrate(self, migrations: Path, metadata: MetaData | None = None) -> None:
        """Create the schema if needed and upgrade it to the newest revision."""
        async with self.engine.begin() as conn:
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(self.schema)}
            )
            await conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"'))
            await conn.run_sync(_upgrade, migrations, self.schema, metadata)

    async def dispose(self) -> None:
        await self.engine.dispose()


def _lock_key(schema: str) -> int:
    return zlib.crc32(f"praxis-migrate:{schema}".encode())


def _upgrade(conn: Connection, migrations: Path, schema: str, metadata: MetaData | None) -> None:
    config = Config()
    config.set_main_option("script_location", str(migrations))
    script = ScriptDirectory.from_config(config)

    def upgrade(rev: Any, _context: Any) -> Any:
        return script._upgrade_revs("heads", rev)

    with EnvironmentContext(config, script, fn=upgrade) as env:
        env.configure(
            connection=conn,
            target_metadata=metadata,
            version_table_schema=schema,
            include_schemas=True,
        )
        env.run_migrations()
