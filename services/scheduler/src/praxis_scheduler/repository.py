"""Where the scheduler keeps runs: PostgreSQL in service, a dict in service-layer tests.

The service layer sees runs only through ``RunRepository`` inside a unit of work
(``SchedulerUnitOfWork``): the SQL one shares the unit's transaction, so a run's rows and the
messages it emits commit together (see ``praxis_runtime.outbox``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from praxis_contracts.common import TERMINAL_STATUSES
from praxis_runtime.db import Database
from praxis_runtime.outbox import (
    InMemoryUnitOfWork,
    OutboxRelay,
    SqlUnitOfWork,
    UnitOfWork,
)
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
