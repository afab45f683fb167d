"""NATS restarted while a run is in each phase of its life fails no run.

The whole stack as processes on real NATS and PostgreSQL, with a 6 s lease TTL (renewed every
2 s: an outage plus the reconnection must fit within it). One run at a time of
``incubate_plate`` (five 0.3 s steps on ``source_plate``); the moment the run reaches a phase
(seen in its events, pushed), nats-server is stopped, kept down 1.5 s and started again on the
same port and data:

- ``dispatching``: the scheduler dispatched it (``pending``): the edge is accepting it (listing it
  in its heartbeat, claiming its leases);
- ``preparing``: the edge accepted it (``RunPreparing``): preparing it, waiting for a slot,
  confirming its command;
- ``starting``: the protocol is being called (``RunStarted``): its first snapshot and call
  records go out;
- ``running``: in the middle of its steps;
- ``finishing``: its last step completed: ``RunFinished`` and the release go out.

Every run must complete, twice per phase, with no ``requires_intervention`` on the way.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
from nats.aio.msg import Msg

from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_devstack.stack import DEMO_WORKCELL, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(600)]

OUTAGE_SECONDS = 1.5
STEPS, STEP_SECONDS = 5, 0.3
REPEATS = 2
Trigger = Callable[[str, dict[str, Any]], bool]

PHASES: dict[str, Trigger] = {
    "dispatching": lambda subject, event: (
        subject.startswith("praxis.evt.scheduler.run.status_changed")
        and event["status"] == "pending"
    ),
    "preparing": lambda subject, _: subject.startswith("praxis.evt.orchestrator.run.preparing"),
    "starting": lambda subject, _: subject.startswith("praxis.evt.orchestrator.run.started"),
    "running": lambda subject, event: _step(subject, event, 1),
    "finishing": lambda subject, event: _step(subject, event, STEPS - 1),
}


def _step(subject: str, event: dict[str, Any], index: int) -> bool:
    return (
        subject.startswith("praxis.evt.orchestrator.call.recorded")
        and event["function"] == "incubation_step"
        and event["status"] == "completed"
        and event["arguments"].get("index") == index
    )


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, make_database: MakeDatabase, admin_token: str
) -> AsyncIterator[Stack]:
    base: Path = tmp_path_factory.mktemp("nats-restarts")
    running = Stack(
        base_dir=base,
        fast=True,
        environ={"DATABASE_URL": make_database("nats_restarts")},
        admin_token=admin_token,
        service_env={"ASSET_LOCK_TIMEOUT_SECONDS": "6"},
    )
    try:
        await running.start()
        await running.seed()
        yield running
    finally:
        await running.stop()


class Events:
    """Every event on the bus, pushed to whoever waits for one of a run's (a core
    subscription: it comes back with the connection after each restart)."""

    def __init__(self) -> None:
        self.nc: Any = None
        self.waiting: list[tuple[str, Trigger, asyncio.Future[None]]] = []
        self.seen: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        """Each run's events so far: one may come before its id is known (the submission's
        reply can come after its grant)."""

    async def open(self, url: str) -> Events:
        self.nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        await self.nc.subscribe("praxis.evt.>", cb=self._on_event)
        return self

    async def _on_event(self, msg: Msg) -> None:
        event = json.loads(msg.data)
        self.seen.setdefault(str(event.get("run_id")), []).append((msg.subject, event))
        for run_id, trigger, seen in list(self.waiting):
            matches = str(event.get("run_id")) == run_id and trigger(msg.subject, event)
            if matches and not seen.done():
                seen.set_result(None)

    def when(self, run_id: str, trigger: Trigger) -> asyncio.Future[None]:
        seen: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if any(trigger(subject, event) for subject, event in self.seen.get(run_id, [])):
            seen.set_result(None)
        self.waiting.append((run_id, trigger, seen))
        return seen


@pytest.fixture(scope="module")
async def events(stack: Stack) -> AsyncIterator[Events]:
    assert stack.infra is not None
    tap = await Events().open(stack.infra.nats_operator_url)
    yield tap
    await tap.nc.close()


RETRY_SECONDS = 0.5


async def outcome(api: httpx.AsyncClient, run_id: str) -> tuple[list[str], dict[str, Any]]:
    """Every status the run went through (its live stream replays them, then follows it to its
    end) and the run as it ended; followed again while the API recovers."""
    async with asyncio.timeout(120):
        while True:
            seen: list[str] = []
            try:
                async with api.stream("GET", f"/api/v1/protocols/runs/{run_id}/events") as stream:
                    if stream.status_code == 200:
                        name = ""
                        async for line in stream.aiter_lines():
                            if line.startswith("event: "):
                                name = line.removeprefix("event: ")
                            elif name == "scheduler.run.status_changed" and line.startswith("data"):
                                seen.append(json.loads(line.removeprefix("data: "))["status"])
                run = (await api.get(f"/api/v1/protocols/runs/{run_id}")).json()
                if run.get("status") in ("completed", "failed", "cancelled"):
                    return seen, dict(run)
            except httpx.HTTPError:
                pass
            await asyncio.sleep(RETRY_SECONDS)  # the API is down with NATS: back off


@pytest.mark.parametrize("phase", list(PHASES))
async def test_a_nats_restart_in_each_phase_fails_no_run(
    stack: Stack, events: Events, phase: str
) -> None:
    async with httpx.AsyncClient(
        base_url=stack.api, timeout=30.0, headers=stack.auth_headers
    ) as api:
        for _ in range(REPEATS):
            response = await api.post(
                "/api/v1/protocols/runs",
                json={
                    "protocol_name": "incubate_plate",
                    "workcell": DEMO_WORKCELL,
                    "parameters": {"steps": STEPS, "step_seconds": STEP_SECONDS},
                    "assets": {"plate": "source_plate"},
                },
            )
            assert response.status_code == 201, response.text
            run_id = str(response.json()["accession_id"])
            reached = events.when(run_id, PHASES[phase])
            await asyncio.wait_for(reached, 60)

            await stack.stop_nats()
            await asyncio.sleep(OUTAGE_SECONDS)  # the outage itself
            await stack.start_nats()

            seen, run = await outcome(api, run_id)
            assert run["status"] == "completed", (phase, run.get("error"))
            assert "requires_intervention" not in seen, (phase, seen)
