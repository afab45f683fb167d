"""The scheduler's metrics (``praxis_runtime.metrics``): runs not yet ended by status and the
edges beating (set at each scrape); runs ended and how long runs and their phases took (from
the status changes each commit hands the outbox, so a change counts once it is recorded)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, text

from praxis_contracts.common import TERMINAL_STATUSES, RunStatus
from praxis_contracts.runs import RunStatusChanged
from praxis_runtime.db import Database
from praxis_runtime.metrics import (
    EDGES_LIVE,
    RUN_PHASE_SECONDS,
    RUN_SECONDS,
    RUNS,
    RUNS_ENDED,
)
from praxis_runtime.publisher import Outgoing
from praxis_scheduler.edges import EdgeBook
from praxis_scheduler.orm import SCHEMA, RunRow

OPEN_STATUSES = [s for s in RunStatus if s not in TERMINAL_STATUSES]
_RUNS = f"{SCHEMA}.{RunRow.__tablename__}"
_PROTOCOLS = text(
    f"""
    WITH RECURSIVE p(name) AS (
        SELECT min(protocol_name) FROM {_RUNS}
        UNION ALL
        SELECT (SELECT min(protocol_name) FROM {_RUNS} WHERE protocol_name > p.name)
        FROM p WHERE p.name IS NOT NULL
    )
    SELECT name FROM p WHERE name IS NOT NULL
    """
)
"""Every protocol any run was of, a step along the protocol index each (not a scan of the
runs): each has a series for every open status, 0 when none."""


class Durations:
    """An outbox observer of committed ``RunStatusChanged``: each terminal one counts a run
    ended; each change closes the phase the run was in (``praxis_run_phase_seconds``) and an
    end its whole time (``praxis_run_seconds``), timed from the changes this process saw. A
    phase that began before this process started is not timed (nor a run submitted before)."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[datetime, datetime]] = {}  # run -> (submitted, phase began)

    def __call__(self, messages: Sequence[Outgoing]) -> None:
        for message in messages:
            if message.subject.startswith(f"{RunStatusChanged.subject}."):
                self.observe(RunStatusChanged.model_validate_json(message.payload))

    def observe(self, change: RunStatusChanged) -> None:
        run = str(change.run_id)
        known = self._open.pop(run, None)
        if known is not None and change.previous is not None:
            began = known[1]
            RUN_PHASE_SECONDS.labels(change.previous.value).observe(
                max((change.at - began).total_seconds(), 0.0)
            )
        elif change.previous is None:  # submitted now
            known = (change.at, change.at)
        if change.status.is_terminal:
            RUNS_ENDED.labels(change.status.value).inc()
            if known is not None:
                RUN_SECONDS.labels(change.status.value).observe(
                    max((change.at - known[0]).total_seconds(), 0.0)
                )
        elif known is not None:
            self._open[run] = (known[0], change.at)


class Gauges:
    def __init__(self, db: Database, edges: EdgeBook) -> None:
        self.db = db
        self.edges = edges
        self._workcells: set[str] = set()

    async def scrape(self) -> None:
        """Runs by open status and protocol (one query on the status index) and live edges by
        workcell. Every open status has a series for each protocol seen (0 when none)."""
        stmt = (
            select(RunRow.status, RunRow.protocol_name, func.count())
            .where(RunRow.status.in_([s.value for s in OPEN_STATUSES]))
            .group_by(RunRow.status, RunRow.protocol_name)
        )
        async with self.db.transaction() as session:
            rows = (await session.execute(stmt)).tuples().all()
            protocols = (await session.execute(_PROTOCOLS)).scalars().all()
        counts = {(status, protocol): n for status, protocol, n in rows}
        for status in OPEN_STATUSES:
            for protocol in {*protocols, *(p for _, p in counts)}:
                RUNS.labels(status.value, protocol).set(counts.get((status.value, protocol), 0))
        live: dict[str, int] = {}
        for edge in self.edges.edges():
            live[edge.workcell] = live.get(edge.workcell, 0) + int(edge.live)
        for workcell in self._workcells | set(live):  # a workcell whose edges left shows 0
            EDGES_LIVE.labels(workcell).set(live.get(workcell, 0))
        self._workcells |= set(live)
