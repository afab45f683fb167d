"""The run's usual changes in one statement each: a submission, a grant, an edge's progress
report and a run's end (the README's "The run's usual changes in one statement").

Each statement locks and reads the run, changes it only where the domain's rules allow
(``domain.refusal``, ``domain.can_transition``, written as its conditions), and writes the
history row and the outbox rows of its messages, atomically; the relay publishes them as it does
any commit. What a statement does not decide goes through the unit of work
(``RunService``). ``test_progress_statement`` runs every case both ways.
"""

from __future__ import annotations

import functools
import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Column
from sqlalchemy.dialects.postgresql import JSONB

from praxis_contracts.assets import AssetsReserved, HoldAssets, ReleaseAssets, ReserveAssets
from praxis_contracts.common import RunStatus
from praxis_contracts.protocols import ProtocolDefinition
from praxis_contracts.runs import ExecuteRun, RunFinished, RunStatusChanged
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay, encode
from praxis_runtime.publisher import Outgoing
from praxis_scheduler.domain import RESERVED_REASON, can_transition, finished_reason, refusal
from praxis_scheduler.orm import RunRow

PROGRESS_REASON = "reported by orchestrator"


@functools.cache
def _sources(status: RunStatus) -> list[RunStatus]:
    """Every status a run may move to ``status`` from (``domain.can_transition``)."""
    return [s for s in RunStatus if can_transition(s, status)]


BELIEVED = """workcell_name = $4
      AND (edge_instance IS NULL OR edge_instance = $5
           OR ($6 AND status IN ('pending', 'preparing')))"""
"""``domain.refusal(...) is None`` for a report from workcell $4, process $5 ($6: the report
is of preparing or running, which any process of the workcell may make before the run started)."""

ADVANCE = f"""
WITH run AS (
    SELECT accession_id, status, workcell_name, edge_instance, started_at IS NULL AS unstarted
    FROM protocol_runs WHERE accession_id = $1 FOR UPDATE
), believed AS (
    SELECT *, status = ANY($9::text[]) AS allowed FROM run WHERE {BELIEVED}
), changed AS (
    UPDATE protocol_runs r SET
        status = CASE WHEN b.allowed THEN $2 ELSE r.status END,
        updated_at = CASE WHEN b.allowed THEN $3 ELSE r.updated_at END,
        edge_instance = CASE WHEN b.status IN ('pending', 'preparing') THEN $5
                             ELSE r.edge_instance END,
        started_at = CASE WHEN $7 AND r.started_at IS NULL THEN $8 ELSE r.started_at END
    FROM believed b
    WHERE r.accession_id = b.accession_id
      AND (b.allowed OR ($7 AND b.unstarted)
           OR (b.status IN ('pending', 'preparing') AND b.edge_instance IS DISTINCT FROM $5))
    RETURNING b.status AS previous, b.allowed
), history AS (
    INSERT INTO run_status_history (run_id, status, previous, reason, at, actor)
    SELECT $1, $2, previous, $10, $3, NULL FROM changed WHERE allowed
), announced AS (
    INSERT INTO outbox (subject, payload, headers)
    SELECT $11, c.payload, c.headers::jsonb
    FROM changed JOIN unnest($9::text[], $12::bytea[], $13::text[])
        AS c(previous, payload, headers) ON c.previous = changed.previous
    WHERE changed.allowed
    RETURNING id
)
SELECT run.status, run.workcell_name, run.edge_instance,
       (SELECT previous FROM changed WHERE allowed) AS previous,
       (SELECT id FROM announced) AS outbox_id
FROM run
"""


