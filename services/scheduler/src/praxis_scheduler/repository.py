"""Where the scheduler keeps runs: PostgreSQL in service, a dict in service-layer tests.

The service layer sees runs only through ``RunRepository`` inside a unit of work
(``SchedulerUnitOfWork``): the SQL one shares the unit's transaction, so a run's rows and the
messages it emits commit together (see ``praxis_runtime.outbox``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from praxis_contracts.common import TERMINAL_STATUSES, RunStatus
from praxis_contracts.runs import RunStatusChanged
from praxis_runtime.db import Database
from praxis_runtime.outbox import (
    InMemoryUnitOfWork,
    OutboxRelay,
    SqlUnitOfWork,
    UnitOfWork,
    encode,
)
from praxis_scheduler.domain import can_transition
from praxis_scheduler.orm import CallRow, RunRow, StatusHistoryRow

_TERMINAL = [s.value for s in TERMINAL_STATUSES]


class RunRepository(Protocol):
    def add(self, row: RunRow) -> None: ...

    async def get(self, run_id: uuid.UUID, *, lock: bool = False) -> RunRow | None:
        """The run, locked for this unit of work with ``lock`` (changes to it serialise)."""
        ...

    def record(self, entry: StatusHistoryRow) -> None: ...

    async def active(self) -> list[RunRow]:
        """Every run that has not reached a terminal status (oldest first)."""
        ...

    async def last_call(self, run_id: uuid.UUID) -> str | None:
        """The function of the run's last recorded protocol-function call."""
        ...


class SchedulerUnitOfWork(UnitOfWork):
    """A unit of work with the runs repository it shares its transaction with."""

    @property
    def runs(self) -> RunRepository:
        raise NotImplementedError


class SqlRunRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, row: RunRow) -> None:
        self.session.add(row)

    async def get(self, run_id: uuid.UUID, *, lock: bool = False) -> RunRow | None:
        return await self.session.get(RunRow, run_id, with_for_update=lock)

    def record(self, entry: StatusHistoryRow) -> None:
        self.session.add(entry)

    async def active(self) -> list[RunRow]:
        stmt = select(RunRow).where(RunRow.status.not_in(_TERMINAL)).order_by(RunRow.created_at)
        return list((await self.session.scalars(stmt)).all())

    async def last_call(self, run_id: uuid.UUID) -> str | None:
        stmt = (
            select(CallRow.function)
            .where(CallRow.run_id == run_id)
            .order_by(CallRow.started_at.desc(), CallRow.sequence.desc())
            .limit(1)
        )
        return await self.session.scalar(stmt)


class SqlSchedulerUnitOfWork(SqlUnitOfWork, SchedulerUnitOfWork):
    @property
    def runs(self) -> RunRepository:
        return SqlRunRepository(self.session)


def sql_units(db: Database, relay: OutboxRelay) -> Callable[[], SchedulerUnitOfWork]:
    return lambda: SqlSchedulerUnitOfWork(db, relay)


PROGRESS_REASON = "reported by orchestrator"

ADVANCE = """
WITH run AS (
    SELECT accession_id, status, workcell_name, edge_instance FROM protocol_runs
    WHERE accession_id = $1 FOR UPDATE
), changed AS (
    UPDATE protocol_runs r SET status = $2, updated_at = $3,
        edge_instance = CASE WHEN run.status IN ('pending', 'preparing') THEN $5
                             ELSE r.edge_instance END,
        started_at = CASE WHEN $7 AND r.started_at IS NULL THEN $8 ELSE r.started_at END
    FROM run
    WHERE r.accession_id = run.accession_id AND run.status = ANY($9::text[])
      AND run.workcell_name = $4
      AND (run.edge_instance IS NULL OR run.edge_instance = $5
           OR ($6 AND run.status IN ('pending', 'preparing')))
    RETURNING run.status AS previous
), history AS (
    INSERT INTO run_status_history (run_id, status, previous, reason, at, actor)
    SELECT $1, $2, previous, $10, $3, NULL FROM changed
), announced AS (
    INSERT INTO outbox (subject, payload, headers)
    SELECT $11, c.payload, c.headers::jsonb
    FROM changed JOIN unnest($9::text[], $12::bytea[], $13::text[])
        AS c(previous, payload, headers) ON c.previous = changed.previous
    RETURNING id
)
SELECT (SELECT previous FROM changed) AS previous, (SELECT id FROM announced) AS outbox_id
"""


