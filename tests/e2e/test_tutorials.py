"""PyLabRobot's tutorial workflows, as an author would port them, on a workcell built over HTTP.

The whole stack through HTTP. The workcell is the README's worked example (a STAR deck with
tip and plate carriers on rails, a heater-shaker in a module carrier's site, a temperature
controller, a plate reader and a pump), built by running the README's own requests: no
PyLabRobot on the client. The protocols come from a real git repository and are written as the
PyLabRobot tutorials write them: STAR basics, the 96 head, plate reading, heater-shaker and
temperature control, the trackers, a serial dilution, moving a plate with the grippers (and a
pump, a machine that is no resource). Each must complete with what PyLabRobot would give.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import git
import httpx
import pytest

from praxis_devstack.pytest_plugin import MakeDatabase, eventually
from praxis_devstack.stack import Stack, repo_root

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

WORKCELL = "star"

TUTORIALS = '''"""PyLabRobot's tutorials, ported to Praxis."""

import logging

from pylabrobot.heating_shaking import HeaterShaker
from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.plate_reading import PlateReader
from pylabrobot.pumps import Pump
from pylabrobot.resources import Plate, TipRack
from pylabrobot.resources.errors import HasTipError, NoTipError, TooLittleLiquidError
from pylabrobot.temperature_controlling import TemperatureController

from praxis_sdk import protocol_function

log = logging.getLogger(__name__)


def volumes(plate, wells):
    return [plate.get_well(w).tracker.get_used_volume() for w in wells]


@protocol_function(version="1.0.0")
async def star_basics(lh: LiquidHandler, tips: TipRack, source: Plate, dest: Plate) -> list:
    """Tips from A1:C1, 100 uL from each of the source's A1:C1 into the destination's."""
    await lh.pick_up_tips(tips["A1:C1"])
    await lh.aspirate(source["A1:C1"], vols=[100.0, 100.0, 100.0])
    await lh.dispense(dest["A1:C1"], vols=[100.0, 100.0, 100.0])
    await lh.return_tips()
    return volumes(source, ["A1", "B1", "C1"]) + volumes(dest, ["A1", "B1", "C1"])


@protocol_function(version="1.0.0")
async def head_96(lh: LiquidHandler, tips_96: TipRack, source: Plate, dest: Plate) -> list:
    """The 96 head: a full rack of tips, 10 uL from every well into every well."""
    await lh.pick_up_tips96(tips_96)
    await lh.aspirate96(source, volume=10)
    await lh.dispense96(dest, volume=10)
    await lh.return_tips96()
    return volumes(source, ["A1", "H12"]) + volumes(dest, ["D1", "H12"])


@protocol_function(version="1.0.0", moves_in=["plate"])
async def read_plate(reader: PlateReader, plate: Plate) -> list:
    """Into the reader by hand, an absorbance read of the whole plate, back on its site."""
    site, location = plate.parent, plate.location
    plate.unassign()
    reader.assign_child_resource(plate)
    (reading,) = await reader.read_absorbance(wavelength=450, use_new_return_type=True)
    plate.unassign()
    site.assign_child_resource(plate, location=location)
    return [len(reading["data"]), len(reading["data"][0])]


@protocol_function(version="1.0.0", top_level=False)
async def spectrum(reader: PlateReader, wavelengths: list) -> list:
    """Absorbance of the plate in the reader at each wavelength: a large return value."""
    readings = []
    for wavelength in wavelengths:
        (reading,) = await reader.read_absorbance(wavelength=wavelength, use_new_return_type=True)
        readings.append(reading["data"])
    return readings


@protocol_function(version="1.0.0", moves_in=["plate"])
async def read_spectrum(reader: PlateReader, plate: Plate) -> int:
    """A spectrum of the plate, 400 to 700 nm; the nested call's result is the readings."""
    site, location = plate.parent, plate.location
    plate.unassign()
    reader.assign_child_resource(plate)
    readings = await spectrum(reader, list(range(400, 701, 20)))
    plate.unassign()
    site.assign_child_resource(plate, location=location)
    return len(readings)


