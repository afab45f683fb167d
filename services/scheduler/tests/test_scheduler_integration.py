"""The scheduler's read side (run lists) against a real PostgreSQL.

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
from praxis_contracts.runs import ListRuns, RunView, SubmitRun
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay
from praxis_scheduler.orm import OUTBOX, Base
from praxis_scheduler.queries import RunQueries
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
    with pytest.raises(InvalidRequest):
        await listed(filters={"machine_accession_id": uuid.uuid4()})
    with pytest.raises(InvalidRequest):
        await listed(filters={"property_filters": {"colour": "red"}})
