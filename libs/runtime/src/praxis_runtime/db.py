"""PostgreSQL: one async engine per service, one session per message, migrations per schema.

Each service owns one PostgreSQL schema and its own Alembic version table inside it. Migrations
run at start-up under an advisory lock, so replicas starting together migrate once.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Connection, MetaData, text
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
        self._kept: list[KeptConnection] = []

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """One unit of work: commits on success, rolls back on any exception."""
        async with self.sessions() as session, session.begin():
            yield session

    def pool_use(self) -> tuple[int, int]:
        """Connections of the pool in use and idle (``praxis_db_connections``)."""
        pool: Any = self.engine.pool
        checked_out = getattr(pool, "checkedout", None)
        checked_in = getattr(pool, "checkedin", None)
        if checked_out is None or checked_in is None:  # a pool that does not keep connections
            return 0, 0
        return int(checked_out()), int(checked_in())

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
            # Only if it is missing: a role that owns its schema but may not create schemas in
            # the database (a role per service) is refused even ``IF NOT EXISTS``.
            found = await conn.scalar(
                text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"),
                {"schema": self.schema},
            )
            if not found:
                await conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
            await conn.run_sync(_upgrade, migrations, self.schema, metadata)

    def kept_connection(self) -> KeptConnection:
        """A connection of its own for one hot statement run by a serial worker."""
        kept = KeptConnection(self.engine.url.set(drivername="postgresql"), self.schema)
        self._kept.append(kept)
        return kept

    async def dispose(self) -> None:
        for kept in self._kept:
            await kept.close()
        await self.engine.dispose()


class KeptConnection:
    """One asyncpg connection, kept open, for a statement a serial worker runs many times a
    second. It is atomic on its own (autocommit) and prepared once per connection.

    A statement through the SQLAlchemy pool pays a checkout, a greenlet hop and a reset on
    return, several times the cost on a kept asyncpg connection (README, Design measurements).
    Callers are serialised; a broken connection is dropped and the next call reconnects.
    """

    def __init__(self, url: URL, schema: str) -> None:
        self._dsn = url.render_as_string(hide_password=False)
        self._schema = schema
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> list[asyncpg.Record]:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(
                    self._dsn, server_settings={"search_path": self._schema}
                )
            conn = self._conn
            try:
                return list(await conn.fetch(query, *args, timeout=timeout))
            except asyncpg.PostgresError:
                if conn.is_closed():  # e.g. the server shut the session down
                    self._conn = None
                raise  # the server refused the statement: the connection is still good
            except BaseException:
                # Lost, interrupted mid-statement, or out of step with the protocol: the next
                # call opens another connection.
                conn.terminate()
                self._conn = None
                raise

    async def close(self) -> None:
        async with self._lock:
            await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            await conn.close(timeout=5)


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