class SqlProgress:
    """An edge's progress report (preparing, running, paused, resumed) in one statement, for
    the usual case: believed and moving the run forward. It is ``RunService.on_progress``'s
    rule written as SQL, as a transaction through the ORM cost six round trips, the largest
    share of the scheduler's CPU per run (py-spy under ``make bench``):

    - the run is locked and read; it changes only if ``domain.can_transition`` allows the
      move from its status (``$9``: every status that may move to the reported one), and the
      report comes from its workcell and its edge process (``domain.refusal``: any process of
      the workcell before the run started);
    - the process is recorded while the run is pending or preparing; ``started_at`` once;
    - the history row and the ``RunStatusChanged`` (the one built for the status the run had:
      one per possible status is sent, the statement keeps the match) are written with it.

    Anything else (a report not believed, a move not allowed, an unknown run) changes nothing
    here and is left to the general path, which refuses or ignores it.
    ``test_scheduler_integration`` runs every case both ways and compares what they did."""

    def __init__(self, db: Database, relay: OutboxRelay) -> None:
        self.relay = relay
        self._conn = db.kept_connection()

    async def advance(
        self,
        run_id: uuid.UUID,
        status: RunStatus,
        at: datetime,
        workcell: str,
        edge: str,
        now: datetime,
    ) -> bool:
        """Apply the report if believed and allowed; False if nothing was changed."""
        sources = [s for s in RunStatus if can_transition(s, status)]
        announcements = {
            s: encode(
                RunStatusChanged(
                    run_id=run_id, status=status, previous=s, reason=PROGRESS_REASON, at=now
                )
            )
            for s in sources
        }
        subject = next(iter(announcements.values())).subject if announcements else ""
        rows = await self._conn.fetch(
            ADVANCE,
            run_id,
            status.value,
            now,
            workcell,
            edge,
            status in (RunStatus.PREPARING, RunStatus.RUNNING),
            status == RunStatus.RUNNING,
            at,
            [s.value for s in sources],
            PROGRESS_REASON,
            subject,
            [m.payload for m in announcements.values()],
            [json.dumps(m.headers or {}) for m in announcements.values()],
        )
        previous, outbox_id = rows[0]["previous"], rows[0]["outbox_id"]
        if previous is None:
            return False
        self.relay.committed([(outbox_id, announcements[RunStatus(previous)])])
        return True


class InMemoryRunRepository:
    """Runs in a dict; the history in a list. Changes are not rolled back on an exception."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, RunRow] = {}
        self.history: list[StatusHistoryRow] = []
        self.calls: dict[uuid.UUID, str] = {}

    def add(self, row: RunRow) -> None:
        self.rows[row.accession_id] = row

    async def get(self, run_id: uuid.UUID, *, lock: bool = False) -> RunRow | None:
        return self.rows.get(run_id)

    def record(self, entry: StatusHistoryRow) -> None:
        self.history.append(entry)

    async def active(self) -> list[RunRow]:
        rows = [r for r in self.rows.values() if r.status not in _TERMINAL]
        return sorted(rows, key=lambda r: r.created_at)

    async def last_call(self, run_id: uuid.UUID) -> str | None:
        return self.calls.get(run_id)


class InMemorySchedulerUnitOfWork(InMemoryUnitOfWork, SchedulerUnitOfWork):
    """One shared in-memory repository; every unit of work commits into ``published``."""

    def __init__(self, runs: InMemoryRunRepository | None = None) -> None:
        super().__init__()
        self.store = runs or InMemoryRunRepository()

    @property
    def runs(self) -> RunRepository:
        return self.store

    def __call__(self) -> InMemorySchedulerUnitOfWork:
        return self  # a factory of itself: what the service layer asks for
