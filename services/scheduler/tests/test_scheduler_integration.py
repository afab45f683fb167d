"""The scheduler's service layer against a real PostgreSQL (no NATS: the outbox is inspected).

One migrated database for the module; each test uses its own protocol name, so list queries
filtered by it see only that test's runs. A settable clock makes ``created_at`` predictable.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import praxis_scheduler
from praxis_contracts.assets import AssetBinding, AssetsReserved, ReleaseAssets, ReserveAssets
from praxis_contracts.common import ErrorInfo, RunStatus, SearchFilters
from praxis_contracts.errors import InvalidRequest, InvalidTransition, NotFound
from praxis_contracts.protocols import (
    AssetRequirementSpec,
    ParameterSpec,
    ProtocolDefinition,
    ProtocolFunctionSpec,
    ResolvedProtocol,
)
from praxis_contracts.runs import (
    ControlRun,
    ControlRunExecution,
    ExecuteRun,
    ListRuns,
    RunFinished,
    RunStatusChanged,
    RunView,
    SubmitRun,
)
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_runtime.db import Database
from praxis_scheduler.orm import Base, StatusHistoryRow
from praxis_scheduler.service import Outbox, RunService

pytestmark = pytest.mark.integration

MIGRATIONS = Path(praxis_scheduler.__file__).parent / "migrations"
PLATE = "pylabrobot.resources.plate.Plate"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    """The scheduler's clock, set by the test."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def migrated(url: str) -> Database:
    db = Database(url, "scheduler")
    await db.migrate(MIGRATIONS, Base.metadata)
    return db


@pytest.fixture(scope="module")
async def database(make_database: MakeDatabase) -> AsyncIterator[Database]:
    db = await migrated(make_database("sched"))
    await db.migrate(MIGRATIONS, Base.metadata)  # a second start finds nothing to do
    yield db
    await db.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runs(database: Database, clock: Clock) -> RunService:
    return RunService(database, clock=clock)


def resolved(name: str) -> ResolvedProtocol:
    spec = ProtocolFunctionSpec(
        name=name,
        version="1.2.0",
        module="protos.mix",
        qualname=name,
        parameters=[ParameterSpec(name="volume", type_hint="float", optional=True, default=10.0)],
        assets=[AssetRequirementSpec(name="plate", type_fqn=PLATE, kind="resource")],
    )
    definition = ProtocolDefinition(
        accession_id=uuid.uuid4(),
        source_id=uuid.uuid4(),
        source_name="protocols",
        commit="c0ffee" * 6 + "abcd",
        spec=spec,
        code_bundle="protocols/c0ffee.tar",
        created_at=T0,
    )
    return ResolvedProtocol(definition=definition, parameters={"volume": 2.5})


def protocol_name() -> str:
    return f"mix_{uuid.uuid4().hex[:10]}"


async def submit(runs: RunService, name: str, **fields: Any) -> RunView:
    fields.setdefault("workcell", "wc-1")
    return await runs.create(SubmitRun(protocol_name=name, **fields), resolved(name), Outbox())


def binding(run_id: uuid.UUID) -> AssetBinding:
    asset_id = uuid.uuid4()
    return AssetBinding(
        requirement="plate",
        asset_id=asset_id,
        asset_name="source_plate",
        kind="resource",
        fqn=PLATE,
        lease_key=f"asset.{asset_id}",
        token=42,
    )


def reserved(run_id: uuid.UUID, workcell_id: uuid.UUID | None = None) -> AssetsReserved:
    return AssetsReserved(
        run_id=run_id,
        workcell_id=workcell_id or uuid.uuid4(),
        workcell_name="wc-1",
        bindings=[binding(run_id)],
    )


def finished(run_id: uuid.UUID, outcome: Any = "completed", **fields: Any) -> RunFinished:
    fields.setdefault("at", T0 + timedelta(minutes=5))
    return RunFinished(run_id=run_id, outcome=outcome, **fields)


def statuses(outbox: Outbox) -> list[tuple[RunStatus, RunStatus | None]]:
    return [(m.status, m.previous) for m, _ in outbox.messages if isinstance(m, RunStatusChanged)]


def commands(outbox: Outbox) -> list[tuple[Any, str | None]]:
    return [(m, i) for m, i in outbox.messages if not isinstance(m, RunStatusChanged)]


