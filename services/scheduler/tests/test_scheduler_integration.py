"""The scheduler's read side (run lists) against a real PostgreSQL.

One migrated database for the module; each test uses its own protocol name, so list queries
filtered by it see only that test's runs. A settable clock makes ``created_at`` predictable.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

import praxis_scheduler
from praxis_contracts.assets import AssetBinding, AssetsReserved
from praxis_contracts.common import ErrorInfo, RunStatus, SearchFilters
from praxis_contracts.errors import InvalidRequest
from praxis_contracts.protocols import (
    AssetRequirementSpec,
    ProtocolDefinition,
    ProtocolFunctionSpec,
    ResolvedProtocol,
)
from praxis_contracts.runs import SUMMARY_ERROR_CHARS, ListRuns, RunSummary, RunView, SubmitRun
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_devstack.testdata import BULK_PROTOCOLS, BULK_STATUSES, bulk_runs_sql
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay
from praxis_scheduler.orm import OUTBOX, Base
from praxis_scheduler.queries import PAGE_BUDGET_BYTES, RunQueries, within_budget
from praxis_scheduler.repository import sql_units
from praxis_scheduler.service import RunService

pytestmark = pytest.mark.integration

MIGRATIONS = Path(praxis_scheduler.__file__).parent / "migrations"
PLATE = "pylabrobot.resources.plate.Plate"
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
async def database(make_database: MakeDatabase) -> AsyncIterator[Database]:
    db = Database(make_database("sched_list"), "scheduler")
    await db.migrate(MIGRATIONS, Base.metadata)
    yield db
    await db.dispose()


class Runs:
    def __init__(self, db: Database, clock: Clock) -> None:
        relay = OutboxRelay(db, OUTBOX, lambda: None)  # type: ignore[arg-type, return-value]
        self.service = RunService(sql_units(db, relay), clock=clock)
        self.queries = RunQueries(db)
        self.on_reserved = self.service.on_reserved
        self.on_failed_before_start = self.service.on_failed_before_start
        self.list = self.queries.list


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def runs(database: Database, clock: Clock) -> Runs:
    return Runs(database, clock)


def resolved(name: str) -> ResolvedProtocol:
    spec = ProtocolFunctionSpec(
        name=name,
        version="1.2.0",
        module="protos.mix",
        qualname=name,
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
    return ResolvedProtocol(definition=definition, parameters={})


def protocol_name() -> str:
    return f"mix_{uuid.uuid4().hex[:10]}"


async def submit(runs: Runs, name: str, **fields: Any) -> RunView:
    fields.setdefault("workcell", "wc-1")
    return await runs.service.create(SubmitRun(protocol_name=name, **fields), resolved(name))


def reserved(run_id: uuid.UUID) -> AssetsReserved:
    asset_id = uuid.uuid4()
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


async def test_list_runs_filters_sorts_and_pages(runs: Runs, clock: Clock) -> None:
    name = protocol_name()
    made = []
    for hour, priority in enumerate((3, 1, 4, 2)):
        clock.now = T0 + timedelta(hours=hour)
        made.append(await submit(runs, name, priority=priority))
    ids = [r.accession_id for r in made]
    await runs.on_reserved(reserved(ids[1]))
    error = ErrorInfo(type="ReservationFailed", message="no plate")
    await runs.on_failed_before_start(ids[3], error)
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
    assert await listed(filters={"machine_accession_id": uuid.uuid4()}) == ([], 0)
    with pytest.raises(InvalidRequest):
        await listed(filters={"parent_accession_id": uuid.uuid4()})
    with pytest.raises(InvalidRequest):
        await listed(filters={"property_filters": {"colour": "red"}})


async def test_list_items_are_summaries_filtered_by_bound_asset(runs: Runs) -> None:
    """Lists carry no result, states or traceback; ``resource_accession_id`` and
    ``machine_accession_id`` find the runs bound to an asset."""
    name = protocol_name()
    bound, other, broken = [await submit(runs, name) for _ in range(3)]
    grant = reserved(bound.accession_id)
    await runs.on_reserved(grant)
    await runs.on_reserved(reserved(other.accession_id))
    long_error = ErrorInfo(type="ValueError", message="m" * 5_000, traceback="t" * 50_000)
    await runs.on_failed_before_start(broken.accession_id, long_error)

    plate_id = grant.bindings[0].asset_id
    page = await runs.list(ListRuns(filters=SearchFilters(resource_accession_id=plate_id)))
    assert [r.accession_id for r in page.items] == [bound.accession_id] and page.total == 1
    only = page.items[0]
    assert only.assets == {"plate": "source_plate"}
    assert only.parameters == {}
    assert not {"result", "final_state", "asset_states", "bindings"} & set(only.model_dump())
    by_machine = ListRuns(filters=SearchFilters(machine_accession_id=plate_id))
    assert (await runs.list(by_machine)).total == 1  # any bound asset's id matches
    both = SearchFilters(resource_accession_id=plate_id, machine_accession_id=uuid.uuid4())
    assert (await runs.list(ListRuns(filters=both))).total == 0  # all filters must hold

    failed = await runs.list(ListRuns(protocol_name=name, status=[RunStatus.FAILED]))
    assert failed.items[0].error is not None
    assert failed.items[0].error.type == "ValueError"
    assert failed.items[0].error.message == "m" * SUMMARY_ERROR_CHARS
    assert len(failed.model_dump_json()) < 2_000  # no 50 KB traceback in the list


# -- lab-sized data -----------------------------------------------------------------------------

BULK_RUNS = 10_000
BULK_PLATES = 50
MAX_PAGE_BYTES = PAGE_BUDGET_BYTES + 1024  # items within budget, plus the page's envelope


@dataclass(frozen=True)
class BulkRun:
    """What the bulk insert gives run ``i`` (the SQL below derives the same from ``i``)."""

    i: int
    status: str
    protocol: str
    workcell: uuid.UUID
    machine: uuid.UUID
    plate: uuid.UUID
    created_at: datetime


@dataclass(frozen=True)
class Bulk:
    runs: RunQueries
    rows: list[BulkRun]
    workcells: list[uuid.UUID]
    machines: list[uuid.UUID]
    plates: list[uuid.UUID]


def _bulk_rows(workcells: list[uuid.UUID], machines: list[uuid.UUID], plates: list[uuid.UUID]):
    return [
        BulkRun(
            i=i,
            status=BULK_STATUSES[i % len(BULK_STATUSES)],
            protocol=f"proto_{i % BULK_PROTOCOLS}",
            workcell=workcells[i % len(workcells)],
            machine=machines[i % len(machines)],
            plate=plates[i % len(plates)],
            created_at=T0 + timedelta(minutes=i),
        )
        for i in range(BULK_RUNS)
    ]


@pytest.fixture(scope="module")
async def bulk(make_database: MakeDatabase) -> AsyncIterator[Bulk]:
    """A database of its own holding 10,000 runs (totals are exact)."""
    db = Database(make_database("sched_bulk"), "scheduler")
    await db.migrate(MIGRATIONS, Base.metadata)
    workcells, machines = [uuid.uuid4() for _ in range(3)], [uuid.uuid4() for _ in range(2)]
    plates = [uuid.uuid4() for _ in range(BULK_PLATES)]
    async with db.transaction() as session:
        await session.execute(
            text(bulk_runs_sql(workcells, machines, plates, runs=BULK_RUNS, start=T0))
        )
        await session.execute(text("ANALYZE scheduler.protocol_runs"))
    yield Bulk(RunQueries(db), _bulk_rows(workcells, machines, plates), workcells, machines, plates)
    await db.dispose()


async def _page_through(
    runs: RunQueries, limit: int, query: dict[str, Any]
) -> tuple[list[RunSummary], int, list[int]]:
    """Every page of a list (limit ``limit``): the items, the total, each page's JSON size."""
    items: list[RunSummary] = []
    sizes: list[int] = []
    filters = query.pop("filters", {})
    while True:
        page = await runs.list(
            ListRuns(filters=SearchFilters(limit=limit, offset=len(items), **filters), **query)
        )
        sizes.append(len(page.model_dump_json().encode()))
        items.extend(page.items)
        if not page.items or len(items) >= page.total:
            return items, page.total, sizes


