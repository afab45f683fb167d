"""An edge's progress report applied in one statement (``statements.RunStatements``) does what the
general path through the unit of work does, in every case, against a real PostgreSQL.

Each case builds two runs the same way, reports the same progress to both, one through the
scheduler as it runs (the statement first) and one through the general path alone, and compares
the runs, their new history and the messages committed for them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text

import praxis_scheduler
from praxis_contracts.assets import AssetBinding, AssetsReserved, HoldAssets, ReleaseAssets
from praxis_contracts.common import ErrorInfo, RunStatus
from praxis_contracts.protocols import ProtocolDefinition, ProtocolFunctionSpec, ResolvedProtocol
from praxis_contracts.runs import RunFinished, RunStatusChanged, SubmitRun
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay
from praxis_scheduler.orm import OUTBOX, Base, RunRow, StatusHistoryRow
from praxis_scheduler.repository import sql_units
from praxis_scheduler.service import RunService
from praxis_scheduler.statements import RunStatements

pytestmark = pytest.mark.integration

S = RunStatus
STATUS_CHANGED = RunStatusChanged.subject
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
WORKCELL_ID = uuid.UUID(int=42)


class Relay(OutboxRelay):
    """Keeps what each commit hands over (nothing is published)."""

    def __init__(self, db: Database) -> None:
        super().__init__(db, OUTBOX, lambda: None)  # type: ignore[arg-type, return-value]
        self.handed: list[Any] = []

    def committed(self, rows: Any) -> None:
        self.handed.extend(message for _, message in rows)


class Counting(RunStatements):
    def __init__(self, db: Database, relay: OutboxRelay) -> None:
        super().__init__(db, relay)
        self.applied = self.finished = self.reserved = 0

    async def advance(self, *args: Any) -> bool:
        done = await super().advance(*args)
        self.applied += done
        return done

    async def reserve(self, *args: Any) -> bool:
        done = await super().reserve(*args)
        self.reserved += done
        return done

    async def finish(self, *args: Any) -> bool:
        done = await super().finish(*args)
        self.finished += done
        return done


@pytest.fixture(scope="module")
async def database(make_database: MakeDatabase) -> AsyncIterator[Database]:
    db = Database(make_database("sched_progress"), "scheduler")
    await db.migrate(Path(praxis_scheduler.__file__).parent / "migrations", Base.metadata)
    yield db
    await db.dispose()


def resolved(parameters: dict[str, Any] | None = None) -> ResolvedProtocol:
    """The same definition for every run, so that their commands compare equal."""
    spec = ProtocolFunctionSpec(name="mix", version="1.0.0", module="m", qualname="mix")
    definition = ProtocolDefinition(
        accession_id=uuid.UUID(int=5),
        source_id=uuid.UUID(int=6),
        source_name="s",
        commit="0" * 40,
        spec=spec,
        code_bundle="b",
        created_at=T0,
    )
    return ResolvedProtocol(definition=definition, parameters=parameters or {})


async def a_run(runs: RunService, stage: str) -> uuid.UUID:
    """A run brought to ``stage`` through the general path: queued, pending (on wc-1), preparing
    or running (on its process edge-1), failed."""
    run_id = (await runs.create(SubmitRun(protocol_name="mix"), resolved())).accession_id
    if stage == "queued":
        return run_id
    reserved = AssetsReserved(
        run_id=run_id, workcell_id=WORKCELL_ID, workcell_name="wc-1", bindings=[]
    )
    await runs.on_reserved(reserved)
    if stage == "failed":
        await runs.on_failed_before_start(run_id, ErrorInfo(type="X", message="gone"))
    for step in ("preparing", "running"):
        if stage in (step, "running"):
            await runs.on_progress(run_id, S(step), T0, "wc-1", "edge-1")
        if stage == step:
            break
    return run_id


RAW = text(
    "SELECT status, edge_instance, started_at, finished_at = :t0, result::text, error::text, "
    "final_state::text, asset_states::text, bindings::text, workcell_id, workcell_name, "
    "waiting_for FROM scheduler.protocol_runs WHERE accession_id = :id"
)


@dataclass
class Both:
    """Two runs brought to one stage; ``quick`` applies reports with the statements first,
    ``general`` through the unit of work alone."""

    database: Database
    general: RunService
    quick: RunService
    statements: Counting
    general_relay: Relay
    quick_relay: Relay
    one: uuid.UUID
    other: uuid.UUID

    @classmethod
    async def at(cls, database: Database, stage: str) -> Both:
        general_relay, quick_relay = Relay(database), Relay(database)
        general = RunService(sql_units(database, general_relay))
        statements = Counting(database, quick_relay)
        quick = RunService(sql_units(database, quick_relay), statements=statements)
        one, other = await a_run(general, stage), await a_run(general, stage)
        general_relay.handed.clear()
        return cls(database, general, quick, statements, general_relay, quick_relay, one, other)

    async def outcomes(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """What happened to the first run (statements) and to the second (unit of work)."""
        done = await outcome(self.database, self.one, self.quick_relay.handed)
        return done, await outcome(self.database, self.other, self.general_relay.handed)


async def outcome(db: Database, run_id: uuid.UUID, messages: list[Any]) -> dict[str, Any]:
    async with db.transaction() as session:
        run = await session.get(RunRow, run_id)
        assert run is not None
        raw = (await session.execute(RAW, {"id": run_id, "t0": T0})).one()
        history = (
            await session.scalars(
                select(StatusHistoryRow)
                .where(StatusHistoryRow.run_id == run_id)
                .order_by(StatusHistoryRow.id)
            )
        ).all()

    def said(message: Any) -> dict[str, Any]:
        body = json.loads(message.payload)
        body.pop("at", None)
        body.pop("run_id", None)
        body.pop("seen", None)
        body.pop("started_at", None)
        return {"subject": message.subject.replace(str(run_id), "<run>"), **body}

    return {
        "run": (run.status, run.edge_instance, run.started_at is not None),
        "columns": tuple(raw),
        "history": [(h.status, h.previous, h.reason, h.actor) for h in history][-1:],
        "messages": [said(m) for m in messages],
    }


CASES = [
    # stage, reported, workcell, edge, decided by the statement (believed)
    ("pending", S.PREPARING, "wc-1", "edge-1", True),
    ("pending", S.RUNNING, "wc-1", "edge-2", True),
    ("preparing", S.RUNNING, "wc-1", "edge-1", True),
    ("preparing", S.RUNNING, "wc-1", "edge-2", True),  # a redelivered command, another process
    ("preparing", S.PREPARING, "wc-1", "edge-2", True),  # ignored, but the process is recorded
    ("running", S.PAUSED, "wc-1", "edge-1", True),
    ("running", S.RUNNING, "wc-1", "edge-1", True),  # the same report again: ignored
    ("running", S.PREPARING, "wc-1", "edge-1", True),  # late: ignored
    ("failed", S.RUNNING, "wc-1", "edge-1", True),  # ended: ignored, its start recorded
    ("failed", S.PREPARING, "wc-1", "edge-1", True),  # ended: ignored, nothing written
    ("running", S.PAUSED, "wc-1", "edge-2", False),  # not its process: refused
    ("pending", S.PREPARING, "wc-2", "edge-1", False),  # not its workcell: refused
    ("queued", S.PREPARING, "wc-1", "edge-1", False),  # dispatched to no workcell: refused
]


@pytest.mark.parametrize(("stage", "reported", "workcell", "edge", "fast"), CASES)
async def test_a_progress_report_does_the_same_in_one_statement(
    database: Database, stage: str, reported: RunStatus, workcell: str, edge: str, fast: bool
) -> None:
    both = await Both.at(database, stage)
    general, quick, progress = both.general, both.quick, both.statements
    one, other = both.one, both.other

    await quick.on_progress(one, reported, T0, workcell, edge)
    await general.on_progress(other, reported, T0, workcell, edge)

    assert progress.applied == int(fast)
    done, expected = await both.outcomes()
    assert done == expected
    moved = [m for m in done["messages"] if m["subject"].startswith(STATUS_CHANGED)]
    assert all(m["status"] == reported for m in moved)


async def test_an_unknown_run_is_nothing_to_do(database: Database) -> None:
    relay = Relay(database)
    progress = Counting(database, relay)
    runs = RunService(sql_units(database, relay), statements=progress)
    await runs.on_progress(uuid.uuid4(), S.RUNNING, T0, "wc-1", "edge-1")
    assert progress.applied == 1 and relay.handed == []  # decided: nothing to do


FINISHES = [
    # stage, outcome, workcell, edge, with an error and clean-up, decided by the statement
    ("running", "completed", "wc-1", "edge-1", False, True),
    ("running", "failed", "wc-1", "edge-1", True, True),
    ("running", "cancelled", "wc-1", "edge-1", True, True),
    ("running", "requires_intervention", "wc-1", "edge-1", True, True),  # held, not released
    ("pending", "completed", "wc-1", "edge-1", False, True),  # no process recorded yet
    ("failed", "completed", "wc-1", "edge-1", False, True),  # ended already: ignored
    ("running", "completed", "wc-1", "edge-2", False, False),  # not its process: refused
    ("running", "completed", "wc-2", "edge-1", False, False),  # not its workcell: refused
    ("queued", "failed", "wc-1", "edge-1", True, False),  # dispatched to no workcell: refused
]


@pytest.mark.parametrize(("stage", "ended", "workcell", "edge", "failing", "fast"), FINISHES)
async def test_a_runs_end_does_the_same_in_one_statement(
    database: Database,
    stage: str,
    ended: str,
    workcell: str,
    edge: str,
    failing: bool,
    fast: bool,
) -> None:
    both = await Both.at(database, stage)
    general, quick, progress = both.general, both.quick, both.statements
    one, other = both.one, both.other

    def finished(run_id: uuid.UUID) -> RunFinished:
        return RunFinished(
            run_id=run_id,
            workcell=workcell,
            edge_instance=edge,
            at=T0,
            outcome=ended,  # type: ignore[arg-type]
            result={"C3": 30.0} if not failing else None,
            error=ErrorInfo(type="ValueError", message="too little liquid") if failing else None,
            final_state={"transferred_ul": 30.0},
            asset_states={"plate": {"A1": {"volume": 1.5}}},
            cleanup=["tips returned"] if failing else [],
            snapshot_id=uuid.UUID(int=7),
        )

    await quick.on_finished(finished(one))
    await general.on_finished(finished(other))

    assert progress.finished == int(fast)
    done, expected = await both.outcomes()
    assert done == expected
    if fast and stage != "failed":
        assert [m["subject"] for m in done["messages"]] == [
            f"{STATUS_CHANGED}.<run>",
            HoldAssets.subject if ended == "requires_intervention" else ReleaseAssets.subject,
        ]


@pytest.mark.parametrize(
    ("stage", "fast"), [("queued", True), ("pending", False), ("failed", False)]
)
async def test_a_grant_does_the_same_in_one_statement(
    database: Database, stage: str, fast: bool
) -> None:
    """A queued run's grant is the statement's; a repeated grant (pending) and a grant for a
    run that ended (given back) are the general path's."""
    both = await Both.at(database, stage)
    general, quick, statements = both.general, both.quick, both.statements
    one, other = both.one, both.other
    workcell_id = WORKCELL_ID

    def grant(run_id: uuid.UUID) -> AssetsReserved:
        binding = AssetBinding(
            requirement="plate",
            asset_id=uuid.UUID(int=1),
            asset_name="source_plate",
            kind="resource",
            fqn="pylabrobot.resources.plate.Plate",
            lease_key="wc-1.00000000000000000000000000000001",
            token=17,
            reason="pinned",
        )
        return AssetsReserved(
            run_id=run_id, workcell_id=workcell_id, workcell_name="wc-1", bindings=[binding]
        )

    await quick.on_reserved(grant(one))
    await general.on_reserved(grant(other))

    assert statements.reserved == int(fast)
    done, expected = await both.outcomes()
    assert done == expected
    if fast:
        assert [m["subject"].split(".")[1] for m in done["messages"]] == ["evt", "cmd"]


