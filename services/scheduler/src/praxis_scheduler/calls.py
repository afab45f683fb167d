"""What an edge reports a run did, recorded from its events: the protocol-function call log
(``FunctionCallRecorded``) and the run's output lines (``RunLogged``). Only the edge that runs
the run is believed (``domain.refusal``).

Each report is one statement on a kept connection (``Database.kept_connection``): it reads the
run and writes the report only if the run's workcell and edge process are the reporter's
(``BELIEVED``, the SQL form of ``domain.refusal`` for a report), in one snapshot; the run it
read is returned, and ``refusal`` says why a report was not believed. Every call of every run
comes this way (two events a call), and as a transaction (begin, read, write, commit) through
the ORM it was a large share of the scheduler's CPU under load (the README's benchmarks);
``test_call_log`` checks that the two forms of the rule agree on every case.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import select

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
from praxis_runtime.db import Database, KeptConnection
from praxis_runtime.query import apply_filters, fetch_page, where_all
from praxis_scheduler.domain import refusal
from praxis_scheduler.orm import CallRow, LogRow
from praxis_scheduler.queries import within_budget

_SORTABLE: dict[str, Any] = {"sequence": CallRow.sequence, "started_at": CallRow.started_at}

RUN = (
    "run AS (SELECT status, workcell_name, edge_instance FROM protocol_runs "
    "WHERE accession_id = $1)"
)
BELIEVED = "run.workcell_name = $2 AND (run.edge_instance IS NULL OR run.edge_instance = $3)"
"""``domain.refusal(...) is None`` for a report from workcell $2, process $3 (the run, $1)."""

RECORD_CALL = f"""
WITH {RUN}, recorded AS (
    INSERT INTO function_calls (call_id, run_id, parent_call_id, sequence, function, version,
                                arguments, status, started_at, finished_at, error, result)
    SELECT $4, $1, $5, $6, $7, $8, $9::jsonb, $10, $11, $12, $13, $14::jsonb FROM run
    WHERE {BELIEVED}
    ON CONFLICT (call_id) DO UPDATE SET status = EXCLUDED.status,
        finished_at = EXCLUDED.finished_at, error = EXCLUDED.error, result = EXCLUDED.result
    WHERE EXCLUDED.status <> 'running'
)
SELECT status, workcell_name, edge_instance FROM run
"""
"""Upsert one call if believed; a late 'running' never overwrites a finished record."""

RECORD_LINES = f"""
WITH {RUN}, recorded AS (
    INSERT INTO run_logs (run_id, seq, at, source, level, level_no, logger, message)
    SELECT $1, line.* FROM run, unnest($4::int[], $5::timestamptz[], $6::text[], $7::text[],
                                       $8::int[], $9::text[], $10::text[])
        AS line(seq, at, source, level, level_no, logger, message)
    WHERE {BELIEVED}
    ON CONFLICT DO NOTHING
)
SELECT status, workcell_name, edge_instance FROM run
"""
"""Insert a batch of lines if believed; lines stored already are left as they are."""


class CallLog:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._conn = db.kept_connection()

    async def record(self, event: FunctionCallRecorded) -> str | None:
        """Record one call (one statement); a call from an edge that does not run the run is
        not recorded: why (``domain.refusal``), or None (also for a run it does not know)."""
        call = event.model_dump(mode="json")
        rows = await self._conn.fetch(
            RECORD_CALL,
            event.run_id,
            event.workcell,
            event.edge_instance,
            event.call_id,
            event.parent_call_id,
            event.sequence,
            event.function,
            event.version,
            json.dumps(call["arguments"]),
            event.status,
            event.started_at,
            event.finished_at,
            event.error,
            None if call["result"] is None else json.dumps(call["result"]),  # as the ORM did
        )
        return _why_not(rows, event)

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


def _why_not(rows: list[Any], event: FunctionCallRecorded | RunLogged) -> str | None:
    """Why the report was not believed (``domain.refusal`` of the run the statement read), or
    None: believed, or about a run this scheduler does not know (dropped)."""
    if not rows:
        return None
    run = rows[0]
    return refusal(
        RunStatus(run["status"]),
        run["workcell_name"],
        run["edge_instance"],
        event.workcell,
        event.edge_instance,
    )


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
        self._conn: KeptConnection = db.kept_connection()

    async def record(self, event: RunLogged) -> str | None:
        """Store the batch (one statement); why it is not believed (and not stored), or None."""
        lines = event.lines
        rows = await self._conn.fetch(
            RECORD_LINES,
            event.run_id,
            event.workcell,
            event.edge_instance,
            [line.seq for line in lines],
            [line.at for line in lines],
            [line.source for line in lines],
            [line.level for line in lines],
            [LEVELS.get(line.level.upper(), 20) for line in lines],
            [line.logger for line in lines],
            [line.message for line in lines],
        )
        return _why_not(rows, event)

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
