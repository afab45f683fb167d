"""An edge killed mid-run, with a lease TTL far shorter than the time it takes to declare the
edge lost: its run's assets are never handed to the run queued behind it.

The whole stack as processes on real NATS and PostgreSQL, with a 3 s lease TTL and a 30 s grace
period (the edge would be declared lost about 36 s after its death). The orchestrator is
SIGKILLed while ``incubate_plate`` holds ``source_plate``; another run waits for the plate. The
lease runs out 3 s later: the asset-manager holds it for an operator (the run's state is
unknown), the scheduler moves the run to ``requires_intervention``, and the queued run does not
start, however long it waits. Only the operator's ``resolve`` lets it have the plate.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_devstack.stack import DEMO_WORKCELL, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

LEASE_TTL = 3
GRACE = 30
SERVICE_ENV = {
    "ASSET_LOCK_TIMEOUT_SECONDS": str(LEASE_TTL),
    "EDGE_GRACE_SECONDS": str(GRACE),
    "EDGE_HEARTBEAT_TTL_SECONDS": "6",
}


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, make_database: MakeDatabase, admin_token: str
) -> AsyncIterator[Stack]:
    base: Path = tmp_path_factory.mktemp("edge-loss")
    running = Stack(
        base_dir=base,
        fast=True,
        environ={"DATABASE_URL": make_database("edge_loss")},
        admin_token=admin_token,
        service_env=SERVICE_ENV,
    )
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


async def submit(api: httpx.AsyncClient, steps: int, step_seconds: float) -> str:
    body = {
        "protocol_name": "incubate_plate",
        "workcell": DEMO_WORKCELL,
        "parameters": {"steps": steps, "step_seconds": step_seconds},
        "assets": {"plate": "source_plate"},
    }
    response = await api.post("/api/v1/protocols/runs", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["accession_id"])


async def statuses(api: httpx.AsyncClient, run_id: str) -> AsyncIterator[dict[str, Any]]:
    """The run's status changes as the live stream pushes them."""
    async with api.stream("GET", f"/api/v1/protocols/runs/{run_id}/events") as events:
        assert events.status_code == 200
        name = ""
        async for line in events.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name == "scheduler.run.status_changed":
                yield json.loads(line.removeprefix("data: "))


async def reaches(
    api: httpx.AsyncClient, run_id: str, status: str, timeout: float
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        async for change in statuses(api, run_id):
            if change["status"] == status:
                return change
    raise AssertionError("unreachable")


async def never_leaves_queued(api: httpx.AsyncClient, run_id: str, seconds: float) -> None:
    """A bounded negative check: the run records no status but ``queued`` for ``seconds``."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            async for change in statuses(api, run_id):
                assert change["status"] == "queued", change


async def test_a_killed_edges_assets_are_held_not_handed_on(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    victim = await submit(api, steps=600, step_seconds=0.1)  # about a minute on the plate
    await reaches(api, victim, "running", 60)
    queued = await submit(api, steps=2, step_seconds=0.05)

    await stack.kill_service("orchestrator")

    # The lease runs out after LEASE_TTL: the run needs an operator long before its edge could
    # be declared lost (heartbeat TTL + GRACE, about 36 s).
    change = await reaches(api, victim, "requires_intervention", LEASE_TTL + 15)
    assert "ran out" in change["reason"], change
    run = (await api.get(f"/api/v1/protocols/runs/{victim}")).json()
    assert run["error"]["code"] == "lease_lapsed"
    locks = (await api.get("/api/v1/locks")).json()["items"]
    (held,) = [lock for lock in locks if lock["asset_name"] == "source_plate"]
    assert held["run_id"] == victim and held["held_for_intervention"] is True

    # Well past the lease's TTL (several times over), the queued run has not started.
    await never_leaves_queued(api, queued, 4 * LEASE_TTL)
    assert (await api.get(f"/api/v1/protocols/runs/{queued}")).json()["status"] == "queued"

    # An edge comes back; only the operator's decision frees the plate.
    stack.start_service("orchestrator", note="test: restarted after the kill")
    await stack.wait_ready("orchestrator")
    await never_leaves_queued(api, queued, 2.0)
    resolve = {"action": "resolve", "outcome": "failed", "reason": "deck inspected"}
    response = await api.post(f"/api/v1/protocols/runs/{victim}/actions", json=resolve)
    assert response.status_code == 200, response.text
    await reaches(api, queued, "completed", 60)