@protocol_function(version="1.0.0")
async def heat_shake_and_cool(shaker: HeaterShaker, cooler: TemperatureController) -> list:
    """Shake at 37 C for a moment, keep the cooler at 4 C."""
    await shaker.lock_plate()
    await shaker.set_temperature(37)
    await shaker.shake(speed=800)
    await shaker.stop_shaking()
    await shaker.unlock_plate()
    await cooler.set_temperature(4)
    await cooler.deactivate()
    return [await shaker.get_temperature(), await cooler.get_temperature()]


@protocol_function(version="1.0.0")
async def trackers(lh: LiquidHandler, tips: TipRack, source: Plate) -> list:
    """What the trackers refuse: too much liquid, a tip where one is held, none to drop."""
    caught = []
    await lh.pick_up_tips(tips["D1"])
    try:
        await lh.aspirate(source["D1"], vols=[1000.0])
    except TooLittleLiquidError:
        caught.append("too little liquid")
    try:
        await lh.pick_up_tips(tips["E1"])
    except HasTipError:
        caught.append("has tip")
    await lh.return_tips()
    try:
        await lh.drop_tips(tips["D1"])
    except NoTipError:
        caught.append("no tip")
    return caught + volumes(source, ["D1"])


@protocol_function(version="1.0.0", top_level=False)
async def halve(lh: LiquidHandler, plate: Plate, well: str, into: str) -> float:
    """Move half of a well into the next one (which holds as much diluent), and mix."""
    half = plate.get_well(well).tracker.get_used_volume() / 2
    await lh.aspirate([plate.get_well(well)], vols=[half])
    await lh.dispense([plate.get_well(into)], vols=[half])
    return half


@protocol_function(version="1.0.0")
async def serial_dilution(lh: LiquidHandler, tips: TipRack, source: Plate, plate: Plate) -> list:
    """200 uL of stock into A1, diluent into A2:A5, then halve it along the row."""
    await lh.pick_up_tips(tips["F1"])
    await lh.aspirate(source["F1"], vols=[200.0])
    await lh.dispense(plate["A1"], vols=[200.0])
    for well in ("A2", "A3", "A4", "A5"):
        await lh.aspirate(source["G1"], vols=[20.0])
        await lh.dispense(plate[well], vols=[20.0])
    for well, into in (("A1", "A2"), ("A2", "A3"), ("A3", "A4"), ("A4", "A5")):
        moved = await halve(lh, plate, well, into)
        log.info("moved %.1f uL from %s to %s", moved, well, into)
    await lh.return_tips()
    return volumes(plate, ["A1", "A2", "A3", "A4", "A5"])


@protocol_function(version="1.0.0")
async def move_with_grippers(lh: LiquidHandler, plate: Plate, site: str) -> str:
    """Moves the plate with the core grippers to another site of the deck."""
    await lh.move_plate(plate, lh.deck.get_resource(site))
    return plate.parent.name


@protocol_function(version="1.0.0")
async def prime(pump: Pump) -> str:
    """Runs the pump for a moment (a machine that is no PyLabRobot resource)."""
    await pump.run_for_duration(speed=50, duration=0.1)
    await pump.halt()
    return "primed"
