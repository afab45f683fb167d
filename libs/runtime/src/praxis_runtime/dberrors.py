"""PostgreSQL errors that are about the input, not the database: mapped to a domain error.

A value PostgreSQL refuses to store (a NUL character in text or JSONB, a number out of range, a
key too long for its index) fails the same way however often it is retried, so answering it as
``internal`` (500) blames the service and hides what to fix, and treating it as a dependency
outage (asyncpg's client-side ``DataError`` is an ``InterfaceError``, which ``is_infrastructure``
takes for a dead connection) retries it for minutes. ``as_domain_error`` recognises these errors
however they arrive: raised by asyncpg directly, or wrapped by SQLAlchemy (its asyncpg adapter
re-raises them as a generic ``DBAPIError`` whose cause is the asyncpg exception).
"""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions._base as asyncpg_base

from praxis_contracts.errors import InvalidInput, PraxisError

_INPUT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,  # SQLSTATE class 22: NUL, bad encoding, out of range ...
    asyncpg.exceptions.ProgramLimitExceededError,  # 54000: e.g. index row too large
    asyncpg_base.DataError,  # client side: an argument asyncpg cannot encode
)

_INPUT_SQLSTATES = ("22", "54000")
"""SQLSTATE prefixes of input errors, for wrappers that carry only the code."""


def as_domain_error(exc: BaseException) -> PraxisError | None:
    """The domain error ``exc`` stands for if PostgreSQL (or asyncpg) rejected the input; None
    for anything else. The message says what PostgreSQL said, never the statement."""
    found = _input_error(exc)
    if found is None:
        return None
    reason = _first_line(found)
    sqlstate = getattr(found, "sqlstate", None)
    details = {"sqlstate": sqlstate} if isinstance(sqlstate, str) else {}
    return InvalidInput(f"the database cannot store this input: {reason}", **details)


def _input_error(exc: BaseException) -> BaseException | None:
    """The first exception along ``exc``'s causes (and SQLAlchemy's ``orig``) that is an input
    error."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, _INPUT_ERRORS) or _input_sqlstate(current):
            return current
        for linked in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return None


def _input_sqlstate(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_INPUT_SQLSTATES)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


__all__ = ["as_domain_error"]
