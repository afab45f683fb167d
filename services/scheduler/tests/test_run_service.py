"""The scheduler's service layer, once in memory and once against a real PostgreSQL.

Every test runs twice: with the in-memory unit of work (no servers) and with the SQL one, whose
emitted messages are read back from the outbox table they were committed to. Each message a
handler reacts to is also delivered twice: the second delivery must change nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import praxis_scheduler
from praxis_contracts.assets import (
    AssetBinding,
    AssetsReserved,
    HoldAssets,
    LeaseExpired,
    ReleaseAssets,
    ReservationWaiting,
    ReserveAssets,
    WaitReason,
)
from praxis_contracts.base import Message, all_message_types
from praxis_contracts.common import ErrorInfo, RunStatus
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
    EdgeRun,
    ExecuteRun,
    RunEventRefused,
    RunFinished,
    RunHandedBack,
    RunStatusChanged,
    RunView,
    SubmitRun,
)
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay
from praxis_runtime.publisher import Outgoing, Publisher
from praxis_scheduler.edges import Lost
from praxis_scheduler.orm import OUTBOX, Base
from praxis_scheduler.repository import InMemorySchedulerUnitOfWork, sql_units
from praxis_scheduler.service import RunService

MIGRATIONS = Path(praxis_scheduler.__file__).parent / "migrations"
PLATE = "pylabrobot.resources.plate.Plate"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
S = RunStatus
EDGE, OTHER_EDGE = "edge-a", "edge-b"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Edges:
    """The scheduler's view of live edge processes, set by the test."""

    def __init__(self, *live: str) -> None:
        self.live = set(live)

    def is_live(self, instance: str | None) -> bool:
        return instance in self.live


_TYPES = sorted(
    (t for t in all_message_types() if not hasattr(t, "reply_type")),
    key=lambda t: len(t.subject),
    reverse=True,
)


def decode(message: Outgoing) -> tuple[Message, str | None]:
    """An outbox row as the message it will be published as, with its message id."""
    cls = next(t for t in _TYPES if message.subject.startswith(t.subject))
    return cls.model_validate_json(message.payload), (message.headers or {}).get("Nats-Msg-Id")


class Harness:
    """A service layer with a way to read what it emitted and the runs' history."""

    runs: RunService

    async def sent(self) -> list[tuple[Message, str | None]]:
        raise NotImplementedError

    async def entries(self, run_id: uuid.UUID, column: str) -> list[tuple[str, Any]]:
        """(status, ``column``) of each status-history entry of the run, in order."""
        raise NotImplementedError

    async def history(self, run_id: uuid.UUID) -> list[tuple[str, str | None]]:
        return await self.entries(run_id, "previous")

    async def actors(self, run_id: uuid.UUID) -> list[tuple[str, str | None]]:
        return await self.entries(run_id, "actor")

    async def reasons(self, run_id: uuid.UUID) -> list[tuple[str, str]]:
        return await self.entries(run_id, "reason")

    async def statuses(self) -> list[tuple[RunStatus, RunStatus | None]]:
        return [
            (m.status, m.previous) for m, _ in await self.sent() if isinstance(m, RunStatusChanged)
        ]


class MemoryHarness(Harness):
    def __init__(self, clock: Clock) -> None:
        self.uow = InMemorySchedulerUnitOfWork()
        self.runs = RunService(self.uow, clock=clock)
        self._read = 0

    async def sent(self) -> list[tuple[Message, str | None]]:
        new, self._read = self.uow.published[self._read :], len(self.uow.published)
        return [decode(m) for m in new]

    async def entries(self, run_id: uuid.UUID, column: str) -> list[tuple[str, Any]]:
        history = self.uow.store.history
        return [(h.status, getattr(h, column)) for h in history if h.run_id == run_id]


class _NoPublisher:
    def __call__(self) -> Publisher:
        raise AssertionError("the relay is not started in these tests")


