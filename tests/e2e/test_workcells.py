"""Every workcell has its edge, or says why not; an edge's stop ends no run.

The whole stack through HTTP, as ``make run`` runs it: an orchestrator for every registered
workcell and for each one registered while it runs. A run for a workcell with no orchestrator
waits holding no lease (``waiting_for_edge``) and starts once one is up; an orchestrator asked to
stop (an upgrade) lets its running protocol finish and takes no new run, which waits for the
next orchestrator; a drained workcell takes no new run until it is resumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from praxis_contracts.runs import RunStatusChanged
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_devstack.stack import DEMO_WORKCELL, Stack, orchestrator_name
from praxis_plr.layout import demo_workcell

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PLATE = {"plate": "source_plate"}


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, make_database: MakeDatabase, admin_token: str
) -> AsyncIterator[Stack]:
    base: Path = tmp_path_factory.mktemp("workcells")
    environ = {"DATABASE_URL": make_database("e2e_workcells")}
    running = Stack(base_dir=base, fast=True, environ=environ, admin_token=admin_token)
    try:
        await running.start()
        await running.seed()
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.api, timeout=60.0, headers=stack.auth_headers
    ) as client:
        yield client


async def register(api: httpx.AsyncClient) -> str:
    name = f"cell-{uuid.uuid4().hex[:6]}"
    drafts = [d.model_dump(mode="json") for d in demo_workcell()]
    response = await api.post("/api/v1/workcells", json={"name": name, "assets": drafts})
    assert response.status_code == 201, response.text
    return name


async def submit(api: httpx.AsyncClient, workcell: str, **parameters: Any) -> str:
    body = {
        "protocol_name": "incubate_plate",
        "workcell": workcell,
        "assets": PLATE,
        "parameters": {"steps": 1, "step_seconds": 0.01, **parameters},
    }
    response = await api.post("/api/v1/protocols/runs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["accession_id"])


async def statuses(api: httpx.AsyncClient, run_id: str) -> AsyncIterator[str]:
    """The run's statuses as its live stream pushes them (ends when the run ends)."""
    async with api.stream("GET", f"/api/v1/protocols/runs/{run_id}/events") as events:
        assert events.status_code == 200
        kind = ""
        async for line in events.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind == "scheduler.run.status_changed":
                yield RunStatusChanged.model_validate_json(line.removeprefix("data: ")).status