class RunStatements:
    """The run's usual changes in one statement each (the README's "The run's usual changes in
    one statement", with their cost): a submission (``create``), a grant (``reserve``), the
    edge's progress (``advance``) and the run's end (``finish``). For progress (preparing,
    running, paused, resumed) it is ``RunService.on_progress``'s rule written as SQL. The run
    is locked and read, and if the report is believed (``BELIEVED``:
    ``domain.refusal``, from the run's workcell and its edge process, any process of the
    workcell before the run started):

    - the move to the reported status is made if ``domain.can_transition`` allows it from the
      run's status (``$9``: every status that may move there), with its history row and its
      ``RunStatusChanged`` (one is built per possible status; the statement keeps the match);
    - the process is recorded while the run is pending or preparing, and ``started_at`` once,
      as the general path does whether or not the move is allowed (a ``RunStarted`` overtaken
      by the run's end still records when it started);
    - nothing else: a report the state machine ignores writes nothing.

    A report not believed is left to the general path (``False``), which records the refusal.
    ``finish`` is ``RunService.on_finished`` the same way. ``test_progress_statement`` runs every
    case both ways and compares what they did, down to the columns' JSON."""

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
        """Apply the report if believed (True), else change nothing (False)."""
        sources = _sources(status)
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
        if not rows:
            return True  # a run this scheduler does not know: nothing to do
        run = rows[0]
        current = RunStatus(run["status"])
        if refusal(current, run["workcell_name"], run["edge_instance"], workcell, edge, status):
            return False  # not believed: the general path records the refusal
        if run["previous"] is not None:
            self.relay.committed([(run["outbox_id"], announcements[RunStatus(run["previous"])])])
        return True

    async def reserve(self, event: AssetsReserved, now: datetime) -> bool:
        """A grant for a queued run, as ``RunService.on_reserved`` applies it, in two round
        trips: what its ``ExecuteRun`` carries is read (it never changes after submission), then
        the run moves to pending, if still queued, with its bindings, history row,
        ``RunStatusChanged`` and ``ExecuteRun`` (True). Any other case (a repeated grant, a run
        that ended or is not ours) is the general path's (False)."""
        found = await self._conn.fetch(READ_QUEUED, event.run_id)
        if not found or found[0]["status"] != RunStatus.QUEUED:
            return False
        run = found[0]
        execute = ExecuteRun(
            run_id=event.run_id,
            workcell_id=event.workcell_id,
            workcell_name=event.workcell_name,
            definition=ProtocolDefinition.model_validate_json(run["definition"]),
            parameters=json.loads(run["parameters"]),
            bindings=event.bindings,
            initial_state=json.loads(run["initial_state"]),
            on_failure="rollback" if run["on_failure"] == "rollback" else "keep",
        )
        messages = [
            encode(
                RunStatusChanged(
                    run_id=event.run_id,
                    status=RunStatus.PENDING,
                    previous=RunStatus.QUEUED,
                    reason=RESERVED_REASON,
                    at=now,
                )
            ),
            encode(execute, msg_id=f"execute:{event.run_id}"),
        ]
        rows = await self._conn.fetch(
            RESERVE,
            event.run_id,
            now,
            event.workcell_id,
            event.workcell_name,
            json.dumps([b.model_dump(mode="json") for b in event.bindings]),
            RESERVED_REASON,
            [m.subject for m in messages],
            [m.payload for m in messages],
            [json.dumps(m.headers or {}) for m in messages],
        )
        if rows[0]["previous"] is None:
            return False  # no longer queued: the general path decides
        self.relay.committed(list(zip(rows[0]["outbox_ids"], messages, strict=True)))
        return True

    async def create(
        self, row: RunRow, reason: str, actor: str | None, now: datetime, reserve: ReserveAssets
    ) -> None:
        """A new run (not a retry) as ``RunService.create`` writes it: its row, its history row,
        its ``RunStatusChanged`` and ``ReserveAssets``, in one statement."""
        messages = [
            encode(
                RunStatusChanged(
                    run_id=row.accession_id,
                    status=RunStatus.QUEUED,
                    previous=None,
                    reason=reason,
                    at=now,
                    actor=actor,
                )
            ),
            encode(reserve, msg_id=f"reserve:{row.accession_id}"),
        ]
        rows = await self._conn.fetch(
            CREATE,
            *(_column_value(row, column) for column in RUN_COLUMNS),
            reason,
            now,
            actor,
            [m.subject for m in messages],
            [m.payload for m in messages],
            [json.dumps(m.headers or {}) for m in messages],
        )
        self.relay.committed(list(zip(rows[0]["outbox_ids"], messages, strict=True)))

    async def finish(self, event: RunFinished, now: datetime) -> bool:
        """The edge's ``RunFinished`` as ``RunService.on_finished`` applies it: if believed, the
        run ends (when the state machine allows it) with its result, its history row, its
        ``RunStatusChanged`` and ``ReleaseAssets`` (``HoldAssets`` for a run that needs an
        operator), in one statement (True); a report not believed changes nothing (False)."""
        status = RunStatus(event.outcome)
        error = event.error.message if event.error else None
        reason = finished_reason(status, error, event.cleanup)
        held = status == RunStatus.REQUIRES_INTERVENTION
        sources = _sources(status)
        announcements = {
            s: encode(
                RunStatusChanged(
                    run_id=event.run_id, status=status, previous=s, reason=reason, at=now
                )
            )
            for s in sources
        }
        if held:
            command = encode(
                HoldAssets(run_id=event.run_id, reason=reason), msg_id=f"hold:{event.run_id}"
            )
        else:
            release = ReleaseAssets(
                run_id=event.run_id,
                reason=f"run {status}",
                workcell=event.workcell,
                snapshot_id=event.snapshot_id,
            )
            command = encode(release, msg_id=f"release:{event.run_id}")
        messages: list[tuple[str | None, Outgoing]] = [
            *((s.value, m) for s, m in announcements.items()),
            (None, command),
        ]
        dumped = event.model_dump(mode="json")
        rows = await self._conn.fetch(
            FINISH,
            event.run_id,
            status.value,
            now,
            event.workcell,
            event.edge_instance,
            False,  # a run's end is not a report any process of the workcell may make
            [s.value for s in sources],
            _json(dumped["result"]),
            _json(dumped["error"]),
            _json(dumped["final_state"]),
            _json(dumped["asset_states"]),
            not held,
            event.at,
            reason,
            [previous for previous, _ in messages],
            [m.subject for _, m in messages],
            [m.payload for _, m in messages],
            [json.dumps(m.headers or {}) for _, m in messages],
        )
        if not rows:
            return True  # a run this scheduler does not know: nothing to do
        run = rows[0]
        current = RunStatus(run["status"])
        if refusal(
            current,
            run["workcell_name"],
            run["edge_instance"],
            event.workcell,
            event.edge_instance,
            status,
        ):
            return False  # not believed: the general path records the refusal
        if run["previous"] is not None:
            changed = announcements[RunStatus(run["previous"])]
            self.relay.committed(list(zip(run["outbox_ids"], [changed, command], strict=True)))
        return True


