"""Inventory authoring over the wire: gateway routes -> NATS request/reply -> handlers -> Postgres.

The asset-manager's inventory handlers run in-process (wired as ``app.py`` wires them) on the
session's nats-server and a fresh database; the gateway app is driven in-process through ASGI with
the test's own bus.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

import praxis_asset_manager
from praxis_asset_manager.app import Settings
from praxis_asset_manager.catalog import Catalog
from praxis_asset_manager.inventory import Inventory
from praxis_asset_manager.inventory_commands import InventoryCommands
from praxis_asset_manager.inventory_handlers import InventoryDeps, handlers
from praxis_asset_manager.orm import OUTBOX, SCHEMA, Base
from praxis_asset_manager.status import StatusRecorder
from praxis_contracts.inventory import AssetStatusChanged, CreateWorkcell
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity
from praxis_gateway.app import Settings as GatewaySettings
from praxis_gateway.app import create_app
from praxis_gateway.inventory_routes import router
from praxis_runtime.bus import Bus
from praxis_runtime.outbox import OutboxRelay
from praxis_runtime.service import Migrations, Service, bus_for, database_for

pytestmark = pytest.mark.integration

COR_96 = "pylabrobot.resources.corning.plates.cor_96_wellplate_360uL_Fb"
WELL = {"volume": 0, "pending_volume": 0, "thing": "Unknown liquid", "max_volume": 360}
MIGRATIONS = Path(praxis_asset_manager.__file__).parent / "migrations"


def build_inventory(settings: Settings) -> Service:
    bus, db = bus_for(settings), database_for(settings, SCHEMA)
    service = Service(
        name=settings.service_name,
        settings=settings,
        bus=bus,
        database=db,
        migrations=Migrations(MIGRATIONS, Base.metadata),
    )
    relay = OutboxRelay(db, OUTBOX, lambda: bus.publisher)
    inventory, catalog = Inventory(db, relay), Catalog(db)
    status = StatusRecorder(db, relay, inventory.apply_statuses)

    service.outbox = relay
    service.on_start.append(catalog.sync)
    commands = InventoryCommands(db, inventory, catalog, relay)
    service.include(handlers, InventoryDeps(commands, catalog, status))
    return service


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
        database_url=make_database("inventory_http"),
        health_port=None,
    )
    await services(build_inventory, settings)
    app = create_app(GatewaySettings(**nats_identity("gateway"), praxis_admin_token=admin_token))
    app.include_router(router)
    app.state.bus = client  # the lifespan (which connects a bus of its own) does not run here
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(
        transport=transport, base_url="http://gateway", headers=headers
    ) as http:
        yield http


@pytest.fixture
async def workcell(api: httpx.AsyncClient, client: Bus) -> str:
    name = f"wc-{uuid.uuid4().hex[:10]}"
    await client.request(CreateWorkcell(name=name))  # POST /workcells is RegisterWorkcell's
    return name


async def test_catalog(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/api/v1/catalog", params={"search": "cor_96_wellplate", "kind": "resource", "limit": 3}
    )
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] > 3 and len(page["items"]) == 3
    assert {"fqn", "kind", "is_factory", "bases", "pylabrobot_version"} <= set(page["items"][0])
    assert (await api.get("/api/v1/catalog", params={"sort_by": "nope"})).status_code == 400


async def test_asset_lifecycle(api: httpx.AsyncClient, workcell: str, tap: Any) -> None:
    body = {"workcell": workcell, "name": "plate", "fqn": COR_96, "properties": {"v": 1}}
    created = await api.post("/api/v1/resources", json=body)
    assert created.status_code == 201, created.text
    asset = created.json()
    assert asset["fqn"] == COR_96 and asset["definition"]["name"] == "plate"
    url = f"/api/v1/resources/{asset['accession_id']}"
    changes = await tap(AssetStatusChanged, key=asset["accession_id"])

    patched = await api.patch(url, json={"status": "maintenance", "reason": "cleaning"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["status"] == "maintenance"
    event = await changes.next()
    assert (event.previous, event.status, event.reason) == ("available", "maintenance", "cleaning")

    history = (await api.get(f"{url}/status-history")).json()
    assert [(h["previous"], h["status"]) for h in history["items"]] == [
        ("available", "maintenance"),
        (None, "available"),
    ]
    assert (await api.get(f"{url}/status-history", params={"status": "available"})).json()[
        "total"
    ] == 1

    assert (await api.delete(url)).status_code == 204
    assert (await api.delete(url)).status_code == 404
    assert (await api.get(f"{url}/status-history")).status_code == 404


@pytest.mark.parametrize(
    ("path", "change", "status", "code"),
    [
        ("machines", {"fqn": COR_96}, 400, "invalid_request"),  # a plate is not a machine
        ("resources", {"fqn": "cor_96_wellplate_360uL_Fx"}, 422, "unknown_asset_type"),
        ("resources", {"workcell": "nowhere"}, 404, "not_found"),
        ("resources", {"colour": "red"}, 400, "invalid_request"),
        ("machines", {"fqn": "pylabrobot.liquid_handling.LiquidHandler"}, 422, "invalid_input"),
        ("machines", {"fqn": "PlateReader", "backend": {"type": "Nope"}}, 422, "invalid_input"),
        ("resources", {"arguments": {"colour": "red"}}, 422, "invalid_input"),
        ("resources", {"backend": {"type": "PlateReaderChatterboxBackend"}}, 422, "invalid_input"),
        ("resources", {"location": {"x": 1, "y": 2}}, 400, "invalid_request"),
    ],
)
async def test_create_errors(
    api: httpx.AsyncClient, workcell: str, path: str, change: dict[str, Any], status: int, code: str
) -> None:
    body = {"workcell": workcell, "name": "x", "fqn": COR_96, **change}
    response = await api.post(f"/api/v1/{path}", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == code and "Traceback" not in response.text
    if code == "unknown_asset_type":
        assert COR_96 in error["details"]["suggestions"]


@pytest.mark.parametrize(
    ("state", "field"),
    [
        ({"plate_well_A1": {"volume": 80}}, "state.plate_well_A1"),  # no pending_volume etc.
        ({"volume": 80}, "state"),  # not keyed by resource name
        ({"plate_well_A1": {**WELL, "volume": 400}}, "state.plate_well_A1"),  # over 360 uL
        ({"plate_well_A1": {**WELL, "volume": -1}}, "state.plate_well_A1"),
        ({"plate_well_A1": "full"}, "state.plate_well_A1"),
    ],
)
async def test_a_state_the_orchestrator_could_not_load_is_refused(
    api: httpx.AsyncClient, workcell: str, state: dict[str, Any], field: str
) -> None:
    """Before, ``{"volume": 80}`` was stored (201) and the run on the plate failed while
    preparing with ``KeyError: 'pending_volume'``."""
    body = {"workcell": workcell, "name": "plate", "fqn": COR_96, "state": state}
    response = await api.post("/api/v1/resources", json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert error["code"] == "invalid_input"
    assert error["details"]["field"] == field
    assert "Traceback" not in response.text and ".py" not in response.text
    # Nothing was stored: the name is free.
    assert (await api.post("/api/v1/resources", json={**body, "state": None})).status_code == 201


async def test_a_complete_well_state_is_accepted(api: httpx.AsyncClient, workcell: str) -> None:
    body = {
        "workcell": workcell,
        "name": "filled",
        "fqn": COR_96,
        "state": {"filled_well_A1": {**WELL, "volume": 80}},
    }
    response = await api.post("/api/v1/resources", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["state"]["filled_well_A1"]["volume"] == 80


async def test_wrong_kind_and_user_statuses(api: httpx.AsyncClient, workcell: str) -> None:
    body = {"workcell": workcell, "name": "p", "fqn": COR_96}
    asset = (await api.post("/api/v1/resources", json=body)).json()
    as_machine = f"/api/v1/machines/{asset['accession_id']}"
    assert (await api.patch(as_machine, json={"properties": {}})).status_code == 404
    assert (await api.delete(as_machine)).status_code == 404
    assert (await api.get(f"{as_machine}/status-history")).status_code == 404
    reserved = await api.patch(
        f"/api/v1/resources/{asset['accession_id']}", json={"status": "reserved"}
    )
    assert reserved.status_code == 400 and "set by reservations" in reserved.json()["message"]


async def test_workcell_update_and_delete(api: httpx.AsyncClient, workcell: str) -> None:
    patched = await api.patch(f"/api/v1/workcells/{workcell}", json={"description": "bench"})
    assert patched.status_code == 200 and patched.json()["description"] == "bench"
    assert patched.json()["name"] == workcell
    assert (await api.delete(f"/api/v1/workcells/{workcell}")).status_code == 204
    assert (await api.patch(f"/api/v1/workcells/{workcell}", json={})).status_code == 404
    assert (await api.delete(f"/api/v1/workcells/{workcell}")).status_code == 404