async def history(db: Database, run_id: uuid.UUID) -> list[tuple[str, str | None]]:
    async with db.transaction() as session:
        rows = await session.scalars(
            select(StatusHistoryRow)
            .where(StatusHistoryRow.run_id == run_id)
            .order_by(StatusHistoryRow.id)
        )
        return [(r.status, r.previous) for r in rows]


async def test_create_queues_the_run_and_asks_for_its_assets(
    runs: RunService, database: Database
) -> None:
    name, outbox = protocol_name(), Outbox()
    cmd = SubmitRun(
        protocol_name=name,
        workcell="wc-1",
        assets={"plate": "source_plate"},
        initial_state={"count": 1},
        priority=5,
    )
    protocol = resolved(name)

    run = await runs.create(cmd, protocol, outbox)

    assert run.status == RunStatus.QUEUED
    assert (run.protocol_name, run.protocol_version) == (name, "1.2.0")
    assert (run.definition_id, run.source_commit) == (
        protocol.definition.accession_id,
        protocol.definition.commit,
    )
    assert (run.parameters, run.workcell, run.priority) == ({"volume": 2.5}, "wc-1", 5)
    assert await runs.get(run.accession_id) == run
    changed, reserve = outbox.messages
    assert isinstance(changed[0], RunStatusChanged) and changed[1] is None
    assert (changed[0].run_id, changed[0].status, changed[0].previous) == (
        run.accession_id,
        RunStatus.QUEUED,
        None,
    )
    assert isinstance(reserve[0], ReserveAssets)
    assert reserve[1] == f"reserve:{run.accession_id}"
    assert reserve[0].run_id == run.accession_id
    assert reserve[0].requirements == protocol.definition.spec.assets
    assert (reserve[0].workcell, reserve[0].pins, reserve[0].priority) == (
        "wc-1",
        {"plate": "source_plate"},
        5,
    )
    assert await history(database, run.accession_id) == [("queued", None)]


async def test_a_run_goes_from_queued_to_completed(
    runs: RunService, database: Database, clock: Clock
) -> None:
    run = await submit(runs, protocol_name(), initial_state={"count": 1})
    grant = reserved(run.accession_id)

    outbox = Outbox()
    await runs.on_reserved(grant, outbox)
    assert statuses(outbox) == [(RunStatus.PENDING, RunStatus.QUEUED)]
    ((execute, msg_id),) = commands(outbox)
    assert isinstance(execute, ExecuteRun)
    assert msg_id == f"execute:{run.accession_id}"
    assert (execute.workcell_id, execute.workcell_name) == (grant.workcell_id, "wc-1")
    assert (execute.bindings, execute.parameters) == (grant.bindings, {"volume": 2.5})
    assert execute.initial_state == {"count": 1}
    assert execute.definition.spec.name == run.protocol_name
    pending = await runs.get(run.accession_id)
    assert (pending.status, pending.workcell_id, pending.workcell_name) == (
        RunStatus.PENDING,
        grant.workcell_id,
        "wc-1",
    )
    assert pending.bindings == grant.bindings

    started_at = T0 + timedelta(minutes=1)
    for status, at in ((RunStatus.PREPARING, T0), (RunStatus.RUNNING, started_at)):
        outbox = Outbox()
        await runs.on_progress(run.accession_id, status, at, outbox)
        assert [s for s, _ in statuses(outbox)] == [status]
    assert (await runs.get(run.accession_id)).started_at == started_at

    clock.now = T0 + timedelta(minutes=6)
    outbox = Outbox()
    done = finished(
        run.accession_id,
        result={"moved": 30.0},
        final_state={"count": 2},
        asset_states={"source_plate": {"source_plate_well_A1": {"volume": 170.0}}},
    )
    await runs.on_finished(done, outbox)

    assert statuses(outbox) == [(RunStatus.COMPLETED, RunStatus.RUNNING)]
    ((release, release_id),) = commands(outbox)
    assert isinstance(release, ReleaseAssets) and release.run_id == run.accession_id
    assert release_id == f"release:{run.accession_id}"
    final = await runs.get(run.accession_id)
    assert final.status == RunStatus.COMPLETED
    assert (final.result, final.final_state, final.error) == ({"moved": 30.0}, {"count": 2}, None)
    assert final.asset_states == done.asset_states
    assert (final.finished_at, final.updated_at) == (done.at, clock.now)
    assert await history(database, run.accession_id) == [
        ("queued", None),
        ("pending", "queued"),
        ("preparing", "pending"),
        ("running", "preparing"),
        ("completed", "running"),
    ]


