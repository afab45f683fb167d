"""Unit tests for the PostgreSQL URL helpers (no server needed)."""

from __future__ import annotations

import pytest

from praxis_devstack import db


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h:5/d", "postgresql+asyncpg://u@h:5/d"),
        ("postgres://u:p@h:5/d?ssl=require", "postgresql+asyncpg://u:p@h:5/d?ssl=require"),
        ("postgresql+asyncpg://u@h:5/d", "postgresql+asyncpg://u@h:5/d"),
        ("postgresql+psycopg://u@h:5/d", "postgresql+psycopg://u@h:5/d"),
    ],
)
def test_to_sqlalchemy_url(url: str, expected: str) -> None:
    assert db.to_sqlalchemy_url(url) == expected


def test_to_libpq_dsn_and_with_database() -> None:
    url = "postgresql+asyncpg://u:p@h:5/praxis?ssl=disable"
    assert db.to_libpq_dsn(url) == "postgresql://u:p@h:5/praxis?ssl=disable"
    assert db.with_database(url, "other") == "postgresql+asyncpg://u:p@h:5/other?ssl=disable"
    assert db.database_of(url) == "praxis"


def test_rejects_non_postgres_urls() -> None:
    with pytest.raises(ValueError, match="not a PostgreSQL URL"):
        db.to_sqlalchemy_url("mysql://u@h/d")


@pytest.mark.parametrize(
    ("prefix", "start"),
    [("Orders API", "orders_api_"), ("9lives", "db_9lives_"), ("", "db_"), ("x" * 80, "x" * 52)],
)
def test_unique_database_name(prefix: str, start: str) -> None:
    name = db.unique_database_name(prefix)
    assert name.startswith(start)
    assert len(name) <= 63
    assert name != db.unique_database_name(prefix)