'''


def readme_requests() -> list[tuple[str, str, Any]]:
    """The README's worked example: each ```http block between the markers, as (method, path,
    JSON body)."""
    text = (repo_root() / "README.md").read_text()
    start = text.index("<!-- workcell-example:start -->")
    end = text.index("<!-- workcell-example:end -->")
    requests = []
    for block in re.findall(r"```http\n(.*?)```", text[start:end], flags=re.S):
        line, _, body = block.partition("\n")
        method, path = line.split()
        requests.append((method, path, json.loads(body)))
    return requests


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, make_database: MakeDatabase, admin_token: str
) -> AsyncIterator[Stack]:
    base: Path = tmp_path_factory.mktemp("tutorials")
    environ = {"DATABASE_URL": make_database("e2e_tutorials")}
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


async def ids(api: httpx.AsyncClient) -> dict[str, str]:
    layout = (await api.get(f"/api/v1/workcells/{WORKCELL}")).json()
    return {a["name"]: a["accession_id"] for a in layout["assets"]}


@pytest.fixture(scope="module")
async def workcell(stack: Stack, api: httpx.AsyncClient) -> dict[str, str]:
    """The README's workcell, built by its own requests; its orchestrator; the tutorials."""
    for method, path, body in readme_requests():
        if "{id:" in path:
            known = await ids(api)
            path = re.sub(r"\{id:(\w+)\}", lambda m, known=known: known[m.group(1)], path)  # noqa: PLW2901
        response = await api.request(method, path, json=body)
        assert response.status_code in (200, 201), (path, body, response.text)
        if path == "/api/v1/workcells":  # served from now on, as `make run` does
            await stack.add_workcell(WORKCELL)
    repo = stack.base_dir / "tutorials"
    created = git.Repo.init(repo, initial_branch="main")
    (repo / "tutorials.py").write_text(TUTORIALS)
    created.index.add(["tutorials.py"])
    author = git.Actor("Praxis Tests", "tests@praxis.invalid")
    created.index.commit("tutorials", author=author, committer=author)
    response = await api.post(
        "/api/v1/protocols/sources", json={"name": "tutorials", "kind": "git", "url": str(repo)}
    )
    assert response.status_code == 201, response.text
    assert response.json()["problems"] == []
    return await ids(api)


async def run(api: httpx.AsyncClient, protocol: str, **body: Any) -> dict[str, Any]:
    """Submit on the workcell, follow the live stream to the end; the finished run."""
    response = await api.post(
        "/api/v1/protocols/runs", json={"protocol_name": protocol, "workcell": WORKCELL, **body}
    )
    assert response.status_code == 201, response.text
    run_id = response.json()["accession_id"]
    async with api.stream("GET", f"/api/v1/protocols/runs/{run_id}/events") as events:
        assert events.status_code == 200
        async for _ in events.aiter_lines():
            pass
    done: dict[str, Any] = (await api.get(f"/api/v1/protocols/runs/{run_id}")).json()
    return done


async def completed(api: httpx.AsyncClient, protocol: str, **body: Any) -> Any:
    done = await run(api, protocol, **body)
    assert done["status"] == "completed", done["error"]
    return done["result"]


async def test_the_workcell_is_the_readmes(
    workcell: dict[str, str], api: httpx.AsyncClient
) -> None:
    layout = (await api.get(f"/api/v1/workcells/{WORKCELL}")).json()
    by_name = {a["name"]: a for a in layout["assets"]}
    names = {a["accession_id"]: a["name"] for a in layout["assets"]}
    parents = {a["name"]: names.get(a["parent_id"]) for a in layout["assets"]}
    assert parents["deck"] == "lh" and by_name["deck"]["kind"] == "deck"
    assert parents["shaker"] == "modules" and by_name["shaker"]["slot"] == "modules-0"
    assert parents["shaken"] == "shaker"
    assert by_name["pump"]["kind"] == "machine" and parents["pump"] is None
    well = by_name["source"]["state"]["source_well_H12"]
    assert (well["volume"], well["pending_volume"]) == (300, 300)


async def test_star_basics(workcell: dict[str, str], api: httpx.AsyncClient) -> None:
    pins = {"lh": "lh", "tips": "tips", "source": "source", "dest": "dilution"}
    result = await completed(api, "star_basics", assets=pins)
    assert result == [200.0, 200.0, 200.0, 100.0, 100.0, 100.0]


async def test_the_96_head(workcell: dict[str, str], api: httpx.AsyncClient) -> None:
    pins = {"lh": "lh", "tips_96": "tips_96", "source": "source", "dest": "shaken"}
    result = await completed(api, "head_96", assets=pins)
    assert result == [190.0, 290.0, 10.0, 10.0]  # A1 gave 100 to the STAR basics


async def test_plate_reading(workcell: dict[str, str], api: httpx.AsyncClient) -> None:
    result = await completed(api, "read_plate", assets={"reader": "reader", "plate": "dilution"})
    assert result == [8, 12]


async def test_a_large_nested_result_is_kept_whole_by_reference(
    workcell: dict[str, str], api: httpx.AsyncClient
) -> None:
    done = await run(api, "read_spectrum", assets={"reader": "reader", "plate": "dilution"})
    assert (done["status"], done["result"]) == ("completed", 16), done["error"]
    url = f"/api/v1/protocols/runs/{done['accession_id']}/calls"

    async def spectrum_recorded() -> list[dict[str, Any]]:  # calls land on their own consumer
        items = (await api.get(url, params={"function": "spectrum"})).json()["items"]
        return [c for c in items if c["status"] == "completed"]

    (call,) = await eventually(spectrum_recorded, "the spectrum call recorded", timeout=10)
    marker = call["result"]
    assert marker["truncated"] is True and marker["object_name"].endswith(f"/{call['sequence']}")
    whole = await api.get(f"{url}/{call['sequence']}/result")
    assert whole.status_code == 200, whole.text
    readings = whole.json()["result"]
    assert len(readings) == 16 and all(len(r) == 8 and len(r[0]) == 12 for r in readings)
    assert len(json.dumps(readings)) == marker["size_bytes"]
    # A small result comes back whole from the log; a call that is not there is 404.
    (top,) = [c for c in (await api.get(url)).json()["items"] if c["function"] == "read_spectrum"]
    small = (await api.get(f"{url}/{top['sequence']}/result")).json()
    assert (small["result"], small["object_name"]) == (16, "")
    assert (await api.get(f"{url}/999/result")).status_code == 404


async def test_heater_shaker_and_temperature_controller(
    workcell: dict[str, str], api: httpx.AsyncClient
) -> None:
    done = await run(api, "heat_shake_and_cool", assets={"shaker": "shaker", "cooler": "cooler"})
    assert done["status"] == "completed", done["error"]
    assert len(done["result"]) == 2
    url = f"/api/v1/protocols/runs/{done['accession_id']}/logs"

    async def printed() -> str:  # output batches land on a consumer of their own
        lines = (await api.get(url)).json()["items"]
        said = " ".join(x["message"] for x in lines if x["source"] == "instrument")
        return said if "37" in said and "800" in said else ""

    await eventually(printed, "the chatterboxes said what they would do", timeout=10)


async def test_trackers(workcell: dict[str, str], api: httpx.AsyncClient) -> None:
    result = await completed(
        api, "trackers", assets={"lh": "lh", "tips": "tips", "source": "source"}
    )
    # Nothing was taken by the refused aspiration: D1 holds what the 96 head left it.
    assert result == ["too little liquid", "has tip", "no tip", 290.0]


async def test_serial_dilution(workcell: dict[str, str], api: httpx.AsyncClient) -> None:
    pins = {"lh": "lh", "tips": "tips", "source": "source", "plate": "dilution"}
    result = await completed(api, "serial_dilution", assets=pins)
    # A1 held 100 from the STAR basics: 300, then half of each well into the next.
    assert result == [150.0, 85.0, 52.5, 36.25, 56.25]


async def test_moving_a_plate_with_the_grippers(
    workcell: dict[str, str], api: httpx.AsyncClient
) -> None:
    pins = {"lh": "lh", "plate": "dilution"}
    moved = await completed(
        api, "move_with_grippers", assets=pins, parameters={"site": "plate_carrier-4"}
    )
    assert moved == "plate_carrier-4"
    back = await completed(
        api, "move_with_grippers", assets=pins, parameters={"site": "plate_carrier-1"}
    )
    assert back == "plate_carrier-1"
    # The next run on the plate is placed once the move is in the inventory.
    assert await completed(api, "read_plate", assets={"reader": "reader", "plate": "dilution"})
    layout = (await api.get(f"/api/v1/workcells/{WORKCELL}")).json()
    (dilution,) = [a for a in layout["assets"] if a["name"] == "dilution"]
    assert dilution["slot"] == "plate_carrier-1"


async def test_a_machine_that_is_no_resource(
    workcell: dict[str, str], api: httpx.AsyncClient
) -> None:
    assert await completed(api, "prime", assets={"pump": "pump"}) == "primed"


async def test_setting_state_in_a_workcell_nobody_serves_says_why(
    workcell: dict[str, str], api: httpx.AsyncClient
) -> None:
    """Its state store is provisioned when the workcell is served: until then a state set is
    a prompt 503 that says so, not the gateway's time-out."""
    created = await api.post("/api/v1/workcells", json={"name": "unserved"})
    assert created.status_code == 201, created.text
    plate = await api.post(
        "/api/v1/resources",
        json={"workcell": "unserved", "name": "p", "fqn": "cor_96_wellplate_360uL_Fb"},
    )
    assert plate.status_code == 201, plate.text
    body = {"state": {"*": {"volume": 10}}, "reason": "test"}
    answer = await api.post(f"/api/v1/resources/{plate.json()['accession_id']}/state", json=body)
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "unavailable" and "provisioned" in answer.json()["message"]
