"""PostgreSQL's refusals of input become ``invalid_input``, however they are raised.

The errors are produced by a real PostgreSQL (through SQLAlchemy, as the services' units of work
see them, and through a kept asyncpg connection), never constructed by hand: what matters is the
shape the drivers really give them.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel
from sqlalchemy import text

from praxis_contracts.base import Empty, Request
from praxis_contracts.errors import ErrorCode, InvalidInput
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_runtime.bus import Bus, Handlers
from praxis_runtime.db import Database
from praxis_runtime.dberrors import as_domain_error

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def db(make_database: MakeDatabase) -> AsyncIterator[Database]:
    database = Database(make_database("dberrors"), "public")
    async with database.transaction() as session:
        await session.execute(text("CREATE TABLE things (name text, doc jsonb, n int4)"))
        await session.execute(text("CREATE UNIQUE INDEX things_name ON things (name)"))
    yield database
    await database.dispose()


async def refusal(db: Database, statement: str, **values: Any) -> BaseException:
    """The exception SQLAlchemy raises for ``statement``."""
    with pytest.raises(Exception) as caught:
        async with db.transaction() as session:
            await session.execute(text(statement), values)
    return caught.value


@pytest.mark.parametrize(
    ("statement", "values", "sqlstate"),
    [
        ("INSERT INTO things (name) VALUES (:v)", {"v": "a\x00b"}, "22021"),
        ("INSERT INTO things (doc) VALUES (CAST(:v AS jsonb))", {"v": '{"a": "\\u0000"}'}, "22P05"),
        ("INSERT INTO things (n) VALUES (CAST(:v AS int8))", {"v": 2**40}, "22003"),
        # random, so compression cannot bring it under a btree entry's limit (~2.7 kB)
        ("INSERT INTO things (name) VALUES (:v)", {"v": secrets.token_hex(5000)}, "54000"),
    ],
    ids=["nul-in-text", "nul-in-jsonb", "out-of-range", "index-row-too-large"],
)
async def test_data_errors_wrapped_by_sqlalchemy_are_invalid_input(
    db: Database, statement: str, values: dict[str, Any], sqlstate: str
) -> None:
    error = as_domain_error(await refusal(db, statement, **values))
    assert isinstance(error, InvalidInput)
    assert error.code == ErrorCode.INVALID_INPUT
    assert error.details["sqlstate"] == sqlstate
    assert_no_internals(error.message)


def assert_no_internals(message: str) -> None:
    """Neither the statement nor what PostgreSQL or asyncpg said: no table (``things``), index
    (``things_name``), column type, query argument or driver name."""
    for internal in ("INSERT", "things", "int4", "int8", "$1", "argument", "asyncpg", "\n"):
        assert internal not in message, (internal, message)
    assert message.startswith("the database cannot store this input: ")


async def test_an_argument_asyncpg_cannot_encode_is_invalid_input(db: Database) -> None:
    """asyncpg's client-side DataError is an InterfaceError (what a lost connection raises
    too): it must not be taken for an outage."""
    error = as_domain_error(
        await refusal(db, "INSERT INTO things (n) VALUES (:v)", v=2**40)  # int4 column
    )
    assert isinstance(error, InvalidInput)
    assert_no_internals(error.message)  # asyncpg says "invalid input for query argument $1"
    assert "out of range" in error.message


async def test_a_kept_connection_refusal_is_invalid_input(db: Database) -> None:
    kept = db.kept_connection()
    try:
        with pytest.raises(Exception) as caught:
            await kept.fetch("SELECT $1::text", "a\x00b")
    finally:
        await kept.close()
    assert isinstance(as_domain_error(caught.value), InvalidInput)


@pytest.mark.parametrize(
    "statement",
    ["SELEKT 1", "INSERT INTO nowhere VALUES (1)"],
    ids=["syntax", "undefined-table"],
)
async def test_other_database_errors_are_left_alone(db: Database, statement: str) -> None:
    assert as_domain_error(await refusal(db, statement)) is None


async def test_a_duplicate_is_not_an_input_error(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(text("INSERT INTO things (name) VALUES ('twice')"))
    assert as_domain_error(await refusal(db, "INSERT INTO things (name) VALUES ('twice')")) is None


def test_errors_that_are_not_the_database_s_are_left_alone() -> None:
    assert as_domain_error(ConnectionResetError("gone")) is None
    assert as_domain_error(ValueError("x")) is None


# -- the request/reply path -----------------------------------------------------------------


class Store(Request[Empty]):
    """A request type of this module only (no contract): stores ``name``."""

    subject: ClassVar[str] = f"praxis.rpc.dberrors_test.store_{uuid.uuid4().hex[:10]}"
    reply_type: ClassVar[type[BaseModel]] = Empty

    name: str


async def test_a_handler_s_data_error_is_answered_as_invalid_input(
    db: Database, nats_url: str
) -> None:
    handlers: Handlers[Database] = Handlers()

    @handlers.rpc(Store)
    async def store(request: Store, database: Database) -> Empty:
        async with database.transaction() as session:
            await session.execute(
                text("INSERT INTO things (name) VALUES (:v)"), {"v": request.name}
            )
        return Empty()

    service = Bus(nats_url, f"dberrors-test-{uuid.uuid4().hex[:8]}")
    service.include(handlers, db)
    await service.connect()
    await service.start()
    try:
        with pytest.raises(InvalidInput) as refused:
            await service.request(Store(name="a\x00b"))
    finally:
        await service.stop()
    assert refused.value.details["sqlstate"] == "22021"