@pytest.mark.parametrize("full", [False, True, "immediate"])
async def test_a_submission_does_the_same_in_one_statement(
    database: Database, full: bool | str
) -> None:
    """Every column of the new run, its history and its messages, both ways (a fixed clock)."""
    general_relay, quick_relay = Relay(database), Relay(database)

    def clock() -> datetime:
        return T0

    general = RunService(sql_units(database, general_relay), clock=clock)
    quick = RunService(
        sql_units(database, quick_relay),
        clock=clock,
        statements=RunStatements(database, quick_relay),
    )
    fields: dict[str, Any] = {}
    if full:
        fields = {
            "workcell": "wc-1",
            "assets": {"plate": "source_plate"},
            "asset_properties": {"plate": {"sterile": True}},
            "priority": 5,
            "on_failure": "rollback",
            "not_before": T0,
            "deadline": datetime(2031, 1, 1, tzinfo=UTC),
            "initial_state": {"tips_used": 3},
            "actor": "alice",
        }
    if full == "immediate":
        fields = {"mode": "immediate", "workcell": "wc-1"}
    cmd = SubmitRun(protocol_name="mix", **fields)

    given = resolved({"volume": 30} if full else {})
    one = (await quick.create(cmd, given)).accession_id
    other = (await general.create(cmd, given)).accession_id

    def row_of(run_id: uuid.UUID) -> Any:
        return text(
            "SELECT to_jsonb(r) - 'accession_id' FROM scheduler.protocol_runs r "
            "WHERE accession_id = :id"
        ).bindparams(id=run_id)

    async with database.transaction() as session:
        done_row = (await session.execute(row_of(one))).scalar_one()
        expected_row = (await session.execute(row_of(other))).scalar_one()
    assert done_row == expected_row
    done = await outcome(database, one, quick_relay.handed)
    expected = await outcome(database, other, general_relay.handed)
    done["messages"] = [json.dumps(m).replace(str(one), "<run>") for m in done["messages"]]
    expected["messages"] = [
        json.dumps(m).replace(str(other), "<run>") for m in expected["messages"]
    ]
    assert done == expected
    assert len(done["messages"]) == 2
