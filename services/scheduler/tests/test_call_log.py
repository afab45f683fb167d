"""The call log against a real PostgreSQL: each call recorded once, whatever the delivery."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import praxis_scheduler
from praxis_contracts.assets import AssetsReserved
from praxis_contracts.common import RunStatus
from praxis_contracts.protocols import (
    ProtocolDefinition,
    ProtocolFunctionSpec,
    ResolvedProtocol,
)
from praxis_contracts.runs import (
    FunctionCallRecorded,
    ListRunCalls,
    ListRunLogs,
    LogLine,
    RunLogged,
    RunView,
    SubmitRun,
)
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay
from praxis_scheduler.calls import CallLog, RunLogs
from praxis_scheduler.domain import refusal
from praxis_scheduler.orm import OUTBOX, Base
from praxis_scheduler.repository import sql_units
from praxis_scheduler.service import RunService

pytestmark = pytest.mark.integration

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
async def database(make_database: MakeDatabase) -> AsyncIterator[Database]:
    db = Database(make_database("sched_calls"), "scheduler")
    await db.migrate(Path(praxis_scheduler.__file__).parent / "migrations", Base.metadata)
    yield db
    await db.dispose()


def call(
    run_id: uuid.UUID, call_id: uuid.UUID, status: str, edge: str = "edge-1"
) -> FunctionCallRecorded:
    finished = status != "running"
    return FunctionCallRecorded(
        call_id=call_id,
        run_id=run_id,
        parent_call_id=None,
        sequence=1,
        function="mix_well",
        version="1.0.0",
        arguments={"well": "A1"},
        status=status,  # type: ignore[arg-type]
        started_at=T0,
        finished_at=T0 + timedelta(seconds=1) if finished else None,
        workcell="wc-1",
        edge_instance=edge,
    )


async def running_on_edge_1(database: Database, stage: str = "running") -> RunView:
    """A run of workcell wc-1, running on its edge process ``edge-1`` (``stage``: or only
    ``queued``, or ``pending`` on wc-1 with no process yet)."""
    relay = OutboxRelay(database, OUTBOX, lambda: None)  # type: ignore[arg-type, return-value]
    runs = RunService(sql_units(database, relay))
    spec = ProtocolFunctionSpec(name="mix", version="1.0.0", module="m", qualname="mix")
    definition = ProtocolDefinition(
        accession_id=uuid.uuid4(),
        source_id=uuid.uuid4(),
        source_name="s",
        commit="0" * 40,
        spec=spec,
        code_bundle="b",
        created_at=T0,
    )
    run = await runs.create(
        SubmitRun(protocol_name="mix"), ResolvedProtocol(definition=definition, parameters={})
    )
    if stage == "queued":
        return run
    await runs.on_reserved(
        AssetsReserved(
            run_id=run.accession_id, workcell_id=uuid.uuid4(), workcell_name="wc-1", bindings=[]
        )
    )
    if stage == "pending":
        return run
    await runs.on_progress(run.accession_id, RunStatus.RUNNING, T0, "wc-1", "edge-1")
    return run


async def test_a_call_delivered_twice_or_late_is_recorded_once(database: Database) -> None:
    run = await running_on_edge_1(database)
    log, call_id = CallLog(database), uuid.uuid4()

    for status in ("running", "running", "completed", "completed", "running"):
        event = call(run.accession_id, call_id, status)
        if status == "completed":
            event = event.model_copy(update={"result": {"mixed": [1.5, 2.0]}})
        assert await log.record(event) is None
    assert await log.record(call(uuid.uuid4(), uuid.uuid4(), "running")) is None  # unknown run
    # Another process of the workcell says it ran a call of this run: refused, not recorded.
    why = await log.record(call(run.accession_id, uuid.uuid4(), "running", edge="edge-2"))
    assert why is not None and "edge-2" in why and "edge-1" in why

    page = await log.list(ListRunCalls(run_id=run.accession_id))
    assert [(c.call_id, c.status, c.result) for c in page.items] == [
        (call_id, "completed", {"mixed": [1.5, 2.0]})
    ]
    assert page.total == 1


async def test_log_lines_delivered_twice_are_stored_once_and_read_in_order(
    database: Database,
) -> None:
    run = await running_on_edge_1(database)
    logs = RunLogs(database)

    def batch(first: int, n: int, edge: str = "edge-1") -> RunLogged:
        lines = [
            LogLine(
                seq=first + i,
                at=T0,
                source="instrument" if i % 2 else "protocol",
                level="WARNING" if i == 1 else "INFO",
                logger=None,
                message=f"line {first + i}",
            )
            for i in range(n)
        ]
        return RunLogged(
            run_id=run.accession_id, workcell="wc-1", at=T0, edge_instance=edge, lines=lines
        )

    for event in (batch(3, 2), batch(0, 3), batch(0, 3), batch(3, 2)):  # late, twice
        assert await logs.record(event) is None
    why = await logs.record(batch(5, 1, edge="edge-2"))  # not the run's edge: refused
    assert why is not None and "edge-2" in why

    page = await logs.list(ListRunLogs(run_id=run.accession_id))
    assert [x.message for x in page.items] == [f"line {i}" for i in range(5)]
    assert page.total == 5
    warnings = await logs.list(ListRunLogs(run_id=run.accession_id, level="WARNING"))
    assert [x.seq for x in warnings.items] == [1, 4]
    protocol = await logs.list(ListRunLogs(run_id=run.accession_id, source="protocol"))
    assert [x.seq for x in protocol.items] == [0, 2, 3]


@pytest.mark.parametrize(
    ("stage", "workcell", "edge"),
    [
        ("queued", "wc-1", "edge-1"),  # dispatched to no workcell yet
        ("pending", "wc-1", "edge-1"),  # its workcell, no process yet
        ("pending", "wc-2", "edge-1"),
        ("running", "wc-1", "edge-1"),  # its workcell and its process
        ("running", "wc-1", "edge-2"),
        ("running", "wc-2", "edge-1"),
    ],
)
async def test_a_report_is_written_exactly_when_the_domain_believes_it(
    database: Database, stage: str, workcell: str, edge: str
) -> None:
    """The statement's condition and ``domain.refusal`` are the same rule, written twice: a
    report is recorded if and only if the reason it returns is None."""
    run = await running_on_edge_1(database, stage)
    log, logs = CallLog(database), RunLogs(database)
    event = call(run.accession_id, uuid.uuid4(), "running", edge=edge)
    event = event.model_copy(update={"workcell": workcell})
    line = LogLine(seq=0, at=T0, source="protocol", level="INFO", logger=None, message="hi")
    batch = RunLogged(
        run_id=run.accession_id, workcell=workcell, at=T0, edge_instance=edge, lines=[line]
    )
    relay = OutboxRelay(database, OUTBOX, lambda: None)  # type: ignore[arg-type, return-value]
    view = await RunService(sql_units(database, relay)).get(run.accession_id)
    expected = refusal(view.status, view.workcell_name, view.edge_instance, workcell, edge)

    why_call, why_lines = await log.record(event), await logs.record(batch)

    assert why_call == why_lines == expected
    calls = (await log.list(ListRunCalls(run_id=run.accession_id))).items
    lines = (await logs.list(ListRunLogs(run_id=run.accession_id))).items
    assert (len(calls), len(lines)) == ((1, 1) if expected is None else (0, 0))