class SqlHarness(Harness):
    def __init__(self, db: Database, clock: Clock) -> None:
        self.db = db
        self.runs = RunService(sql_units(db, OutboxRelay(db, OUTBOX, _NoPublisher())), clock=clock)

    async def sent(self) -> list[tuple[Message, str | None]]:
        async with self.db.transaction() as session:
            rows = (
                await session.execute(
                    text("DELETE FROM scheduler.outbox RETURNING id, subject, payload, headers")
                )
            ).all()
        rows = sorted(rows, key=lambda r: r.id)
        return [decode(Outgoing(r.subject, bytes(r.payload), r.headers)) for r in rows]

    async def entries(self, run_id: uuid.UUID, column: str) -> list[tuple[str, Any]]:
        assert column in ("previous", "actor", "reason")  # a column name, never input
        async with self.db.transaction() as session:
            rows = await session.execute(
                text(
                    f"SELECT status, {column} AS value FROM scheduler.run_status_history "
                    "WHERE run_id = :r ORDER BY id"
                ),
                {"r": run_id},
            )
            return [(r.status, r.value) for r in rows]


@pytest.fixture(scope="module")
async def database(make_database: MakeDatabase) -> AsyncIterator[Database]:
    db = Database(make_database("sched"), "scheduler")
    await db.migrate(MIGRATIONS, Base.metadata)
    await db.migrate(MIGRATIONS, Base.metadata)  # a second start finds nothing to do
    yield db
    await db.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def memory_h(clock: Clock) -> Harness:
    return MemoryHarness(clock)


@pytest.fixture
async def postgres_h(database: Database, clock: Clock) -> Harness:
    async with database.transaction() as session:  # each test starts with no runs
        await session.execute(text("TRUNCATE scheduler.protocol_runs, scheduler.outbox CASCADE"))
    return SqlHarness(database, clock)


@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.integration)])
def h(request: pytest.FixtureRequest) -> Harness:
    """The service layer in memory, then on PostgreSQL."""
    harness: Harness = request.getfixturevalue(f"{request.param}_h")
    return harness


def resolved(name: str = "mix") -> ResolvedProtocol:
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


async def submit(h: Harness, **fields: Any) -> RunView:
    fields.setdefault("workcell", "wc-1")
    run = await h.runs.create(SubmitRun(protocol_name="mix", **fields), resolved())
    await h.sent()
    return run


def reserved(run_id: uuid.UUID, asset_id: uuid.UUID | None = None) -> AssetsReserved:
    asset_id = asset_id or uuid.uuid4()
    binding = AssetBinding(
        requirement="plate",
        asset_id=asset_id,
        asset_name="source_plate",
        kind="resource",
        fqn=PLATE,
        lease_key=f"asset.{asset_id}",
        token=42,
    )
    return AssetsReserved(
        run_id=run_id, workcell_id=uuid.uuid4(), workcell_name="wc-1", bindings=[binding]
    )


def finished(run_id: uuid.UUID, outcome: Any = "completed", **fields: Any) -> RunFinished:
    fields.setdefault("at", T0 + timedelta(minutes=5))
    fields.setdefault("edge_instance", EDGE)
    fields.setdefault("workcell", "wc-1")
    return RunFinished(run_id=run_id, outcome=outcome, **fields)


async def running(h: Harness, edge: str = EDGE) -> RunView:
    """A run its edge has started."""
    run = await submit(h)
    await h.runs.on_reserved(reserved(run.accession_id))
    await h.runs.on_progress(run.accession_id, S.PREPARING, T0, "wc-1", edge)
    await h.runs.on_progress(run.accession_id, S.RUNNING, T0, "wc-1", edge)
    await h.sent()
    return await h.runs.get(run.accession_id)


def kinds(sent: list[tuple[Message, str | None]]) -> list[type[Message]]:
    return [type(m) for m, _ in sent if not isinstance(m, RunStatusChanged)]


async def test_create_queues_the_run_and_asks_for_its_assets(h: Harness) -> None:
    cmd = SubmitRun(protocol_name="mix", workcell="wc-1", assets={"plate": "p1"}, priority=5)
    run = await h.runs.create(cmd, resolved())

    assert run.status == S.QUEUED and run.priority == 5
    assert await h.runs.get(run.accession_id) == run
    (changed, _), (reserve, reserve_id) = await h.sent()
    assert isinstance(changed, RunStatusChanged) and changed.status == S.QUEUED
    assert isinstance(reserve, ReserveAssets) and reserve_id == f"reserve:{run.accession_id}"
    assert (reserve.workcell, reserve.pins, reserve.priority) == ("wc-1", {"plate": "p1"}, 5)
    assert await h.history(run.accession_id) == [("queued", None)]


async def test_a_run_goes_from_queued_to_completed(h: Harness, clock: Clock) -> None:
    run = await submit(h, initial_state={"count": 1})
    grant = reserved(run.accession_id)

    await h.runs.on_reserved(grant)
    sent = await h.sent()
    assert [(m.status, m.previous) for m, _ in sent if isinstance(m, RunStatusChanged)] == [
        (S.PENDING, S.QUEUED)
    ]
    ((execute, msg_id),) = [(m, i) for m, i in sent if isinstance(m, ExecuteRun)]
    assert msg_id == f"execute:{run.accession_id}"
    assert (execute.bindings, execute.initial_state) == (grant.bindings, {"count": 1})

    await h.runs.on_progress(run.accession_id, S.PREPARING, T0, "wc-1", EDGE)
    await h.runs.on_progress(run.accession_id, S.RUNNING, T0 + timedelta(minutes=1), "wc-1", EDGE)
    assert (await h.runs.get(run.accession_id)).edge_instance == EDGE
    await h.sent()

    clock.now = T0 + timedelta(minutes=6)
    await h.runs.on_finished(finished(run.accession_id, result={"moved": 30.0}))
    sent = await h.sent()
    assert kinds(sent) == [ReleaseAssets]
    assert [i for m, i in sent if isinstance(m, ReleaseAssets)] == [f"release:{run.accession_id}"]
    final = await h.runs.get(run.accession_id)
    assert (final.status, final.result) == (S.COMPLETED, {"moved": 30.0})
    assert await h.history(run.accession_id) == [
        ("queued", None),
        ("pending", "queued"),
        ("preparing", "pending"),
        ("running", "preparing"),
        ("completed", "running"),
    ]


async def test_on_failure_goes_from_the_submission_to_the_run_its_command_and_a_retry(
    h: Harness,
) -> None:
    run = await submit(h, on_failure="rollback")
    assert run.on_failure == "rollback"
    assert (await h.runs.get(run.accession_id)).on_failure == "rollback"
    await h.runs.on_reserved(reserved(run.accession_id))
    (execute,) = [m for m, _ in await h.sent() if isinstance(m, ExecuteRun)]
    assert execute.on_failure == "rollback"
    await h.runs.on_failed_before_start(run.accession_id, ErrorInfo(type="X", message="no"))
    _, again = await h.runs.retry_source(run.accession_id)
    assert again.on_failure == "rollback"
    assert (await submit(h)).on_failure == "keep"


async def test_mode_not_before_and_deadline_go_from_the_submission_to_the_reservation(
    h: Harness, clock: Clock
) -> None:
    hour = timedelta(hours=1)
    later = await h.runs.create(
        SubmitRun(protocol_name="mix", not_before=T0 + hour, deadline=T0 + 2 * hour), resolved()
    )
    now = await h.runs.create(SubmitRun(protocol_name="mix", mode="immediate"), resolved())
    assert (later.mode, later.not_before, later.deadline) == ("queued", T0 + hour, T0 + 2 * hour)
    assert (await h.runs.get(later.accession_id)) == later
    assert (await h.runs.get(now.accession_id)).mode == "immediate"
    reserves = {m.run_id: m for m, _ in await h.sent() if isinstance(m, ReserveAssets)}
    asked = reserves[later.accession_id]
    assert (asked.not_before, asked.deadline) == (T0 + hour, T0 + 2 * hour)
    assert not reserves[later.accession_id].immediate
    assert reserves[now.accession_id].immediate


async def test_a_deadline_already_passed_is_refused_and_nothing_is_queued(
    h: Harness, clock: Clock
) -> None:
    with pytest.raises(InvalidRequest, match="deadline"):
        await submit(h, deadline=T0 - timedelta(seconds=1))
    assert await h.sent() == []


async def test_an_immediate_run_refused_keeps_who_holds_its_assets(h: Harness) -> None:
    run = await submit(h, mode="immediate")
    error = ErrorInfo(
        type="ReservationFailed",
        message="held by run x",
        code="assets_unavailable",
        details={"blocked_by": ["x"], "reason": "assets_busy"},
    )
    await h.runs.on_failed_before_start(run.accession_id, error)
    failed = await h.runs.get(run.accession_id)
    assert (failed.status, failed.error) == (S.FAILED, error)


async def test_each_event_delivered_twice_changes_the_run_once(h: Harness) -> None:
    run = await submit(h)
    run_id = run.accession_id
    grant = reserved(run_id)
    steps: list[Any] = [
        lambda: h.runs.on_reserved(grant),
        lambda: h.runs.on_progress(run_id, S.PREPARING, T0, "wc-1", EDGE),
        lambda: h.runs.on_progress(run_id, S.RUNNING, T0, "wc-1", EDGE),
        lambda: h.runs.on_finished(finished(run_id)),
    ]
    for step in steps:
        await step()
        first = await h.sent()
        assert first, "the first delivery changes the run"
        before = await h.runs.get(run_id)
        await step()
        assert await h.sent() == [], "the second delivery emits nothing"
        assert await h.runs.get(run_id) == before
    assert len(await h.history(run_id)) == 5


async def test_a_redelivered_grant_never_releases_a_live_run(h: Harness) -> None:
    run = await running(h)
    grant = reserved(run.accession_id, run.bindings[0].asset_id)

    await h.runs.on_reserved(grant)

    assert await h.sent() == []  # no ReleaseAssets: the run keeps its leases
    assert (await h.runs.get(run.accession_id)).status == S.RUNNING


async def test_a_grant_for_an_unknown_run_is_left_alone(h: Harness) -> None:
    await h.runs.on_reserved(reserved(uuid.uuid4()))  # e.g. a hold made by another client

    assert await h.sent() == []


async def test_a_grant_for_a_run_that_ended_is_given_back(h: Harness) -> None:
    run = await submit(h)
    await h.runs.on_failed_before_start(run.accession_id, ErrorInfo(type="X", message="no"))
    await h.sent()

    await h.runs.on_reserved(reserved(run.accession_id))

    assert kinds(await h.sent()) == [ReleaseAssets]


async def test_a_reservation_failure_delivered_twice_fails_the_run_once(h: Harness) -> None:
    run = await submit(h)
    error = ErrorInfo(type="ReservationFailed", message="no plate", code="no_matching_assets")
    await h.runs.on_failed_before_start(run.accession_id, error)
    assert await h.statuses() == [(S.FAILED, S.QUEUED)]
    await h.runs.on_failed_before_start(run.accession_id, error)
    assert await h.sent() == []
    assert (await h.runs.get(run.accession_id)).error == error


async def test_reports_from_another_edge_process_are_not_the_runs(h: Harness) -> None:
    """Refused, never applied, and each recorded once as a security event (a redelivery of
    the same forged report adds nothing)."""
    run = await running(h, EDGE)
    forged = finished(run.accession_id, "failed", edge_instance=OTHER_EDGE)

    for _ in range(2):
        await h.runs.on_progress(run.accession_id, S.PAUSED, T0, "wc-1", OTHER_EDGE)
        await h.runs.on_finished(forged)

    sent = await h.sent()
    refused = [m for m, _ in sent]
    assert [type(m) for m in refused] == [RunEventRefused] * 4
    assert [(m.event, m.edge_instance, m.run_edge_instance) for m in refused[:2]] == [
        ("RunPaused", OTHER_EDGE, EDGE),
        ("RunFinished", OTHER_EDGE, EDGE),
    ]
    assert len({msg_id for _, msg_id in sent}) == 2  # the stream keeps one of each
    assert (await h.runs.get(run.accession_id)).status == S.RUNNING


async def test_reports_from_another_workcell_are_refused_naming_both(h: Harness) -> None:
    """A workcell's orchestrator may publish only under its own key: a report about a run on
    another workcell is somebody else's claim, whatever edge process it names."""
    run = await running(h, EDGE)

    await h.runs.on_finished(finished(run.accession_id, "completed", workcell="wc-2"))

    [(refused, _)] = await h.sent()
    assert isinstance(refused, RunEventRefused)
    assert (refused.workcell, refused.run_workcell) == ("wc-2", "wc-1")
    assert "wc-2" in refused.reason and "wc-1" in refused.reason
    assert (await h.runs.get(run.accession_id)).status == S.RUNNING


async def test_a_process_that_takes_a_redelivered_command_takes_the_run(h: Harness) -> None:
    run = await submit(h)
    await h.runs.on_reserved(reserved(run.accession_id))
    await h.runs.on_progress(run.accession_id, S.PREPARING, T0, "wc-1", EDGE)
    await h.runs.on_progress(run.accession_id, S.PREPARING, T0, "wc-1", OTHER_EDGE)  # EDGE died

    assert (await h.runs.get(run.accession_id)).edge_instance == OTHER_EDGE


async def test_of_two_processes_preparing_a_run_the_one_that_starts_it_has_it(
    h: Harness,
) -> None:
    run = await submit(h)
    await h.runs.on_reserved(reserved(run.accession_id))
    await h.runs.on_progress(run.accession_id, S.PREPARING, T0, "wc-1", EDGE)
    await h.runs.on_progress(run.accession_id, S.PREPARING, T0, "wc-1", OTHER_EDGE)
    await h.runs.on_progress(run.accession_id, S.RUNNING, T0, "wc-1", EDGE)  # EDGE won the leases

    await h.runs.on_finished(finished(run.accession_id, "failed", edge_instance=OTHER_EDGE))

    after = await h.runs.get(run.accession_id)
    assert (after.status, after.edge_instance) == (S.RUNNING, EDGE)


async def test_a_lost_edge_leaves_its_runs_to_an_operator(h: Harness) -> None:
    run = await running(h, EDGE)
    other = await running(h, OTHER_EDGE)
    seen = EdgeRun(run_id=run.accession_id, phase="running", last_call="mix_well")
    lost = Lost(EDGE, "wc-1", "no heartbeat", {str(run.accession_id): seen})

    assert await h.runs.edge_lost(lost) == [run.accession_id]
    sent = await h.sent()
    ((hold, hold_id),) = [(m, i) for m, i in sent if isinstance(m, HoldAssets)]
    assert hold.run_id == run.accession_id and hold_id == f"hold:{run.accession_id}"
    after = await h.runs.get(run.accession_id)
    assert after.status == S.REQUIRES_INTERVENTION
    assert after.error is not None and after.error.code == "edge_lost"
    (_, reason), *_ = [(s, r) for s, r in [(after.status, after.error.message)]]
    assert "mix_well" in reason and EDGE in reason and "running" in reason
    assert (await h.runs.get(other.accession_id)).status == S.RUNNING

    assert await h.runs.edge_lost(lost) == []  # reported twice: nothing more
    assert await h.sent() == []


async def test_a_run_only_the_lost_heartbeat_knew_of_needs_an_operator(h: Harness) -> None:
    """The edge took the command and died before its ``RunPreparing`` reached NATS."""
    run = await submit(h)
    await h.runs.on_reserved(reserved(run.accession_id))
    await h.sent()
    seen = EdgeRun(run_id=run.accession_id, phase="preparing")
    other = await submit(h)
    await h.runs.on_reserved(reserved(other.accession_id))  # pending, never taken: left alone

    lost = Lost(EDGE, "wc-1", "no heartbeat", {str(run.accession_id): seen})
    assert await h.runs.edge_lost(lost) == [run.accession_id]

    assert (await h.runs.get(run.accession_id)).status == S.REQUIRES_INTERVENTION
    assert (await h.runs.get(other.accession_id)).status == S.PENDING


def lapsed(run_id: uuid.UUID, held: bool = True) -> LeaseExpired:
    asset_id = uuid.uuid4()
    return LeaseExpired(
        asset_id=asset_id,
        run_id=run_id,
        lease_key=f"asset.{asset_id}",
        token=42,
        at=T0,
        held=held,
        edge_instance=EDGE if held else None,
    )


async def test_a_claimed_lease_that_ran_out_leaves_its_run_to_an_operator(h: Harness) -> None:
    """Whatever the lease TTL and the edge grace period: the lease ran out before the edge was
    declared lost, the asset-manager held it, and the run needs an operator now."""
    run = await running(h, EDGE)
    event = lapsed(run.accession_id)

    assert await h.runs.lease_lapsed(event)
    ((hold, hold_id),) = [(m, i) for m, i in await h.sent() if isinstance(m, HoldAssets)]
    assert hold.run_id == run.accession_id and hold_id == f"hold:{run.accession_id}"
    after = await h.runs.get(run.accession_id)
    assert after.status == S.REQUIRES_INTERVENTION
    assert after.error is not None and after.error.code == "lease_lapsed"
    assert event.lease_key in after.error.message and EDGE in after.error.message

    assert not await h.runs.lease_lapsed(event)  # delivered twice: nothing more
    assert await h.sent() == []


async def test_a_lapsed_lease_of_a_run_not_yet_reported_preparing_needs_an_operator(
    h: Harness,
) -> None:
    """The edge claimed the run and died before its ``RunPreparing`` reached the scheduler."""
    run = await submit(h)
    await h.runs.on_reserved(reserved(run.accession_id))
    await h.sent()

    assert await h.runs.lease_lapsed(lapsed(run.accession_id))
    assert (await h.runs.get(run.accession_id)).status == S.REQUIRES_INTERVENTION


async def test_an_unclaimed_or_late_lease_expiry_changes_no_run(h: Harness) -> None:
    run = await running(h, EDGE)
    assert not await h.runs.lease_lapsed(lapsed(run.accession_id, held=False))
    assert (await h.runs.get(run.accession_id)).status == S.RUNNING

    await h.runs.on_finished(finished(run.accession_id))
    await h.sent()
    assert not await h.runs.lease_lapsed(lapsed(run.accession_id))  # it ended: released
    assert await h.sent() == []
    assert (await h.runs.get(run.accession_id)).status == S.COMPLETED


async def test_a_restarted_edge_releases_runs_of_its_dead_predecessor(h: Harness) -> None:
    dead = await running(h, EDGE)
    alive = await running(h, OTHER_EDGE)
    lost = Lost(None, "wc-1", "the orchestrator of wc-1 restarted")

    marked = await h.runs.edge_replaced("wc-1", {OTHER_EDGE}, lost)

    assert marked == [dead.accession_id]
    assert (await h.runs.get(dead.accession_id)).status == S.REQUIRES_INTERVENTION
    assert (await h.runs.get(alive.accession_id)).status == S.RUNNING


async def test_an_operator_resolves_an_intervention(h: Harness, clock: Clock) -> None:
    run = await running(h, EDGE)
    with pytest.raises(InvalidTransition):
        await h.runs.control(resolve(run.accession_id), Edges(EDGE))
    await h.runs.edge_lost(Lost(EDGE, "wc-1", "gone"))
    await h.sent()

    clock.now = T0 + timedelta(hours=1)
    view = await h.runs.control(resolve(run.accession_id), Edges())

    assert (view.status, view.finished_at) == (S.FAILED, clock.now)
    assert kinds(await h.sent()) == [ReleaseAssets]
    assert (await h.history(run.accession_id))[-1] == ("failed", "requires_intervention")
    with pytest.raises(InvalidTransition):
        await h.runs.control(resolve(run.accession_id), Edges())


def resolve(run_id: uuid.UUID, outcome: Any = "failed") -> ControlRun:
    return ControlRun(run_id=run_id, action="resolve", outcome=outcome, reason="checked the deck")


async def test_cancel_ends_in_a_terminal_state_whoever_has_the_run(h: Harness) -> None:
    queued = await submit(h)
    view = await h.runs.control(cancel(queued), Edges(EDGE))
    assert view.status == S.CANCELLED and kinds(await h.sent()) == [ReleaseAssets]

    pending = await submit(h)
    await h.runs.on_reserved(reserved(pending.accession_id))
    await h.sent()
    view = await h.runs.control(cancel(pending), Edges(EDGE))
    assert view.status == S.CANCELLED  # no edge has it yet: the scheduler cancels it
    assert kinds(await h.sent()) == [ControlRunExecution, ReleaseAssets]

    live = await running(h, EDGE)
    view = await h.runs.control(cancel(live), Edges(EDGE))
    assert view.status == S.CANCELING  # its edge winds it down at the next checkpoint
    assert kinds(await h.sent()) == [ControlRunExecution]

    orphan = await running(h, OTHER_EDGE)
    view = await h.runs.control(cancel(orphan), Edges(EDGE))  # its edge is gone
    assert view.status == S.CANCELLED
    assert kinds(await h.sent()) == [ControlRunExecution, ReleaseAssets]


def cancel(run: RunView) -> ControlRun:
    return ControlRun(run_id=run.accession_id, action="cancel")


async def test_an_unconfirmed_cancel_does_not_stay_canceling(h: Harness) -> None:
    stuck = await running(h, EDGE)
    await h.runs.control(cancel(stuck), Edges(EDGE))
    await h.sent()
    await h.runs.cancel_overdue(stuck.accession_id, Edges(EDGE), 60)
    assert (await h.runs.get(stuck.accession_id)).status == S.REQUIRES_INTERVENTION
    assert kinds(await h.sent()) == [HoldAssets]

    gone = await running(h, EDGE)
    await h.runs.control(cancel(gone), Edges(EDGE))
    await h.sent()
    await h.runs.cancel_overdue(gone.accession_id, Edges(), 60)
    assert (await h.runs.get(gone.accession_id)).status == S.CANCELLED
    assert kinds(await h.sent()) == [ReleaseAssets]

    await h.runs.cancel_overdue(gone.accession_id, Edges(), 60)  # again: nothing
    assert await h.sent() == []


async def test_retry_links_both_runs(h: Harness) -> None:
    run = await submit(h, assets={"plate": "p1"}, priority=7, initial_state={"n": 1})
    with pytest.raises(InvalidTransition):
        await h.runs.retry_source(run.accession_id)
    await h.runs.on_failed_before_start(run.accession_id, ErrorInfo(type="X", message="no"))

    original, again = await h.runs.retry_source(run.accession_id)
    assert (again.assets, again.priority, again.initial_state) == ({"plate": "p1"}, 7, {"n": 1})
    assert again.definition_id == original.definition_id
    retried = await h.runs.create(again, resolved(), retry_of=run.accession_id)

    assert retried.retry_of == run.accession_id
    assert (await h.runs.get(run.accession_id)).retried_by == retried.accession_id
    assert ("queued", None) in await h.history(retried.accession_id)


async def test_redrive_asks_again_for_queued_runs_and_keeps_held_ones(h: Harness) -> None:
    queued = await submit(h)
    held = await running(h, EDGE)
    await h.runs.edge_lost(Lost(EDGE, "wc-1", "gone"))
    await h.sent()

    await h.runs.redrive()

    sent = [(type(m), m.run_id) for m, _ in await h.sent()]  # type: ignore[attr-defined]
    assert (ReserveAssets, queued.accession_id) in sent
    assert (HoldAssets, held.accession_id) in sent


async def test_unknown_runs_are_not_found(h: Harness) -> None:
    with pytest.raises(NotFound):
        await h.runs.get(uuid.uuid4())
    with pytest.raises(NotFound):
        await h.runs.control(ControlRun(run_id=uuid.uuid4(), action="cancel"), Edges())
    await h.runs.on_finished(finished(uuid.uuid4()))  # an event for nobody: acknowledged
    assert await h.sent() == []


async def test_who_submitted_and_who_acted_are_recorded(h: Harness) -> None:
    run = await h.runs.create(
        SubmitRun(protocol_name="mix", workcell="wc-1", actor="token:ci"), resolved()
    )
    assert run.submitted_by == "token:ci"
    (queued, _), _ = await h.sent()
    assert isinstance(queued, RunStatusChanged) and queued.actor == "token:ci"

    await h.runs.on_reserved(reserved(run.accession_id))  # the system: no actor
    cancel = ControlRun(run_id=run.accession_id, action="cancel", actor="oidc:alice")
    cancelled = await h.runs.control(cancel, Edges())

    assert cancelled.status == S.CANCELLED and cancelled.submitted_by == "token:ci"
    changes = [m for m, _ in await h.sent() if isinstance(m, RunStatusChanged)]
    assert [(m.status, m.actor) for m in changes] == [
        (S.PENDING, None),
        (S.CANCELLED, "oidc:alice"),
    ]
    assert await h.actors(run.accession_id) == [
        ("queued", "token:ci"),
        ("pending", None),
        ("cancelled", "oidc:alice"),
    ]
    assert (await h.runs.get(run.accession_id)).submitted_by == "token:ci"


async def test_a_run_its_edge_gave_up_keeps_its_leases_for_an_operator(h: Harness) -> None:
    stuck = await running(h, EDGE)
    await h.runs.control(cancel(stuck), Edges(EDGE))
    await h.sent()
    await h.runs.on_finished(finished(stuck.accession_id, "requires_intervention"))
    view = await h.runs.get(stuck.accession_id)
    assert (view.status, view.finished_at) == (S.REQUIRES_INTERVENTION, None)
    assert kinds(await h.sent()) == [HoldAssets]  # held, not released


async def test_what_the_edge_did_to_clean_up_is_in_the_status_history(h: Harness) -> None:
    run = await running(h)
    cleanup = ["liquid_handler: returned the tips on channels [0]"]
    await h.runs.on_finished(finished(run.accession_id, "cancelled", cleanup=cleanup))
    status, reason = (await h.reasons(run.accession_id))[-1]
    assert status == "cancelled"
    assert reason.endswith("clean-up: " + cleanup[0])


async def test_why_a_queued_run_waits_is_on_the_run_until_it_is_placed(h: Harness) -> None:
    run = await submit(h)
    waiting = ReservationWaiting(
        run_id=run.accession_id,
        blocked_by=[],
        reason=WaitReason.WAITING_FOR_EDGE,
        workcells=["wc-1"],
    )
    for _ in range(2):  # delivered twice: the same answer, nothing sent
        await h.runs.on_waiting(waiting)
        view = await h.runs.get(run.accession_id)
        assert (view.waiting_for, view.waiting_since) == ("waiting_for_edge", T0)
        assert await h.sent() == []

    await h.runs.on_reserved(reserved(run.accession_id))
    placed = await h.runs.get(run.accession_id)
    assert (placed.status, placed.waiting_for, placed.waiting_since) == (S.PENDING, None, None)
    await h.runs.on_waiting(waiting)  # a late copy after the grant changes nothing
    assert (await h.runs.get(run.accession_id)).waiting_for is None


async def test_a_run_handed_back_by_a_stopping_edge_is_not_lost_with_it(h: Harness) -> None:
    run = await submit(h)
    await h.runs.on_reserved(reserved(run.accession_id))
    await h.runs.on_progress(run.accession_id, S.PREPARING, T0, "wc-1", EDGE)
    back = RunHandedBack(run_id=run.accession_id, at=T0, workcell="wc-1", edge_instance=EDGE)
    for _ in range(2):
        await h.runs.on_handed_back(back)
        view = await h.runs.get(run.accession_id)
        assert (view.status, view.edge_instance) == (S.PREPARING, None)

    # The stopped process's heartbeat goes; the run is not among its runs any more. The
    # workcell's next process comes up: the run waits for it, it is not its predecessor's.
    assert await h.runs.edge_lost(Lost(EDGE, "wc-1", "stopped", {})) == []
    assert await h.runs.edge_replaced("wc-1", {OTHER_EDGE}, Lost(EDGE, "wc-1", "new", {})) == []
    assert (await h.runs.get(run.accession_id)).status == S.PREPARING
    # The next process of the workcell takes the command and the run.
    await h.runs.on_progress(run.accession_id, S.PREPARING, T0, "wc-1", OTHER_EDGE)
    await h.runs.on_progress(run.accession_id, S.RUNNING, T0, "wc-1", OTHER_EDGE)
    view = await h.runs.get(run.accession_id)
    assert (view.status, view.edge_instance) == (S.RUNNING, OTHER_EDGE)
    # A late hand-back from the old process does not take the run from the new one.
    await h.runs.on_handed_back(back)
    assert (await h.runs.get(run.accession_id)).edge_instance == OTHER_EDGE


async def test_a_hand_back_from_another_workcell_is_refused(h: Harness) -> None:
    run = await submit(h)
    await h.runs.on_reserved(reserved(run.accession_id))
    await h.runs.on_progress(run.accession_id, S.PREPARING, T0, "wc-1", EDGE)
    await h.sent()
    forged = RunHandedBack(run_id=run.accession_id, at=T0, workcell="wc-2", edge_instance=EDGE)
    await h.runs.on_handed_back(forged)
    assert (await h.runs.get(run.accession_id)).edge_instance == EDGE
    assert kinds(await h.sent()) == [RunEventRefused]