async def test_late_and_duplicate_events_leave_a_finished_run_alone(
    runs: RunService, database: Database
) -> None:
    run = await submit(runs, protocol_name())
    await runs.on_reserved(reserved(run.accession_id), Outbox())
    await runs.on_finished(finished(run.accession_id, result=1), Outbox())
    before = await runs.get(run.accession_id)
    rows = await history(database, run.accession_id)

    for late in (RunStatus.PREPARING, RunStatus.RUNNING):
        outbox = Outbox()
        await runs.on_progress(run.accession_id, late, T0 + timedelta(hours=1), outbox)
        assert outbox.messages == []
    again = Outbox()
    await runs.on_finished(finished(run.accession_id, "failed", result=2), again)
    assert again.messages == []  # no second ReleaseAssets, no second status change

    after = await runs.get(run.accession_id)
    assert (after.status, after.result, after.updated_at) == (
        RunStatus.COMPLETED,
        1,
        before.updated_at,
    )
    assert await history(database, run.accession_id) == rows


async def test_a_grant_for_a_run_that_ended_is_given_back(runs: RunService) -> None:
    run = await submit(runs, protocol_name())
    error = ErrorInfo(type="ReservationFailed", message="nothing matches", code="no_matching")
    await runs.on_failed_before_start(run.accession_id, error, Outbox())

    outbox = Outbox()
    await runs.on_reserved(reserved(run.accession_id), outbox)

    assert statuses(outbox) == []
    ((release, _),) = commands(outbox)
    assert isinstance(release, ReleaseAssets) and release.run_id == run.accession_id
    assert (await runs.get(run.accession_id)).bindings == []


async def test_failures_are_recorded(runs: RunService, clock: Clock) -> None:
    before_start = await submit(runs, protocol_name())
    clock.now = T0 + timedelta(seconds=30)
    outbox = Outbox()
    error = ErrorInfo(type="ReservationFailed", message="no plate", code="no_matching_assets")
    await runs.on_failed_before_start(before_start.accession_id, error, outbox)
    assert statuses(outbox) == [(RunStatus.FAILED, RunStatus.QUEUED)]
    assert commands(outbox) == []  # nothing was reserved, nothing to release
    failed = await runs.get(before_start.accession_id)
    assert (failed.status, failed.error, failed.finished_at) == (RunStatus.FAILED, error, clock.now)

    during = await submit(runs, protocol_name())
    await runs.on_reserved(reserved(during.accession_id), Outbox())
    boom = ErrorInfo(type="ValueError", message="boom", traceback="Traceback ...")
    outbox = Outbox()
    await runs.on_finished(finished(during.accession_id, "failed", error=boom), outbox)
    assert statuses(outbox) == [(RunStatus.FAILED, RunStatus.PENDING)]
    assert [type(m) for m, _ in commands(outbox)] == [ReleaseAssets]
    assert (await runs.get(during.accession_id)).error == boom


