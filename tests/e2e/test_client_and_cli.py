"""The typed client (``praxis_client``) against the whole stack: replies as contract models,
errors as the contract's exceptions, lists paged, the live stream resumed after the gateway is
killed mid-run."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest

from praxis_client import AsyncClient, Client, StreamEvent, calls, correlation_of, status_of
from praxis_contracts.common import RunStatus
from praxis_contracts.errors import NotFound, Unauthenticated
from praxis_contracts.runs import FunctionCallRecorded, RunStatusChanged
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_devstack.stack import DEMO_WORKCELL, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PLATES = {"source_plate": "source_plate", "dest_plate": "dest_plate"}


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, make_database: MakeDatabase, admin_token: str
) -> AsyncIterator[Stack]:
    base: Path = tmp_path_factory.mktemp("client-stack")
    running = Stack(
        base_dir=base,
        fast=True,
        environ={"DATABASE_URL": make_database("client")},
        admin_token=admin_token,
    )
    try:
        await running.start()
        await running.seed()
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def praxis(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with stack.client() as client:
        yield client


async def test_a_run_submitted_followed_and_read_back_as_contract_models(
    praxis: AsyncClient,
) -> None:
    run = await praxis.submit_run(
        "transfer",
        workcell=DEMO_WORKCELL,
        parameters={"volume": 10, "wells": ["A1", "B1"]},
        assets=PLATES,
    )
    assert run.status == RunStatus.QUEUED
    events = [event async for event in praxis.events(run.accession_id)]
    ids = [e.id for e in events]
    assert all(i is not None for i in ids) and ids == sorted(set(ids))  # type: ignore[type-var]
    messages = [e.message() for e in events]
    assert isinstance(messages[-1], RunStatusChanged)
    assert messages[-1].status == RunStatus.COMPLETED
    recorded = [m for m in messages if isinstance(m, FunctionCallRecorded)]
    assert {m.function for m in recorded} >= {"transfer", "move_liquid"}

    ended = await praxis.get_run(run.accession_id)
    assert ended.status == RunStatus.COMPLETED
    page = await praxis.list_calls(run.accession_id)
    one_by_one = [c async for c in praxis.paginate(calls.list_calls(run.accession_id, limit=1))]
    assert [c.sequence for c in one_by_one] == [c.sequence for c in page.items]
    assert len(one_by_one) == page.total >= 3
    summaries = [r async for r in praxis.paginate(calls.list_runs(status=["completed"]))]
    assert run.accession_id in {r.accession_id for r in summaries}

    # Resuming after an event gives exactly the events after it.
    after = [e async for e in praxis.events(run.accession_id, last_event_id=ids[2])]
    assert after == events[3:]


async def test_errors_come_back_as_the_contracts_exceptions(stack: Stack) -> None:
    async with stack.client() as praxis:
        with pytest.raises(NotFound) as missing:
            await praxis.get_run(uuid4())
    assert status_of(missing.value) == 404 and correlation_of(missing.value)
    async with AsyncClient(stack.api, "not-a-token") as stranger:
        with pytest.raises(Unauthenticated) as refused:
            await stranger.list_runs()
    assert status_of(refused.value) == 401


def test_the_sync_client_is_the_same_api(stack: Stack) -> None:
    with Client(stack.api, stack.admin_token, timeout=60.0) as praxis:
        run = praxis.submit_run("noop", workcell=DEMO_WORKCELL)
        events = list(praxis.events(run.accession_id))
        assert events[-1].ends_run
        assert praxis.get_run(run.accession_id).status == RunStatus.COMPLETED
        assert praxis.get_workcell(DEMO_WORKCELL).workcell.name == DEMO_WORKCELL
        with pytest.raises(NotFound):
            praxis.get_run(uuid4())


async def test_the_stream_resumes_across_a_gateway_killed_mid_run(
    stack: Stack, praxis: AsyncClient
) -> None:
    run = await praxis.submit_run(
        "incubate", workcell=DEMO_WORKCELL, parameters={"steps": 30, "step_seconds": 0.2}
    )
    seen: list[StreamEvent] = []
    killed = False
    async for event in praxis.events(run.accession_id):
        seen.append(event)
        if not killed and event.type == "orchestrator.call.recorded":
            killed = True
            await stack.kill_service("gateway")
            stack.start_service("gateway", "killed under a client's event stream")
    assert killed and seen[-1].ends_run
    assert RunStatus(seen[-1].data["status"]) == RunStatus.COMPLETED
    # Nothing lost, nothing twice: the same events as one unbroken read of the stream.
    await stack.wait_ready("gateway")
    whole = [e async for e in praxis.events(run.accession_id)]
    assert seen == whole
