"""The read side: run lists straight from PostgreSQL (no unit of work, nothing emitted)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from praxis_contracts.runs import ListRuns, RunPage
from praxis_runtime.db import Database
from praxis_runtime.query import apply_filters, fetch_page, where_all
from praxis_scheduler.orm import RunRow
from praxis_scheduler.service import run_view

_SORTABLE: dict[str, Any] = {
    "created_at": RunRow.created_at,
    "updated_at": RunRow.updated_at,
    "status": RunRow.status,
    "protocol_name": RunRow.protocol_name,
    "priority": RunRow.priority,
}


class RunQueries:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self, query: ListRuns) -> RunPage:
        stmt = where_all(
            select(RunRow),
            RunRow.status.in_([s.value for s in query.status]) if query.status else None,
            RunRow.protocol_name == query.protocol_name if query.protocol_name else None,
        )
        stmt = apply_filters(
            stmt,
            query.filters,
            created_at=RunRow.created_at,
            sortable=_SORTABLE,
            relations={
                "protocol_run_accession_id": RunRow.accession_id,
                "workcell_accession_id": RunRow.workcell_id,
            },
        )
        async with self.db.transaction() as session:
            rows, total = await fetch_page(session, stmt, query.filters)
            items = [run_view(r) for r in rows]
        f = query.filters
        return RunPage(items=items, total=total, limit=f.limit, offset=f.offset)