async def test_list_runs_filters_sorts_and_pages(runs: RunService, clock: Clock) -> None:
    name = protocol_name()
    made = []
    for hour, priority in enumerate((3, 1, 4, 2)):
        clock.now = T0 + timedelta(hours=hour)
        made.append(await submit(runs, name, priority=priority))
    ids = [r.accession_id for r in made]
    await runs.on_reserved(reserved(ids[1]), Outbox())
    error = ErrorInfo(type="ReservationFailed", message="no plate")
    await runs.on_failed_before_start(ids[3], error, Outbox())
    await submit(runs, protocol_name())  # another protocol's run: never listed below

    async def listed(**fields: Any) -> tuple[list[uuid.UUID], int]:
        filters = fields.pop("filters", {})
        page = await runs.list(
            ListRuns(protocol_name=name, filters=SearchFilters(**filters), **fields)
        )
        return [r.accession_id for r in page.items], page.total

    assert await listed() == ([ids[3], ids[2], ids[1], ids[0]], 4)  # newest first by default
    assert await listed(filters={"sort_by": "created_at"}) == (ids, 4)
    assert await listed(filters={"sort_by": "-created_at"}) == (ids[::-1], 4)
    assert await listed(filters={"sort_by": "priority"}) == ([ids[1], ids[3], ids[0], ids[2]], 4)
    assert await listed(status=[RunStatus.QUEUED]) == ([ids[2], ids[0]], 2)
    assert await listed(status=[RunStatus.QUEUED, RunStatus.PENDING]) == (
        [ids[2], ids[1], ids[0]],
        3,
    )
    window = {
        "date_range_start": T0 + timedelta(hours=1),
        "date_range_end": T0 + timedelta(hours=3),
    }
    assert await listed(filters={**window, "sort_by": "created_at"}) == ([ids[1], ids[2]], 2)
    page = {"sort_by": "created_at", "limit": 2, "offset": 1}
    assert await listed(filters=page) == ([ids[1], ids[2]], 4)
    assert await listed(filters={"protocol_run_accession_id": ids[2]}) == ([ids[2]], 1)
    with pytest.raises(InvalidRequest):
        await listed(filters={"sort_by": "nope"})
    with pytest.raises(InvalidRequest):
        await listed(filters={"machine_accession_id": uuid.uuid4()})
    with pytest.raises(InvalidRequest):
        await listed(filters={"property_filters": {"colour": "red"}})


async def test_unknown_runs_are_not_found(runs: RunService) -> None:
    missing = uuid.uuid4()
    with pytest.raises(NotFound):
        await runs.get(missing)
    with pytest.raises(NotFound):
        await runs.on_reserved(reserved(missing), Outbox())
    with pytest.raises(NotFound):
        await runs.on_finished(finished(missing), Outbox())


async def test_operator_actions_follow_the_run_state(runs: RunService) -> None:
    queued = await submit(runs, protocol_name())
    with pytest.raises(InvalidTransition):
        await runs.control(ControlRun(run_id=queued.accession_id, action="pause"), Outbox())
    outbox = Outbox()
    cancelled = await runs.control(ControlRun(run_id=queued.accession_id, action="cancel"), outbox)
    assert cancelled.status == RunStatus.CANCELLED and cancelled.finished_at is not None
    assert [type(m) for m, _ in commands(outbox)] == [ReleaseAssets]

    running = await submit(runs, protocol_name())
    await runs.on_reserved(reserved(running.accession_id), Outbox())
    await runs.on_progress(running.accession_id, RunStatus.RUNNING, T0, Outbox())
    outbox = Outbox()
    pausing = await runs.control(ControlRun(run_id=running.accession_id, action="pause"), outbox)
    assert pausing.status == RunStatus.PAUSING
    ((forwarded, _),) = commands(outbox)
    assert isinstance(forwarded, ControlRunExecution)
    assert (forwarded.run_id, forwarded.workcell_name, forwarded.action) == (
        running.accession_id,
        "wc-1",
        "pause",
    )


async def test_recover_re_drives_queued_and_pending_runs(make_database: MakeDatabase) -> None:
    db = await migrated(make_database("sched_recover"))
    try:
        runs = RunService(db)
        queued = await submit(runs, protocol_name())
        pending = await submit(runs, protocol_name())
        await runs.on_reserved(reserved(pending.accession_id), Outbox())
        done = await submit(runs, protocol_name())
        await runs.on_reserved(reserved(done.accession_id), Outbox())
        await runs.on_finished(finished(done.accession_id), Outbox())

        outbox = Outbox()
        assert await runs.recover(outbox) == 2

        by_type = {type(m): (m, i) for m, i in outbox.messages}
        assert set(by_type) == {ReserveAssets, ExecuteRun}
        reserve, reserve_id = by_type[ReserveAssets]
        execute, execute_id = by_type[ExecuteRun]
        assert (reserve.run_id, reserve_id) == (
            queued.accession_id,
            f"reserve:{queued.accession_id}",
        )
        assert (execute.run_id, execute_id) == (
            pending.accession_id,
            f"execute:{pending.accession_id}",
        )
        assert execute.workcell_name == "wc-1"
        again = Outbox()
        assert await runs.recover(again) == 2  # idempotent: same commands, same message ids
        assert sorted(i or "" for _, i in again.messages) == sorted(
            i or "" for _, i in outbox.messages
        )
    finally:
        await db.dispose()
