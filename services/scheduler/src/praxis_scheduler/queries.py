"""The read side: run lists straight from PostgreSQL (no unit of work, nothing emitted).

A page is one NATS message (1 MB at most), so lists return ``RunSummary`` rows built from the
columns they need: a run's result, final state, asset states (tens of KB each) and traceback are
never read for a list, let alone sent.
"""

from __future__ import annotations

from typing import Any, TypeVar
from uuid import UUID

from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, String, Text, case, cast, func, select

from praxis_contracts.common import RunStatus, SearchFilters
from praxis_contracts.runs import (
    SUMMARY_ERROR_CHARS,
    SUMMARY_PARAMETERS_BYTES,
    ListRuns,
    RunErrorSummary,
    RunPage,
    RunSummary,
)
from praxis_runtime.db import Database
from praxis_runtime.query import apply_filters, fetch_page, where_all
from praxis_scheduler.orm import RunRow

_SORTABLE: dict[str, Any] = {
    "created_at": RunRow.created_at,
    "updated_at": RunRow.updated_at,
    "status": RunRow.status,
    "protocol_name": RunRow.protocol_name,
    "priority": RunRow.priority,
}

# Filters on the assets a run was bound to: matched inside ``bindings`` (JSONB containment,
# served by the GIN index of migration 0005), not by a column of their own.
_ASSET_FILTERS = ("resource_accession_id", "machine_accession_id")

# Room for a page's items: half of NATS's default 1 MB max payload, leaving the rest to the
# envelope and headers and to servers configured lower.
PAGE_BUDGET_BYTES = 512 * 1024

_SUMMARY_COLUMNS: tuple[Any, ...] = (
    RunRow.accession_id,
    RunRow.protocol_name,
    RunRow.protocol_version,
    RunRow.status,
    RunRow.priority,
    RunRow.workcell,
    RunRow.workcell_name,
    RunRow.waiting_for,
    RunRow.waiting_since,
    RunRow.not_before,
    RunRow.deadline,
    RunRow.bindings,  # one small object per asset requirement
    case(
        (
            func.octet_length(cast(RunRow.parameters, Text)) <= SUMMARY_PARAMETERS_BYTES,
            RunRow.parameters,
        ),
        else_=None,
    ).label("parameters"),
    RunRow.error["type"].astext.label("error_type"),
    RunRow.error["code"].astext.label("error_code"),
    func.left(RunRow.error["message"].astext, SUMMARY_ERROR_CHARS, type_=String).label(
        "error_message"
    ),
    RunRow.retry_of,
    RunRow.retried_by,
    RunRow.created_at,
    RunRow.updated_at,
    RunRow.started_at,
    RunRow.finished_at,
)


class RunQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, query: ListRuns) -> RunPage:
        """One page of run summaries matching the filters, and how many match in all."""
        stmt = where_all(
            select(*_SUMMARY_COLUMNS),
            RunRow.status.in_([s.value for s in query.status]) if query.status else None,
            RunRow.protocol_name == query.protocol_name if query.protocol_name else None,
            *(_bound_to(asset_id) for asset_id in _asset_ids(query.filters)),
        )
        stmt = _with_standard_filters(stmt, query.filters)
        async with self.db.transaction() as session:
            rows, total = await fetch_page(session, stmt, query.filters, scalars=False)
        items = within_budget([run_summary(row._mapping) for row in rows])
        f = query.filters
        return RunPage(items=items, total=total, limit=f.limit, offset=f.offset)


Item = TypeVar("Item", bound=BaseModel)


def within_budget(items: list[Item], budget: int = PAGE_BUDGET_BYTES) -> list[Item]:
    """The leading items whose JSON fits in ``budget`` bytes (at least one).

    Each item's fields are bounded (a run summary's, a call's arguments and result), but a
    thousand of them could still pass NATS's 1 MB: the page is cut short instead, and the
    client continues at ``offset + len(items)`` (``total`` says how many remain).
    """
    used = 0
    for n, item in enumerate(items):
        used += len(item.model_dump_json()) + 1  # the comma between items
        if used > budget and n > 0:
            return items[:n]
    return items


def _asset_ids(filters: SearchFilters) -> list[UUID]:
    return [value for f in _ASSET_FILTERS if (value := getattr(filters, f)) is not None]


def _bound_to(asset_id: UUID) -> ColumnElement[bool]:
    """Runs whose bindings name ``asset_id`` (``bindings @> '[{"asset_id": …}]'``)."""
    return RunRow.bindings.contains([{"asset_id": str(asset_id)}])


def _with_standard_filters(stmt: Select[Any], filters: SearchFilters) -> Select[Any]:
    """Dates, sorting and run/workcell ids through the shared builder (the asset filters were
    applied by ``_bound_to``: the builder would refuse them), then a tie-breaker."""
    ordered = apply_filters(
        stmt,
        filters.model_copy(update=dict.fromkeys(_ASSET_FILTERS)),
        created_at=RunRow.created_at,
        sortable=_SORTABLE,
        relations={
            "protocol_run_accession_id": RunRow.accession_id,
            "workcell_accession_id": RunRow.workcell_id,
        },
    )
    # A unique last key: with ties (priority, status…) PostgreSQL may order them differently
    # from one query to the next, and offset paging would then repeat some runs and skip others.
    return ordered.order_by(RunRow.accession_id)


def run_summary(row: Any) -> RunSummary:
    """A ``RunSummary`` from a row of ``_SUMMARY_COLUMNS``."""
    error = (
        RunErrorSummary(
            type=row["error_type"], code=row["error_code"], message=row["error_message"] or ""
        )
        if row["error_type"] is not None
        else None
    )
    return RunSummary(
        accession_id=row["accession_id"],
        protocol_name=row["protocol_name"],
        protocol_version=row["protocol_version"],
        status=RunStatus(row["status"]),
        priority=row["priority"],
        workcell=row["workcell"],
        workcell_name=row["workcell_name"],
        waiting_for=row["waiting_for"],
        waiting_since=row["waiting_since"],
        not_before=row["not_before"],
        deadline=row["deadline"],
        assets={b["requirement"]: b["asset_name"] for b in row["bindings"] or []},
        parameters=row["parameters"],
        error=error,
        retry_of=row["retry_of"],
        retried_by=row["retried_by"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )
