"""Turn the standard ``SearchFilters`` into SQLAlchemy queries (one query builder for all lists)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from praxis_contracts.common import SearchFilters
from praxis_contracts.errors import InvalidRequest

Column = InstrumentedAttribute[Any]
S = TypeVar("S", bound="Select[*tuple[Any, ...]]")
"""A select of any columns, given back as it came (with the conditions added)."""


def apply_filters(
    stmt: S,
    filters: SearchFilters,
    *,
    created_at: Column,
    sortable: Mapping[str, Column],
    properties: Column | None = None,
    relations: Mapping[str, Column] | None = None,
) -> S:
    """Date range, JSON property containment and relationship-id filters (no paging)."""
    if filters.date_range_start is not None:
        stmt = stmt.where(created_at >= filters.date_range_start)
    if filters.date_range_end is not None:
        stmt = stmt.where(created_at < filters.date_range_end)
    if filters.property_filters:
        if properties is None:
            raise InvalidRequest("property_filters are not supported for this list")
        stmt = stmt.where(properties.contains(filters.property_filters))
    for field, column in (relations or {}).items():
        value = getattr(filters, field)
        if value is not None:
            stmt = stmt.where(column == value)
    unsupported = [
        f
        for f in _RELATION_FIELDS
        if getattr(filters, f) is not None and f not in (relations or {})
    ]
    if unsupported:
        raise InvalidRequest(f"filter {unsupported[0]} does not apply to this list")
    return stmt.order_by(*_ordering(filters.sort_by, sortable, created_at))


_RELATION_FIELDS = (
    "protocol_run_accession_id",
    "machine_accession_id",
    "resource_accession_id",
    "parent_accession_id",
    "workcell_accession_id",
)


def _ordering(sort_by: str | None, sortable: Mapping[str, Column], default: Column) -> list[Any]:
    if not sort_by:
        return [default.desc()]
    descending = sort_by.startswith("-")
    key = sort_by.lstrip("-+")
    column = sortable.get(key)
    if column is None:
        raise InvalidRequest(f"cannot sort by {key!r}", allowed=sorted(sortable), field="sort_by")
    return [column.desc() if descending else column.asc()]


async def fetch_page(
    session: AsyncSession,
    stmt: Select[*tuple[Any, ...]],
    filters: SearchFilters,
    *,
    scalars: bool = True,
) -> tuple[Sequence[Any], int]:
    """One page (entities, or row tuples with ``scalars=False``) and the total matching."""
    total = await session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery()))
    page = stmt.limit(filters.limit).offset(filters.offset)
    rows = (await session.scalars(page)).all() if scalars else (await session.execute(page)).all()
    return rows, int(total or 0)


def where_all(stmt: S, *conditions: ColumnElement[bool] | None) -> S:
    """Add the conditions that are not None."""
    for condition in conditions:
        if condition is not None:
            stmt = stmt.where(condition)
    return stmt
