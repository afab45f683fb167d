"""The protocol-function call log of each run (recorded from orchestrator events)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert

from praxis_contracts.common import RunStatus
from praxis_contracts.runs import FunctionCall, FunctionCallPage, FunctionCallRecorded, ListRunCalls
from praxis_runtime.db import Database
from praxis_runtime.query import apply_filters, fetch_page, where_all
from praxis_scheduler.domain import refusal
from praxis_scheduler.orm import CallRow, RunRow
from praxis_scheduler.queries import within_budget

_SORTABLE: dict[str, Any] = {"sequence": CallRow.sequence, "started_at": CallRow.started_at}


class CallLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, event: FunctionCallRecorded) -> str | None:
        """Upsert one call; a late 'running' never overwrites a finished record. A call from
        an edge that does not run the run is not recorded: why (``domain.refusal``), or None."""
        values = event.model_dump(exclude={"at", "workcell", "edge_instance"})
        stmt = insert(CallRow).values(**values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[CallRow.call_id],
            set_={
                "status": stmt.excluded.status,
                "finished_at": stmt.excluded.finished_at,
                "error": stmt.excluded.error,
                "result": stmt.excluded.result,
            },
            where=stmt.excluded.status != "running",
        )
        async with self.db.transaction() as session:
            run = await session.get(RunRow, event.run_id)
            if run is None:
                return None
            why = refusal(
                RunStatus(run.status),
                run.workcell_name,
                run.edge_instance,
                event.workcell,
                event.edge_instance,
            )
            if why is None:
                await session.execute(stmt)
            return why

    async def list(self, query: ListRunCalls) -> FunctionCallPage:
        stmt = where_all(
            select(CallRow).where(CallRow.run_id == query.run_id),
            CallRow.function == query.function if query.function else None,
        )
        stmt = apply_filters(
            stmt,
            query.filters.model_copy(update={"sort_by": query.filters.sort_by or "sequence"}),
            created_at=CallRow.started_at,
            sortable=_SORTABLE,
        )
        async with self.db.transaction() as session:
            rows, total = await fetch_page(session, stmt, query.filters)
            items = within_budget([_call(r) for r in rows])
        f = query.filters
        return FunctionCallPage(items=items, total=total, limit=f.limit, offset=f.offset)


def _call(row: CallRow) -> FunctionCall:
    return FunctionCall(
        call_id=row.call_id,
        run_id=row.run_id,
        parent_call_id=row.parent_call_id,
        sequence=row.sequence,
        function=row.function,
        version=row.version,
        arguments=row.arguments,
        status=row.status,  # type: ignore[arg-type]
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
        result=row.result,
    )
