"""PostgreSQL errors that are about the input, not the database: mapped to a domain error.

A value PostgreSQL refuses to store (a NUL character in text or JSONB, a number out of range, a
key too long for its index) fails the same way however often it is retried, so answering it as
``internal`` (500) blames the service and hides what to fix, and treating it as a dependency
outage (asyncpg's client-side ``DataError`` is an ``InterfaceError``, which ``is_infrastructure``
takes for a dead connection) retries it for minutes. ``as_domain_error`` recognises these errors
however they arrive: raised by asyncpg directly, or wrapped by SQLAlchemy (its asyncpg adapter
re-raises them as a generic ``DBAPIError`` whose cause is the asyncpg exception).

The message says, in the service's words, what kind of value was refused (by SQLSTATE), never
what PostgreSQL or asyncpg said: their texts name indexes (``index row size ... for index
"<name>"``), column types (``character varying(200)``) and query arguments (``invalid input for
query argument $3``), which are the database's internals, not the caller's concern.
``details["sqlstate"]`` keeps the exact code for whoever needs it.
"""

from __future__ import annotations

import sys

from praxis_contracts.errors import InvalidInput, PraxisError


def _input_errors() -> tuple[type[BaseException], ...]:
    """asyncpg's input errors, for a process that loaded asyncpg (none other can raise them;
    the edge, which has no database, is spared importing it)."""
    if "asyncpg" not in sys.modules:
        return ()
    import asyncpg
    import asyncpg.exceptions._base as asyncpg_base

    return (
        asyncpg.exceptions.DataError,  # SQLSTATE class 22: NUL, bad encoding, out of range ...
        asyncpg.exceptions.ProgramLimitExceededError,  # 54000: e.g. index row too large
        asyncpg_base.DataError,  # client side: an argument asyncpg cannot encode
    )


_INPUT_SQLSTATES = ("22", "54000")
"""SQLSTATE prefixes of input errors, for wrappers that carry only the code."""

_UNSTORABLE_TEXT = "a text holds a character the database cannot store (such as NUL, \\u0000)"
_REASONS = {
    "22001": "a text is longer than its field allows",
    "22003": "a number is out of range",
    "22007": "a date or time is malformed",
    "22008": "a date or time is out of range",
    "22021": _UNSTORABLE_TEXT,  # e.g. a NUL in text
    "22P02": "a value is malformed for its type",
    "22P05": _UNSTORABLE_TEXT,  # e.g. \u0000 in jsonb
    "54000": "a value is too large to store (a name or key too long to index)",
}
"""What a SQLSTATE means for the caller, in words that name nothing of the schema."""

_DEFAULT_REASON = "a value is out of the range or of a type the database can store"


def as_domain_error(exc: BaseException) -> PraxisError | None:
    """The domain error ``exc`` stands for if PostgreSQL (or asyncpg) rejected the input; None
    for anything else. The message says what kind of value was refused, never the statement
    nor PostgreSQL's own text (see the module's docstring)."""
    found = _input_error(exc)
    if found is None:
        return None
    sqlstate = getattr(found, "sqlstate", None)
    said = str(found)  # asyncpg's client side: "... (value out of int32 range)", SQLSTATE 22000
    if isinstance(sqlstate, str) and sqlstate in _REASONS:
        reason = _REASONS[sqlstate]
    elif "out of" in said and "range" in said:
        reason = "a value is out of range"
    else:
        reason = _DEFAULT_REASON
    details = {"sqlstate": sqlstate} if isinstance(sqlstate, str) else {}
    return InvalidInput(f"the database cannot store this input: {reason}", **details)


def _input_error(exc: BaseException) -> BaseException | None:
    """The first exception along ``exc``'s causes (and SQLAlchemy's ``orig``) that is an input
    error."""
    kinds = _input_errors()
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kinds) or _input_sqlstate(current):
            return current
        for linked in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(linked, BaseException):
                pending.append(linked)
    return None


def _input_sqlstate(exc: BaseException) -> bool:
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_INPUT_SQLSTATES)


__all__ = ["as_domain_error"]
