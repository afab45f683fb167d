"""Standard list filters from query parameters -> the typed ``SearchFilters`` contract."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import Query, Request
from pydantic import ValidationError

from praxis_contracts.common import MAX_OFFSET, SearchFilters
from praxis_contracts.errors import InvalidInput, InvalidRequest
from praxis_gateway.guard import MAX_JSON_DEPTH, load_json, nul_locations


def search_filters(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    sort_by: Annotated[str | None, Query(description="Field; prefix '-' for descending")] = None,
    date_range_start: datetime | None = None,
    date_range_end: datetime | None = None,
    property_filters: Annotated[
        str | None, Query(description='JSON object, e.g. {"vendor": "hamilton"}')
    ] = None,
    protocol_run_accession_id: UUID | None = None,
    machine_accession_id: UUID | None = None,
    resource_accession_id: UUID | None = None,
    parent_accession_id: UUID | None = None,
    workcell_accession_id: UUID | None = None,
) -> SearchFilters:
    max_depth = getattr(request.app.state, "max_json_depth", MAX_JSON_DEPTH)
    try:
        return SearchFilters(
            limit=limit,
            offset=offset,
            sort_by=sort_by,
            date_range_start=_storable("date_range_start", date_range_start),
            date_range_end=_storable("date_range_end", date_range_end),
            property_filters=_json_object(property_filters, max_depth),
            protocol_run_accession_id=protocol_run_accession_id,
            machine_accession_id=machine_accession_id,
            resource_accession_id=resource_accession_id,
            parent_accession_id=parent_accession_id,
            workcell_accession_id=workcell_accession_id,
        )
    except ValidationError as exc:
        raise InvalidRequest(f"invalid filters: {exc.errors()[0]['msg']}") from exc


def _storable(name: str, when: datetime | None) -> datetime | None:
    """``when``, if it has a UTC equivalent: a date at the edge of the calendar whose offset
    takes it past year 1 or 9999 (``0001-01-01T00:00+14:00``) cannot be compared with stored
    times, and used to come back as the database driver's complaint about a query argument."""
    if when is None or when.tzinfo is None:
        return when
    try:
        when.astimezone(UTC)
    except OverflowError as exc:
        raise InvalidRequest(f"{name} is out of range once in UTC", field=f"query.{name}") from exc
    return when


def _json_object(text: str | None, max_depth: int) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = load_json(text, max_depth=max_depth, field="query.property_filters")
    except ValueError as exc:  # or Python's refusal of an integer over 4300 digits
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "a number too long"
        raise InvalidRequest(f"property_filters is not valid JSON: {reason}") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("property_filters must be a JSON object")
    # The query string itself was checked by ``InputGuard``; a ``\u0000`` escape becomes a
    # NUL only here, and PostgreSQL's jsonb would refuse it.
    if (where := next(nul_locations(value, "query.property_filters"), None)) is not None:
        raise InvalidInput("NUL characters (\\u0000) are not allowed: " + where, field=where)
    return value
