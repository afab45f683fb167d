"""A kept connection against a real PostgreSQL: statements in autocommit, a lost connection
replaced on the next call."""

from __future__ import annotations

import contextlib
import uuid

import asyncpg
import pytest

from praxis_runtime.db import Database

pytestmark = pytest.mark.integration


async def test_a_lost_connection_is_replaced_on_the_next_call(database_url: str) -> None:
    db = Database(database_url, f"kept_{uuid.uuid4().hex[:8]}")
    kept = db.kept_connection()
    try:
        (first,) = await kept.fetch("SELECT pg_backend_pid() AS pid")
        (again,) = await kept.fetch("SELECT pg_backend_pid() AS pid")
        assert again["pid"] == first["pid"]  # kept, not reopened

        with pytest.raises(asyncpg.PostgresError):
            await kept.fetch("SELECT 1 / 0")  # a statement error keeps the connection
        (same,) = await kept.fetch("SELECT pg_backend_pid() AS pid")
        assert same["pid"] == first["pid"]

        other = await asyncpg.connect(
            db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        )
        await other.execute("SELECT pg_terminate_backend($1)", first["pid"])
        await other.close()
        # Whether asyncpg sees the closed connection before this call or during it is timing:
        # the call either reconnects at once or fails; the one after it must work either way.
        with contextlib.suppress(Exception):
            await kept.fetch("SELECT 1")
        (fresh,) = await kept.fetch(
            "SELECT pg_backend_pid() AS pid, current_setting('search_path') AS path"
        )
        assert fresh["pid"] != first["pid"] and fresh["path"] == db.schema
    finally:
        await db.dispose()
