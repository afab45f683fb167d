"""Standard list filters from query parameters -> the typed ``SearchFilters`` contract."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import Query
from pydantic import ValidationError

from praxis_contracts.common import SearchFilters
from praxis_contracts.errors import InvalidInput, InvalidRequest
from praxis_gateway.guard import nul_locations


def search_filters(
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
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
    try:
        return SearchFilters(
            limit=limit,
            offset=offset,
            sort_by=sort_by,
            date_range_start=date_range_start,
            date_range_end=date_range_end,
            property_filters=_json_object(property_filters),
            protocol_run_accession_id=protocol_run_accession_id,
            machine_accession_id=machine_accession_id,
            resource_accession_id=resource_accession_id,
            parent_accession_id=parent_accession_id,
            workcell_accession_id=workcell_accession_id,
        )
    except ValidationError as exc:
        raise InvalidRequest(f"invalid filters: {exc.errors()[0]['msg']}") from exc


def _json_object(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"property_filters is not valid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise InvalidRequest("property_filters must be a JSON object")
    # The query string itself was checked by ``InputGuard``; a ``\u0000`` escape becomes a
    # NUL only here, and PostgreSQL's jsonb would refuse it.
    if (where := next(nul_locations(value, "query.property_filters"), None)) is not None:
        raise InvalidInput("NUL characters (\\u0000) are not allowed: " + where, field=where)
    return value
