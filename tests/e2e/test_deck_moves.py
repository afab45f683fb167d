"""The inventory follows the deck: moves a run makes are written back, as the next run sees them.

The whole stack through HTTP, protocols from a real git repository. A plate moved with the
grippers to another carrier site, or by hand into the plate reader, is there in the inventory
once the run ends (``GET /workcells/{w}``), its old site is free for a new plate, the next run
finds it there, and an orchestrator restarted since builds the deck as it is.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import git
import httpx
import pytest

from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_devstack.stack import Stack, orchestrator_name
from praxis_plr.layout import demo_workcell

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PROTOCOLS = '''"""Moving plates, as the PyLabRobot tutorials do."""

from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.plate_reading import PlateReader
from pylabrobot.resources import Plate

from praxis_sdk import protocol_function


@protocol_function(version="1.0.0")
async def move_with_grippers(lh: LiquidHandler, plate: Plate, site: str) -> str:
    """Moves the plate with the handler's grippers to another site of its deck."""
    await lh.move_plate(plate, lh.deck.get_resource(site))
    return plate.parent.name


@protocol_function(version="1.0.0", moves_in=["plate"])
async def load_reader(reader: PlateReader, plate: Plate) -> str:
    """Puts the plate into the reader by hand and leaves it there."""
    plate.unassign()
    reader.assign_child_resource(plate)
    return plate.parent.name


@protocol_function(version="1.0.0")
async def where_is(plate: Plate) -> str:
    """Where the plate is, as the run's copy of the workcell says."""
    return plate.parent.name if plate.parent is not None else "nowhere"


@protocol_function(version="1.0.0")
async def read_loaded(reader: PlateReader, plate: Plate) -> int:
    """Reads the plate in the reader (it is there already): the number of rows read."""
    assert plate.parent is reader
    (reading,) = await reader.read_absorbance(wavelength=450, use_new_return_type=True)
    return len(reading["data"])


@protocol_function(version="1.0.0", moves_in=["plate"])
async def unload_reader(lh: LiquidHandler, plate: Plate, site: str) -> str:
    """Takes the plate out of the reader and puts it on a site of the handler's deck."""
    plate.unassign()
    lh.deck.get_resource(site).assign_child_resource(plate)
    return plate.parent.name
'''


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, make_database: MakeDatabase, admin_token: str
) -> AsyncIterator[Stack]:
    base: Path = tmp_path_factory.mktemp("moves")
    environ = {"DATABASE_URL": make_database("e2e_moves")}
    running = Stack(base_dir=base, fast=True, environ=environ, admin_token=admin_token)
    try:
        await running.start()
        yield running
    finally:
        await running.stop()


@pytest.fixture(scope="module")
async def api(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=stack.api, timeout=60.0, headers=stack.auth_headers
    ) as client:
        yield client


@pytest.fixture(scope="module")
async def workcell(stack: Stack, api: httpx.AsyncClient) -> str:
    """A demo workcell of its own and the protocols above, from a real git repository."""
    repo = stack.base_dir / "moves-repo"
    created = git.Repo.init(repo, initial_branch="main")
    (repo / "moves.py").write_text(PROTOCOLS)
    created.index.add(["moves.py"])
    author = git.Actor("Praxis Tests", "tests@praxis.invalid")
    created.index.commit("moves", author=author, committer=author)
    response = await api.post(
        "/api/v1/protocols/sources", json={"name": "moves", "kind": "git", "url": str(repo)}
    )
    assert response.status_code in (200, 201), response.text
    name = f"moves-{uuid.uuid4().hex[:6]}"
    drafts = [d.model_dump(mode="json") for d in demo_workcell()]
    response = await api.post("/api/v1/workcells", json={"name": name, "assets": drafts})
    assert response.status_code == 201, response.text
    await stack.add_workcell(name)
    return name


async def run(api: httpx.AsyncClient, workcell: str, protocol: str, **body: Any) -> Any:
    """Submit, follow the live stream to the end; the completed run's result."""
    response = await api.post(
        "/api/v1/protocols/runs", json={"protocol_name": protocol, "workcell": workcell, **body}
    )
    assert response.status_code == 201, response.text
    run_id = response.json()["accession_id"]
    async with api.stream("GET", f"/api/v1/protocols/runs/{run_id}/events") as events:
        assert events.status_code == 200
        async for _ in events.aiter_lines():
            pass
    done = (await api.get(f"/api/v1/protocols/runs/{run_id}")).json()
    assert done["status"] == "completed", done["error"]
    return done["result"]


async def placed(api: httpx.AsyncClient, workcell: str) -> dict[str, tuple[str | None, str | None]]:
    """Each asset's parent (by name) and slot, as ``GET /workcells/{w}`` has them."""
    layout = (await api.get(f"/api/v1/workcells/{workcell}")).json()
    names = {a["accession_id"]: a["name"] for a in layout["assets"]}
    return {a["name"]: (names.get(a["parent_id"]), a["slot"]) for a in layout["assets"]}


async def test_moves_are_written_back_and_the_next_runs_see_them(
    stack: Stack, api: httpx.AsyncClient, workcell: str
) -> None:
    """Each check of the inventory follows a run on the moved plate: a run's leases are
    released only once its final snapshot is in the inventory, so that run was granted after
    the move was written back (the run status itself may come first)."""
    dest, source = {"plate": "dest_plate"}, {"plate": "source_plate"}
    moved = await run(
        api,
        workcell,
        "move_with_grippers",
        assets={"lh": "liquid_handler", **dest},
        parameters={"site": "plate_carrier-3"},
    )
    assert moved == "plate_carrier-3"
    assert await run(api, workcell, "where_is", assets=dest) == "plate_carrier-3"
    assert (await placed(api, workcell))["dest_plate"] == ("deck", "plate_carrier-3")

    # The site it left is free: a new plate can go there, and runs find it there.
    response = await api.post(
        "/api/v1/resources",
        json={
            "workcell": workcell,
            "name": "fresh_plate",
            "fqn": "cor_96_wellplate_360uL_Fb",
            "parent": "deck",
            "slot": "plate_carrier-1",
        },
    )
    assert response.status_code == 201, response.text
    fresh = await run(api, workcell, "where_is", assets={"plate": "fresh_plate"})
    assert fresh == "plate_carrier-1"

    reader = {"reader": "plate_reader"}
    assert await run(api, workcell, "load_reader", assets={**reader, **source}) == "plate_reader"
    assert await run(api, workcell, "read_loaded", assets={**reader, **source}) == 8
    assert (await placed(api, workcell))["source_plate"][0] == "plate_reader"

    # A new orchestrator builds the workcell from the inventory: the deck as it is now.
    edge = orchestrator_name(workcell)
    await stack.kill_service(edge)
    stack.start_service(edge)
    await stack.wait_ready(edge)
    assert await run(api, workcell, "where_is", assets=dest) == "plate_carrier-3"
    assert await run(api, workcell, "read_loaded", assets={**reader, **source}) == 8
    back = await run(
        api,
        workcell,
        "unload_reader",
        assets={"lh": "liquid_handler", **source},
        parameters={"site": "plate_carrier-0"},
    )
    assert back == "plate_carrier-0"
    assert await run(api, workcell, "where_is", assets=source) == "plate_carrier-0"
    assert (await placed(api, workcell))["source_plate"] == ("deck", "plate_carrier-0")
