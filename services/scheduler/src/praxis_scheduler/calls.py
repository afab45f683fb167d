"""What an edge reports a run did, recorded from its events: the protocol-function call log
(``FunctionCallRecorded``) and the run's output lines (``RunLogged``). Only the edge that runs
the run is believed (``domain.refusal``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Executable, select
from sqlalchemy.dialects.postgresql import insert

from praxis_contracts.common import RunStatus
from praxis_contracts.runs import (
    FunctionCall,
    FunctionCallPage,
    FunctionCallRecorded,
    ListRunCalls,
    ListRunLogs,
    LogLine,
    RunLogged,
    RunLogPage,
)
from praxis_runtime.db import Database
from praxis_runtime.query import apply_filters, fetch_page, where_all
from praxis_scheduler.domain import refusal
from praxis_scheduler.orm import CallRow, LogRow, RunRow
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
        return await _record_if_believed(self.db, event, stmt)

    async def list(self, query: ListRunCalls) -> FunctionCallPage:
        stmt = where_all(
            select(CallRow).where(CallRow.run_id == query.run_id),
            CallRow.function == query.function if query.function else None,
            CallRow.sequence == query.sequence if query.sequence is not None else None,
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


async def _record_if_believed(
    db: Database, event: FunctionCallRecorded | RunLogged, stmt: Executable
) -> str | None:
    """Execute ``stmt`` (the report's upsert) if the edge that sent ``event`` runs the run;
    why not (``domain.refusal``) otherwise. A report of a run this scheduler does not know is
    dropped."""
    async with db.transaction() as session:
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


def _call(row: CallRow) -> FunctionCall:
    return FunctionCall(
        call_id=row.call_id,
        run_id=row.run_id,
        parent_call_id=row.parent_call_id,
        sequence=row.sequence,
        function=row.function,
        version=row.version,
        arguments=row.arguments,
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        error=row.error,
        result=row.result,
    )


LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


class RunLogs:
    """Each run's output lines, in order; a batch delivered twice is stored once."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, event: RunLogged) -> str | None:
        """Store the batch; why it is not believed (and not stored), or None."""
        rows = [
            {
                "run_id": event.run_id,
                "seq": line.seq,
                "at": line.at,
                "source": line.source,
                "level": line.level,
                "level_no": LEVELS.get(line.level.upper(), 20),
                "logger": line.logger,
                "message": line.message,
            }
            for line in event.lines
        ]
        return await _record_if_believed(
            self.db, event, insert(LogRow).values(rows).on_conflict_do_nothing()
        )

    async def list(self, query: ListRunLogs) -> RunLogPage:
        stmt = where_all(
            select(LogRow).where(LogRow.run_id == query.run_id),
            LogRow.source == query.source if query.source else None,
            LogRow.level_no >= LEVELS[query.level] if query.level else None,
        )
        stmt = apply_filters(
            stmt,
            query.filters.model_copy(update={"sort_by": query.filters.sort_by or "seq"}),
            created_at=LogRow.at,
            sortable={"seq": LogRow.seq, "at": LogRow.at},
        )
        async with self.db.transaction() as session:
            rows, total = await fetch_page(session, stmt, query.filters)
            items = within_budget([_line(r) for r in rows])
        f = query.filters
        return RunLogPage(items=items, total=total, limit=f.limit, offset=f.offset)


def _line(row: LogRow) -> LogLine:
    return LogLine(
        seq=row.seq,
        at=row.at,
        source=row.source,
        level=row.level,
        logger=row.logger,
        message=row.message,
    )
