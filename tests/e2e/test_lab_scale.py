"""A workcell at lab scale, end to end: a filled Hamilton STAR deck and labware in storage.

Ten tip racks and thirty plates on the deck (two tip carriers, six plate carriers), thirty more
plates in the workcell's storage (no parent, off the deck). Its layout is about 6 MB of JSON, six
times what one NATS message may carry: the inventory, the gateway and the orchestrator must all
handle it (by claim check through the object store), and runs on it must work.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from praxis_contracts.topology import EVENTS
from praxis_devstack.pytest_plugin import MakeDatabase, drained
from praxis_devstack.stack import Stack
from praxis_devstack.testdata import (
    CARRIER_SITES,
    STAR_PLATE_CARRIERS,
    STAR_TIP_CARRIERS,
    star_labware,
    star_with_empty_carriers,
)

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

WORKCELL = "star"
STORED_PLATES = 30
LABWARE = STAR_TIP_CARRIERS * CARRIER_SITES + STAR_PLATE_CARRIERS * CARRIER_SITES + STORED_PLATES
COR_96 = "cor_96_wellplate_360uL_Fb"


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, make_database: MakeDatabase
) -> AsyncIterator[Stack]:
    base: Path = tmp_path_factory.mktemp("lab-scale")
    running = Stack(
        base_dir=base,
        fast=True,
        environ={"DATABASE_URL": make_database("lab_scale")},
        workcell=WORKCELL,
    )
    try:
        await running.start()
        await running.seed()
        yield running
    finally:
        await running.stop()


@pytest.fixture(scope="module")
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.api, timeout=120.0, headers=stack.auth_headers
    ) as client:
        yield client


@pytest.fixture(scope="module")
async def workcell(api: httpx.AsyncClient) -> dict[str, Any]:
    created = await api.post(
        "/api/v1/workcells", json={"name": WORKCELL, "assets": star_with_empty_carriers(WORKCELL)}
    )
    assert created.status_code == 201, created.text

    async def add(body: dict[str, Any]) -> None:
        response = await api.post("/api/v1/resources", json={"workcell": WORKCELL, **body})
        assert response.status_code == 201, response.text

    adds = [add(body) for body in star_labware(STORED_PLATES)]
    for batch in range(0, len(adds), 10):
        await asyncio.gather(*adds[batch : batch + 10])
    response = await api.get(f"/api/v1/workcells/{WORKCELL}")
    assert response.status_code == 200, response.text[:500]
    return dict(response.json())


async def finished(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    async with api.stream("GET", f"/api/v1/protocols/runs/{run_id}/events") as events:
        assert events.status_code == 200
        async for _ in events.aiter_lines():
            pass
    return dict((await api.get(f"/api/v1/protocols/runs/{run_id}")).json())


async def test_the_layout_of_a_filled_deck_is_served_whole(workcell: dict[str, Any]) -> None:
    names = {asset["name"] for asset in workcell["assets"]}
    labware = [a for a in workcell["assets"] if a["kind"] == "resource"]
    assert len(labware) == LABWARE
    assert {"star", "deck", "plate5_4", "tips1_4", "stored29"} <= names
    assert len(httpx.Response(200, json=workcell).content) > 4_000_000  # several NATS messages
    stored = next(a for a in labware if a["name"] == "stored0")
    assert stored["parent_id"] is None  # in storage, off the deck


async def test_runs_on_a_filled_deck_complete(
    api: httpx.AsyncClient, workcell: dict[str, Any]
) -> None:
    pairs = [("plate0_0", "plate5_4", "tips0_0"), ("plate0_1", "plate3_2", "tips1_3")]
    runs = []
    for source, dest, tips in pairs:
        response = await api.post(
            "/api/v1/protocols/runs",
            json={
                "protocol_name": "transfer",
                "workcell": WORKCELL,
                "parameters": {"volume": 25, "wells": ["A1", "H12"]},
                "assets": {"source_plate": source, "dest_plate": dest, "tips": tips},
            },
        )
        assert response.status_code == 201, response.text
        runs.append(response.json()["accession_id"])
    done = await asyncio.gather(*(finished(api, run) for run in runs))
    for run, (source, dest, _) in zip(done, pairs, strict=True):
        assert run["status"] == "completed", run["error"]
        states = run["asset_states"]
        assert states[source][f"{source}_well_H12"]["volume"] == 175.0
        assert states[dest][f"{dest}_well_A1"]["volume"] == 25.0
        assert set(states) <= {source, dest, "star", "tips0_0", "tips1_3"}  # bound assets only

    # A page of plates with their definitions is a few MB: it is served whole too.
    page = await api.get("/api/v1/resources", params={"limit": 100})
    assert page.status_code == 200, page.text[:500]
    assert len(page.json()["items"]) >= 70


async def asset_id(api: httpx.AsyncClient, name: str) -> str:
    page = (await api.get("/api/v1/resources", params={"name": name})).json()
    (item,) = [a for a in page["items"] if a["name"] == name]
    return str(item["accession_id"])


async def available(api: httpx.AsyncClient, name: str) -> str:
    """The asset's id once it is ``available``: a finished run's leases are released after its
    status is recorded (once its final snapshot is in the inventory), and the asset's status
    follows the lease; no event over HTTP says so, so it is read again until then (bounded)."""
    asset = await asset_id(api, name)
    async with asyncio.timeout(30):
        while True:
            if (await api.get(f"/api/v1/resources/{asset}")).json()["status"] == "available":
                return asset
            await asyncio.sleep(0.1)


async def transfer(api: httpx.AsyncClient, source: str, dest: str, well: str) -> dict[str, Any]:
    response = await api.post(
        "/api/v1/protocols/runs",
        json={
            "protocol_name": "transfer",
            "workcell": WORKCELL,
            "parameters": {"volume": 25, "wells": [well]},
            "assets": {"source_plate": source, "dest_plate": dest, "tips": "tips0_1"},
        },
    )
    assert response.status_code == 201, response.text
    run = await finished(api, response.json()["accession_id"])
    assert run["status"] == "completed", run["error"]
    return run


async def test_the_live_workcell_follows_a_swapped_replaced_and_moved_plate(
    api: httpx.AsyncClient, workcell: dict[str, Any]
) -> None:
    """Before, a plate deleted and created again on its carrier site hung the next run in
    ``preparing`` (the live deck still held the old plate), and every later new plate too."""
    await transfer(api, "plate0_2", "plate5_3", "A1")  # the live workcell is built

    # Swap: delete a plate, put a new one on its site, run on it.
    deleted = await api.delete(f"/api/v1/resources/{await available(api, 'plate5_3')}")
    assert deleted.status_code == 204, deleted.text
    swap = {"workcell": WORKCELL, "fqn": COR_96, "parent": "deck", "slot": "plate_car5-3"}
    assert (await api.post("/api/v1/resources", json={**swap, "name": "fresh"})).status_code == 201
    run = await transfer(api, "plate0_2", "fresh", "B2")
    assert run["asset_states"]["fresh"]["fresh_well_B2"]["volume"] == 25.0

    # Replace under the same name: a new plate (new id) starts empty, not with the old liquid.
    assert (
        await api.delete(f"/api/v1/resources/{await available(api, 'fresh')}")
    ).status_code == 204
    assert (await api.post("/api/v1/resources", json={**swap, "name": "fresh"})).status_code == 201
    run = await transfer(api, "plate0_2", "fresh", "B2")
    assert run["asset_states"]["fresh"]["fresh_well_B2"]["volume"] == 25.0

    # Move: the plate keeps its live liquid in its new place (plate0_2 gave 3 x 25 uL so far).
    assert (
        await api.delete(f"/api/v1/resources/{await available(api, 'fresh')}")
    ).status_code == 204
    moved = await api.patch(
        f"/api/v1/resources/{await available(api, 'plate0_2')}",
        json={"parent": "deck", "slot": "plate_car5-3"},
    )
    assert moved.status_code == 200, moved.text
    run = await transfer(api, "plate0_2", "plate5_2", "A1")
    assert run["asset_states"]["plate0_2"]["plate0_2_well_A1"]["volume"] == 150.0


async def recorded_volume(api: httpx.AsyncClient, plate: str, well: str) -> float | None:
    asset = (await api.get(f"/api/v1/resources/{await asset_id(api, plate)}")).json()
    if asset["state_recorded_at"] is None:
        return None
    return float(asset["state"][f"{plate}_well_{well}"]["volume"])


async def test_a_killed_orchestrator_resumes_with_the_volumes_runs_left(
    api: httpx.AsyncClient, stack: Stack, workcell: dict[str, Any]
) -> None:
    run = await transfer(api, "plate0_3", "plate4_3", "C5")
    assert run["asset_states"]["plate0_3"]["plate0_3_well_C5"]["volume"] == 175.0
    # The asset-manager takes the run's snapshots in (an event each, all in the stream before
    # RunFinished): once its consumer has caught up, the inventory shows what the run left.
    assert stack.infra is not None
    nc = await nats.connect(stack.infra.nats_operator_url)
    try:
        await drained(nc.jetstream(), EVENTS.name, "asset-manager-state-recorded")
    finally:
        await nc.close()
    assert await recorded_volume(api, "plate0_3", "C5") == 175.0

    await stack.kill_service("orchestrator")  # SIGKILL: nothing saved on the way out
    stack.start_service("orchestrator", "restarted by test_lab_scale")
    await stack.wait_ready("orchestrator")

    run = await transfer(api, "plate0_3", "plate4_3", "C5")
    # Built again from the inventory, the new process starts from what the first run left.
    assert run["asset_states"]["plate0_3"]["plate0_3_well_C5"]["volume"] == 150.0
    assert run["asset_states"]["plate4_3"]["plate4_3_well_C5"]["volume"] == 50.0