def _sort_key(run: RunSummary, field: str) -> Any:
    return getattr(run, field.lstrip("-"))


async def test_ten_thousand_runs_page_with_every_filter(bulk: Bulk) -> None:
    rows = bulk.rows
    window = (T0 + timedelta(minutes=2_000), T0 + timedelta(minutes=7_500))
    cases: list[tuple[dict[str, Any], Callable[[BulkRun], bool]]] = [
        ({}, lambda r: True),
        ({"status": [RunStatus.FAILED]}, lambda r: r.status == "failed"),
        (
            {"status": [RunStatus.QUEUED, RunStatus.RUNNING]},
            lambda r: r.status in ("queued", "running"),
        ),
        ({"protocol_name": "proto_3"}, lambda r: r.protocol == "proto_3"),
        (
            {"filters": {"date_range_start": window[0], "date_range_end": window[1]}},
            lambda r: window[0] <= r.created_at < window[1],
        ),
        (
            {"filters": {"workcell_accession_id": bulk.workcells[1]}},
            lambda r: r.workcell == bulk.workcells[1],
        ),
        (
            {"filters": {"resource_accession_id": bulk.plates[7]}},
            lambda r: r.plate == bulk.plates[7],
        ),
        (
            {"filters": {"machine_accession_id": bulk.machines[0]}},
            lambda r: r.machine == bulk.machines[0],
        ),
        (
            {
                "status": [RunStatus.COMPLETED],
                "protocol_name": "proto_1",
                "filters": {
                    "machine_accession_id": bulk.machines[1],
                    "workcell_accession_id": bulk.workcells[2],
                    "date_range_start": window[0],
                },
            },
            lambda r: (
                r.status == "completed"
                and r.protocol == "proto_1"
                and r.machine == bulk.machines[1]
                and r.workcell == bulk.workcells[2]
                and r.created_at >= window[0]
            ),
        ),
    ]
    largest = 0
    for query, wanted in cases:
        expected = sum(1 for r in rows if wanted(r))
        items, total, sizes = await _page_through(bulk.runs, 1000, dict(query))
        assert total == expected, query
        assert len({r.accession_id for r in items}) == expected, query
        assert [r.created_at for r in items] == sorted((r.created_at for r in items), reverse=True)
        largest = max(largest, *sizes)
        if not query:
            unfiltered = sizes[0]
    assert largest < MAX_PAGE_BYTES, largest

    for sort_by in (
        "priority",
        "-priority",
        "status",
        "protocol_name",
        "created_at",
        "-updated_at",
    ):
        items, total, sizes = await _page_through(
            bulk.runs, 1000, {"filters": {"sort_by": sort_by}}
        )
        assert total == BULK_RUNS and len({r.accession_id for r in items}) == BULK_RUNS, sort_by
        keys = [_sort_key(r, sort_by) for r in items]
        assert keys == sorted(keys, reverse=sort_by.startswith("-")), sort_by
        assert max(sizes) < MAX_PAGE_BYTES

    # Failed runs carry an error summary: 1,000 of them pass the budget and the page is cut.
    failed = await bulk.runs.list(
        ListRuns(status=[RunStatus.FAILED], filters=SearchFilters(limit=1000))
    )
    assert 0 < len(failed.items) < 1000 and failed.total == BULK_RUNS // len(BULK_STATUSES)
    assert len(failed.model_dump_json()) <= MAX_PAGE_BYTES

    page = await bulk.runs.list(ListRuns(filters=SearchFilters(limit=50, sort_by="created_at")))
    assert page.total == BULK_RUNS and len(page.items) == 50
    print(
        f"bytes per page: 50 runs {len(page.model_dump_json())}, "
        f"1000 runs {unfiltered} (unfiltered), largest {largest}"
    )
    assert len(page.model_dump_json()) < 50 * 1024
    assert page.items[0].parameters is None  # run 0's parameters are over 1 KB
    assert page.items[1].parameters == {"volume": 1, "tag": "bulk-1"}
    assert page.items[1].error is not None and len(page.items[1].error.message) == 200


def test_a_page_is_cut_to_its_byte_budget() -> None:
    now = datetime.now(UTC)
    run = RunSummary(
        accession_id=uuid.uuid4(),
        protocol_name="p" * 200,
        protocol_version="1",
        status=RunStatus.QUEUED,
        created_at=now,
        updated_at=now,
    )
    size = len(run.model_dump_json()) + 1
    assert within_budget([run] * 10, budget=3 * size) == [run] * 3
    assert within_budget([run] * 2, budget=1) == [run]  # never an empty page
    assert within_budget([], budget=1) == []