async def until(api: httpx.AsyncClient, run_id: str, status: str, timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        async for seen in statuses(api, run_id):
            if seen == status:
                return
    pytest.fail(f"run {run_id} ended without being {status}")


async def ended(api: httpx.AsyncClient, run_id: str, timeout: float = 90) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        async for _ in statuses(api, run_id):
            pass
    run: dict[str, Any] = (await api.get(f"/api/v1/protocols/runs/{run_id}")).json()
    return run


async def waiting_for(api: httpx.AsyncClient, run_id: str, reason: str) -> dict[str, Any]:
    """The run, once the scheduler recorded why it waits (its ReservationWaiting is consumed
    asynchronously: read again on each status event or after a short wait)."""
    async with asyncio.timeout(30):
        while True:
            run: dict[str, Any] = (await api.get(f"/api/v1/protocols/runs/{run_id}")).json()
            if run["waiting_for"] == reason:
                return run
            await asyncio.sleep(0.2)  # the reason is a stored field: no event tells it


async def leases_of(api: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    response = await api.get("/api/v1/locks", params={"protocol_run_accession_id": run_id})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_a_workcell_registered_while_running_gets_an_orchestrator(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    late = await register(api)  # registered before anything serves it
    run_id = await submit(api, late)
    run = await waiting_for(api, run_id, "waiting_for_edge")
    assert run["status"] == "queued"
    assert await leases_of(api, run_id) == []  # it holds nothing while it waits

    ready, started = asyncio.Event(), asyncio.Queue[str]()
    serving = asyncio.create_task(stack.serve_registered_workcells(ready, started))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        done = await ended(api, run_id)
        assert (done["status"], done["workcell_name"]) == ("completed", late)
        assert done["waiting_for"] is None
        assert stack.service(orchestrator_name(late)).process.poll() is None
        assert await asyncio.wait_for(started.get(), 30) == late

        newer = await register(api)  # registered while the stack serves: its edge follows
        assert await asyncio.wait_for(started.get(), 60) == newer
        done = await ended(api, await submit(api, newer))
        assert (done["status"], done["workcell_name"]) == ("completed", newer)
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def test_an_orchestrator_stopping_lets_its_run_finish_and_the_next_takes_new_runs(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    long_run = await submit(api, DEMO_WORKCELL, steps=40, step_seconds=0.1)  # about 4 s
    await until(api, long_run, "running")

    edge = stack.service("orchestrator")
    edge.process.send_signal(signal.SIGTERM)  # an upgrade: the pod is asked to stop
    queued = await submit(api, DEMO_WORKCELL)
    run = await waiting_for(api, queued, "waiting_for_edge")
    assert run["status"] == "queued" and await leases_of(api, queued) == []

    done = await ended(api, long_run)
    assert done["status"] == "completed", done["error"]  # the stop did not end it
    assert done["final_state"]["completed_steps"] == 40
    assert await asyncio.to_thread(edge.process.wait, 60) == 0

    stack.start_service("orchestrator", note="the upgraded orchestrator")
    await stack.wait_ready("orchestrator")
    done = await ended(api, queued)
    assert done["status"] == "completed", done["error"]


async def test_a_drained_workcell_takes_no_new_run_until_resumed(api: httpx.AsyncClient) -> None:
    drained = await api.post(
        f"/api/v1/workcells/{DEMO_WORKCELL}/drain", json={"reason": "preventive maintenance"}
    )
    assert drained.status_code == 200, drained.text
    assert drained.json()["drained"] is True
    try:
        run_id = await submit(api, DEMO_WORKCELL)
        run = await waiting_for(api, run_id, "workcell_drained")
        assert run["status"] == "queued" and await leases_of(api, run_id) == []
        queue = await api.get("/api/v1/protocols/runs", params={"status": "queued"})
        listed = {r["accession_id"]: r for r in queue.json()["items"]}
        assert listed[run_id]["waiting_for"] == "workcell_drained"  # the queue says why
        shown = (await api.get(f"/api/v1/workcells/{DEMO_WORKCELL}")).json()
        assert shown["workcell"]["drain_reason"] == "preventive maintenance"
    finally:
        resumed = await api.post(f"/api/v1/workcells/{DEMO_WORKCELL}/resume")
        assert resumed.status_code == 200, resumed.text
        assert resumed.json()["drained"] is False
    done = await ended(api, run_id)
    assert done["status"] == "completed", done["error"]


async def test_two_gateway_replicas_serve_at_once(stack: Stack, api: httpx.AsyncClient) -> None:
    second = await stack.add_gateway()
    created = await api.post("/api/v1/tokens", json={"name": "replicas", "scopes": ["operate"]})
    assert created.status_code == 201, created.text
    token = created.json()

    async with httpx.AsyncClient(
        base_url=second, timeout=60.0, headers={"Authorization": f"Bearer {token['token']}"}
    ) as other:
        # A token made on one replica is known to the other (the tokens bucket, watched).
        assert await answers(other, 200), "the second replica never accepted the new token"
        submitted = await other.post(
            "/api/v1/protocols/runs",
            json={"protocol_name": "noop", "workcell": DEMO_WORKCELL},
        )
        assert submitted.status_code == 201, submitted.text
        run_id = submitted.json()["accession_id"]
        done = await ended(api, run_id)  # followed live on the first replica
        assert done["status"] == "completed"
        assert done["submitted_by"] == "token:replicas"

        revoked = await api.delete(f"/api/v1/tokens/{token['id']}")
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None
        assert await answers(other, 401), "the second replica kept accepting a revoked token"


async def answers(client: httpx.AsyncClient, status: int, seconds: float = 10.0) -> bool:
    """Whether ``client`` gets ``status`` within ``seconds``: the other replica learns of a
    token change from its watcher of the tokens bucket, which an HTTP client cannot see."""
    for _ in range(int(seconds / 0.1)):
        if (await client.get("/api/v1/workcells")).status_code == status:
            return True
        await asyncio.sleep(0.1)
    return False
