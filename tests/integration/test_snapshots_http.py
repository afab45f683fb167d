"""Workcell state snapshots over HTTP: gateway routes -> NATS request/reply -> asset-manager.

The asset-manager runs in-process (``build_app``) on the session's nats-server and a fresh
database; the gateway app is driven in-process through ASGI with the test's own bus. The test
plays the orchestrator: it puts a snapshot body into the object store and publishes
``WorkcellStateRecorded``, then waits until the asset-manager acknowledged it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from praxis_asset_manager.app import Settings, build_app
from praxis_contracts.assets import RegisterWorkcell, WorkcellLayout
from praxis_contracts.state import (
    AssetState,
    WorkcellSnapshot,
    WorkcellStateRecorded,
    WorkcellStateRestored,
    snapshot_object_name,
)
from praxis_contracts.topology import EVENTS, workcell_state
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity, drained, provide_workcell
from praxis_gateway.app import Settings as GatewaySettings
from praxis_gateway.app import create_app
from praxis_plr.layout import demo_workcell
from praxis_runtime.bus import Bus

pytestmark = pytest.mark.integration

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
async def api(
    nats_identity: NatsIdentity,
    make_database: MakeDatabase,
    services: Callable[..., Awaitable[Any]],
    client: Bus,
    admin_token: str,
) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        **nats_identity("asset-manager"),
        database_url=make_database("snapshots_http"),
        health_port=None,
        graceful_timeout_seconds=5,
        edge_placement=False,  # no orchestrator here: runs are placed without one
    )
    await services(build_app, settings)
    app = create_app(GatewaySettings(**nats_identity("gateway"), praxis_admin_token=admin_token))
    app.state.bus = client  # the lifespan (which connects a bus of its own) does not run here
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway", headers=headers
    ) as http:
        yield http


@pytest.fixture
async def workcell(api: httpx.AsyncClient, client: Bus) -> WorkcellLayout:
    name = f"wc-{uuid.uuid4().hex[:10]}"
    await provide_workcell(client.js, name)
    return await client.request(RegisterWorkcell(name=name, assets=demo_workcell()), timeout=30)


async def record(
    client: Bus, layout: WorkcellLayout, volume: float, at: datetime, run_id: uuid.UUID
) -> uuid.UUID:
    """Be the orchestrator: a snapshot of source_plate, its body first, then the event."""
    (plate,) = [a for a in layout.assets if a.name == "source_plate"]
    name, snapshot_id = layout.workcell.name, uuid.uuid4()
    body = WorkcellSnapshot(
        snapshot_id=snapshot_id,
        workcell_name=name,
        kind="checkpoint",
        run_id=run_id,
        taken_at=at,
        asset_ids=[plate.accession_id],
        asset_names=[plate.name],
        object_name=snapshot_object_name(name, snapshot_id),
        assets=[
            AssetState(asset_id=plate.accession_id, asset_name=plate.name, state={"v": volume})
        ],
    )
    store = await client.js.object_store(workcell_state(name).bucket)
    await store.put(body.object_name, body.model_dump_json().encode())
    await client.publish(WorkcellStateRecorded(**body.model_dump(exclude={"assets"})))
    await drained(client.js, EVENTS.name, "asset-manager-state-recorded")
    return snapshot_id


async def test_list_get_and_restore(
    api: httpx.AsyncClient, client: Bus, workcell: WorkcellLayout, tap: Any
) -> None:
    name = workcell.workcell.name
    run_a, run_b = uuid.uuid4(), uuid.uuid4()
    first = await record(client, workcell, 10, T0, run_a)
    second = await record(client, workcell, 20, T0 + timedelta(seconds=1), run_b)
    base = f"/api/v1/workcells/{name}"

    listed = await api.get(f"{base}/snapshots")
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert [s["snapshot_id"] for s in page["items"]] == [str(second), str(first)]
    assert page["total"] == 2
    by_run = (
        await api.get(f"{base}/snapshots", params={"protocol_run_accession_id": run_a})
    ).json()
    assert [s["snapshot_id"] for s in by_run["items"]] == [str(first)]
    by_asset = (await api.get(f"{base}/snapshots", params={"asset": "tip_rack"})).json()
    assert by_asset["total"] == 0
    paged = (await api.get(f"{base}/snapshots", params={"limit": 1, "offset": 1})).json()
    assert [s["snapshot_id"] for s in paged["items"]] == [str(first)]

    got = await api.get(f"{base}/snapshots/{first}")
    assert got.status_code == 200, got.text
    assert got.json()["assets"][0]["state"] == {"v": 10}
    assert (await api.get(f"{base}/snapshots/{uuid.uuid4()}")).status_code == 404
    assert (await api.get("/api/v1/workcells/nowhere/snapshots")).status_code == 404

    restores = await tap(WorkcellStateRestored, name)
    restored = await api.post(
        f"{base}/restore", json={"snapshot_id": str(first), "reason": "spill"}
    )
    assert restored.status_code == 200, restored.text
    info = restored.json()
    assert info["kind"] == "restored" and info["asset_names"] == ["source_plate"]
    event = await restores.next()
    assert (event.source_snapshot_id, event.reason) == (first, "spill")
    assert event.actor == "bootstrap-admin"  # the caller, as the gateway names it
    (plate,) = [a for a in workcell.assets if a.name == "source_plate"]
    resource = (await api.get(f"/api/v1/resources/{plate.accession_id}")).json()
    assert resource["state"] == {"v": 10}
    assert resource["state_snapshot_id"] == info["snapshot_id"]
    layout = (await api.get(base)).json()
    (shown,) = [a for a in layout["assets"] if a["name"] == "source_plate"]
    assert shown["state"] == {"v": 10}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"reason": "x"}, 400, "invalid_request"),  # no snapshot_id
        ({"snapshot_id": "FIRST", "reason": ""}, 400, "invalid_request"),
        ({"snapshot_id": "FIRST", "reason": "x", "assets": ["tip_rack"]}, 422, "invalid_input"),
        ({"snapshot_id": "UNKNOWN", "reason": "x"}, 404, "not_found"),
        ({"snapshot_id": "FIRST", "reason": "x", "colour": "red"}, 400, "invalid_request"),
    ],
)
async def test_restore_refusals(
    api: httpx.AsyncClient,
    client: Bus,
    workcell: WorkcellLayout,
    body: dict[str, Any],
    status: int,
    code: str,
) -> None:
    first = await record(client, workcell, 10, T0, uuid.uuid4())
    ids = {"FIRST": str(first), "UNKNOWN": str(uuid.uuid4())}
    if "snapshot_id" in body:
        body = {**body, "snapshot_id": ids[body["snapshot_id"]]}
    url = f"/api/v1/workcells/{workcell.workcell.name}/restore"
    response = await api.post(url, json=body)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code and "Traceback" not in response.text