FINISH = f"""
WITH run AS (
    SELECT accession_id, status, workcell_name, edge_instance
    FROM protocol_runs WHERE accession_id = $1 FOR UPDATE
), believed AS (
    SELECT * FROM run WHERE {BELIEVED} AND status = ANY($7::text[])
), changed AS (
    UPDATE protocol_runs r SET status = $2, updated_at = $3, result = $8::jsonb,
        error = $9::jsonb, final_state = $10::jsonb, asset_states = $11::jsonb,
        finished_at = CASE WHEN $12 THEN $13 ELSE r.finished_at END
    FROM believed b WHERE r.accession_id = b.accession_id
    RETURNING b.status AS previous
), history AS (
    INSERT INTO run_status_history (run_id, status, previous, reason, at, actor)
    SELECT $1, $2, previous, $14, $3, NULL FROM changed
), announced AS (
    INSERT INTO outbox (subject, payload, headers)
    SELECT m.subject, m.payload, m.headers::jsonb
    FROM changed, unnest($15::text[], $16::text[], $17::bytea[], $18::text[])
        WITH ORDINALITY AS m(previous, subject, payload, headers, n)
    WHERE m.previous = changed.previous OR m.previous IS NULL
    ORDER BY m.n
    RETURNING id
)
SELECT run.status, run.workcell_name, run.edge_instance,
       (SELECT previous FROM changed) AS previous,
       (SELECT array_agg(id ORDER BY id) FROM announced) AS outbox_ids
FROM run
"""
"""A run's end in one statement: the run (if believed and allowed: ``changed``), its history row,
its ``RunStatusChanged`` (the one for the status it had) and the command for its leases."""


