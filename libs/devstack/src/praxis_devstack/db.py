"""PostgreSQL URL helpers and synchronous CREATE/DROP DATABASE (asyncpg in a private thread).

URLs come in two flavours here: the SQLAlchemy one used by the services
(``postgresql+asyncpg://user@host:port/db``) and the plain libpq one that asyncpg and the
PostgreSQL tools understand (``postgresql://user@host:port/db``). Every function accepts either.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg

T = TypeVar("T")

SQLALCHEMY_SCHEME = "postgresql+asyncpg"
ADMIN_DATABASE = "postgres"
CONNECT_TIMEOUT = 10.0
_MAX_IDENTIFIER = 63
_POSTGRES_SCHEMES = ("postgres", "postgresql")


def _scheme_base(scheme: str) -> str:
    base = scheme.split("+", 1)[0]
    if base not in _POSTGRES_SCHEMES:
        raise ValueError(f"not a PostgreSQL URL scheme: {scheme!r}")
    return base


def to_sqlalchemy_url(url: str) -> str:
    """``postgres(ql)://`` becomes ``postgresql+asyncpg://``; an explicit ``+driver`` is kept."""
    parts = urlsplit(url)
    _scheme_base(parts.scheme)
    if "+" in parts.scheme:
        return url
    return urlunsplit(parts._replace(scheme=SQLALCHEMY_SCHEME))


def to_libpq_dsn(url: str) -> str:
    """Drop the SQLAlchemy ``+driver`` suffix: ``postgresql+asyncpg://`` -> ``postgresql://``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=_scheme_base(parts.scheme)))


def with_database(url: str, database: str) -> str:
    """``url`` pointing at ``database`` instead (scheme, credentials and query are kept)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def database_of(url: str) -> str:
    """The database name in ``url`` (empty when the URL has none)."""
    return urlsplit(url).path.lstrip("/")


def unique_database_name(prefix: str) -> str:
    """A fresh, valid, lower-case database name starting with a sanitised ``prefix``."""
    clean = re.sub(r"[^a-z0-9_]+", "_", prefix.lower()).strip("_") or "db"
    if clean[0].isdigit():
        clean = f"db_{clean}"
    suffix = uuid.uuid4().hex[:10]
    return f"{clean[: _MAX_IDENTIFIER - len(suffix) - 1]}_{suffix}"


def quote_identifier(name: str) -> str:
    """``name`` as a double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as a single-quoted SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def run_sync(make_coro: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion on a fresh event loop in a private thread.

    Safe to call from synchronous code and from inside a running event loop (for instance an
    async pytest fixture), which a bare :func:`asyncio.run` is not.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="praxis-devstack-db") as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


async def _connect_admin(url: str) -> asyncpg.Connection:
    admin = with_database(to_libpq_dsn(url), ADMIN_DATABASE)
    return await asyncpg.connect(admin, timeout=CONNECT_TIMEOUT)


async def create_database_async(url: str, name: str, *, exist_ok: bool = False) -> bool:
    """CREATE DATABASE ``name`` on the server of ``url``; ``False`` if it existed (``exist_ok``)."""
    conn = await _connect_admin(url)
    try:
        if exist_ok and await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await conn.execute(f"CREATE DATABASE {quote_identifier(name)}")
        except asyncpg.DuplicateDatabaseError:
            if not exist_ok:
                raise
            return False
        return True
    finally:
        await conn.close()


async def drop_database_async(url: str, name: str) -> None:
    """DROP DATABASE IF EXISTS ``name`` WITH (FORCE) on the server of ``url``."""
    conn = await _connect_admin(url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_identifier(name)} WITH (FORCE)")
    finally:
        await conn.close()


def create_database(url: str, name: str, *, exist_ok: bool = False) -> bool:
    """Synchronous :func:`create_database_async`."""
    return run_sync(lambda: create_database_async(url, name, exist_ok=exist_ok))


def drop_database(url: str, name: str) -> None:
    """Synchronous :func:`drop_database_async`."""
    run_sync(lambda: drop_database_async(url, name))
