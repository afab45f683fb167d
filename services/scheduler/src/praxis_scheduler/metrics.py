"""The scheduler's metrics (``praxis_runtime.metrics``): runs not yet ended by status and the
edges beating (set at each scrape), and runs ended (counted from what each commit hands the
outbox, so a run counts once it is recorded as ended)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import func, select

from praxis_contracts.common import TERMINAL_STATUSES, RunStatus
from praxis_contracts.runs import RunStatusChanged
from praxis_runtime.db import Database
from praxis_runtime.metrics import EDGES_LIVE, RUNS, RUNS_ENDED
from praxis_runtime.publisher import Outgoing
from praxis_scheduler.edges import EdgeBook
from praxis_scheduler.orm import RunRow

OPEN_STATUSES = [s for s in RunStatus if s not in TERMINAL_STATUSES]


def count_ended(messages: Sequence[Outgoing]) -> None:
    """An outbox observer: each terminal ``RunStatusChanged`` committed counts once."""
    for message in messages:
        if not message.subject.startswith(f"{RunStatusChanged.subject}."):
            continue
        status = RunStatus(json.loads(message.payload)["status"])
        if status.is_terminal:
            RUNS_ENDED.labels(status.value).inc()


class Gauges:
    def __init__(self, db: Database, edges: EdgeBook) -> None:
        self.db = db
        self.edges = edges
        self._workcells: set[str] = set()

    async def scrape(self) -> None:
        """Runs by open status (one query on the status index) and live edges by workcell."""
        stmt = (
            select(RunRow.status, func.count())
            .where(RunRow.status.in_([s.value for s in OPEN_STATUSES]))
            .group_by(RunRow.status)
        )
        async with self.db.transaction() as session:
            counts = dict((await session.execute(stmt)).tuples().all())
        for status in OPEN_STATUSES:
            RUNS.labels(status.value).set(counts.get(status.value, 0))
        live: dict[str, int] = {}
        for edge in self.edges.edges():
            live[edge.workcell] = live.get(edge.workcell, 0) + int(edge.live)
        for workcell in self._workcells | set(live):  # a workcell whose edges left shows 0
            EDGES_LIVE.labels(workcell).set(live.get(workcell, 0))
        self._workcells |= set(live)