def _json(value: object) -> str | None:
    """A JSON column's value as the ORM writes it: None is SQL NULL, not JSON ``null``."""
    return None if value is None else json.dumps(value)


READ_QUEUED = """
SELECT definition::text, parameters::text, initial_state::text, on_failure, status
FROM protocol_runs WHERE accession_id = $1
"""
"""What a run's ``ExecuteRun`` carries that never changes after its submission."""

RESERVE = """
WITH run AS (
    SELECT accession_id, status FROM protocol_runs WHERE accession_id = $1 FOR UPDATE
), changed AS (
    UPDATE protocol_runs r SET status = 'pending', updated_at = $2, waiting_for = NULL,
        waiting_since = NULL, workcell_id = $3, workcell_name = $4, bindings = $5::jsonb
    FROM run WHERE r.accession_id = run.accession_id AND run.status = 'queued'
    RETURNING run.status AS previous
), history AS (
    INSERT INTO run_status_history (run_id, status, previous, reason, at, actor)
    SELECT $1, 'pending', previous, $6, $2, NULL FROM changed
), announced AS (
    INSERT INTO outbox (subject, payload, headers)
    SELECT m.subject, m.payload, m.headers::jsonb
    FROM changed, unnest($7::text[], $8::bytea[], $9::text[])
        WITH ORDINALITY AS m(subject, payload, headers, n)
    ORDER BY m.n
    RETURNING id
)
SELECT (SELECT previous FROM changed) AS previous,
       (SELECT array_agg(id ORDER BY id) FROM announced) AS outbox_ids
"""
"""A queued run's grant: pending, bound, its history, ``RunStatusChanged`` and ``ExecuteRun``."""


def _insert_run() -> tuple[str, list[Column[Any]]]:
    """``CREATE``: a run's row (every column of ``RunRow``), its history row and its messages,
    in one statement; and the columns in the order of their parameters."""
    columns = [c for c in RunRow.__table__.columns if isinstance(c, Column)]
    names = ", ".join(c.name for c in columns)
    values = ", ".join(
        f"${i}::jsonb" if isinstance(c.type, JSONB) else f"${i}"
        for i, c in enumerate(columns, start=1)
    )
    n = len(columns)
    statement = f"""
WITH created AS (
    INSERT INTO protocol_runs ({names}) VALUES ({values}) RETURNING accession_id
), history AS (
    INSERT INTO run_status_history (run_id, status, previous, reason, at, actor)
    SELECT accession_id, 'queued', NULL, ${n + 1}, ${n + 2}, ${n + 3} FROM created
), announced AS (
    INSERT INTO outbox (subject, payload, headers)
    SELECT m.subject, m.payload, m.headers::jsonb
    FROM created, unnest(${n + 4}::text[], ${n + 5}::bytea[], ${n + 6}::text[])
        WITH ORDINALITY AS m(subject, payload, headers, n)
    ORDER BY m.n
    RETURNING id
)
SELECT array_agg(id ORDER BY id) AS outbox_ids FROM announced
"""
    return statement, columns


CREATE, RUN_COLUMNS = _insert_run()


def _column_value(row: RunRow, column: Column[Any]) -> Any:
    """A column's value as the ORM would write it: its Python default when unset, JSON as text
    (None as SQL NULL)."""
    value = getattr(row, column.key)
    default = column.default
    if value is None and default is not None and getattr(default, "is_scalar", False):
        value = default.arg  # type: ignore[attr-defined]
    elif value is None and default is not None and getattr(default, "is_callable", False):
        value = default.arg(None)  # type: ignore[attr-defined]
    if isinstance(column.type, JSONB):
        return _json(value)
    return value
