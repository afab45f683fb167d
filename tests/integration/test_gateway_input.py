"""Input the HTTP API refuses up front, end to end over real HTTP.

The gateway is served by uvicorn in-process (its own bus, as in production) in front of the
scheduler, code-manager and asset-manager, running in-process on the session's nats-server and
fresh databases. No orchestrator: a run that is granted its assets stays pending.

- a body over ``GATEWAY_MAX_BODY_BYTES`` is 413 ``payload_too_large`` in the error shape;
- a NUL character anywhere in a body, query or path is 422 ``invalid_input`` naming the field,
  on every write endpoint (the walk fails if a write route is added without a case);
- a submission whose assets could never be reserved is 422 naming the workcell, requirement or
  pin, and leaves no run behind; assets that are merely busy are no reason to refuse;
- JSON nested deeper than ``GATEWAY_MAX_JSON_DEPTH`` (a body, or ``property_filters``) is 400
  ``invalid_request`` on every route, however deep: never a 500 from a recursion limit;
- paging parameters out of range are 400 naming the parameter, and what a service's database
  refuses is answered without SQL, table or index names, tracebacks or server paths;
- every error, FastAPI's own (unknown route, wrong method) included, is in the error shape with
  the request's correlation id, the one in the ``X-Correlation-Id`` header.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import git
import httpx
import pytest
from pylabrobot.resources import Plate

from praxis_asset_manager import app as asset_manager_app
from praxis_code_manager import app as code_manager_app
from praxis_contracts.assets import CheckReservation, RegisterWorkcell, WorkcellLayout
from praxis_contracts.errors import NoMatchingAssets
from praxis_contracts.protocols import AssetRequirementSpec, RegisterProtocolSource
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity
from praxis_gateway.app import MAX_BODY_BYTES, MAX_JSON_DEPTH, Settings, create_app
from praxis_gateway.guard import json_depth
from praxis_gateway.routes import WorkcellIn
from praxis_plr.layout import demo_workcell
from praxis_plr.types import fqn
from praxis_runtime.bus import Bus
from praxis_scheduler import app as scheduler_app

pytestmark = pytest.mark.integration

COR_96 = "pylabrobot.resources.corning.plates.cor_96_wellplate_360uL_Fb"
NUL = "a\x00b"
ERROR_SHAPE = {"code", "message", "retryable", "details", "correlation_id"}

PROTOCOLS = '''"""Protocols for the gateway input tests."""

from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.resources import Plate

from praxis_sdk import PraxisState, protocol_function


@protocol_function(version="1.0.0")
async def stamp(lh: LiquidHandler, plate: Plate, state: PraxisState, label: str = "x") -> str:
    """Needs a liquid handler and a plate; never runs here (no orchestrator)."""
    return label
'''


@pytest.fixture(scope="module")
async def stack(
    nats_identity: NatsIdentity,
    make_database: MakeDatabase,
    tmp_path_factory: pytest.TempPathFactory,
    services: Any,
    local_sources: dict[str, Any],
    client: Bus,
) -> WorkcellLayout:
    """Scheduler, code-manager and asset-manager; the demo workcell; a source with ``stamp``."""
    common = {"health_port": None, "graceful_timeout_seconds": 5}
    await services(
        asset_manager_app.build_app,
        asset_manager_app.Settings(
            database_url=make_database("input_am"),
            **nats_identity("asset-manager"),
            **common,
            edge_placement=False,  # no orchestrator here: runs are placed without one
        ),
    )
    await services(
        code_manager_app.build_app,
        code_manager_app.Settings(
            database_url=make_database("input_cm"),
            protocol_repo_dir=tmp_path_factory.mktemp("input-code-manager"),
            **nats_identity("code-manager"),
            **common,
            **local_sources,
        ),
    )
    await services(
        scheduler_app.build_app,
        scheduler_app.Settings(
            database_url=make_database("input_sched"), **nats_identity("scheduler"), **common
        ),
    )
    path = tmp_path_factory.mktemp("input-protocols")
    await client.request(
        RegisterProtocolSource(name=f"input-{uuid.uuid4().hex[:8]}", url=_repo(path)), timeout=60
    )
    name = f"wc_{uuid.uuid4().hex[:10]}"
    return await client.request(RegisterWorkcell(name=name, assets=demo_workcell()), timeout=30)


def _repo(path: Path) -> str:
    (path / "protocols.py").write_text(PROTOCOLS)
    repo = git.Repo.init(path, initial_branch="main")
    repo.index.add(["protocols.py"])
    author = git.Actor("Praxis Tests", "tests@praxis.invalid")
    repo.index.commit("protocols", author=author, committer=author)
    return str(path)


@pytest.fixture(scope="module")
async def gateway(
    stack: WorkcellLayout, nats_identity: NatsIdentity, admin_token: str, serve_asgi: Any
) -> AsyncIterator[str]:
    """The gateway served by uvicorn on a socket of its own; yields its base URL."""
    app = create_app(Settings(**nats_identity("gateway"), praxis_admin_token=admin_token))
    async with serve_asgi(app) as url:
        yield url


@pytest.fixture
async def api(gateway: str, admin_token: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=gateway, timeout=30.0, headers=headers) as http:
        yield http


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is ``status`` in the one error shape with ``code``; returns the body."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == ERROR_SHAPE
    assert body["code"] == code
    assert body["correlation_id"] == response.headers["x-correlation-id"]
    return body


# -- body size ----------------------------------------------------------------------------------


def test_the_default_limit_is_one_mebibyte_and_configurable(monkeypatch: Any) -> None:
    assert Settings().gateway_max_body_bytes == MAX_BODY_BYTES == 1024 * 1024
    monkeypatch.setenv("GATEWAY_MAX_BODY_BYTES", "2048")
    assert Settings().gateway_max_body_bytes == 2048


async def test_a_body_over_the_limit_is_413_in_the_error_shape(api: httpx.AsyncClient) -> None:
    body = {"protocol_name": "stamp", "parameters": {"label": "x" * (2 * MAX_BODY_BYTES)}}
    response = await api.post("/api/v1/protocols/runs", json=body)
    error = assert_error(response, 413, "payload_too_large")
    assert error["details"]["limit"] == MAX_BODY_BYTES
    assert error["details"]["content_length"] > MAX_BODY_BYTES


async def test_a_streamed_body_over_the_limit_is_413(api: httpx.AsyncClient) -> None:
    """No Content-Length (chunked): the gateway counts the bytes as they come."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"protocol_name": "stamp", "parameters": {"label": "'
        for _ in range(20):
            yield b"x" * (MAX_BODY_BYTES // 10)
        yield b'"}}'

    response = await api.post(
        "/api/v1/protocols/runs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large")


async def test_a_body_within_the_limit_reaches_the_route(api: httpx.AsyncClient) -> None:
    body = {"protocol_name": "stamp", "parameters": {"nope": "x" * (MAX_BODY_BYTES // 2)}}
    response = await api.post("/api/v1/protocols/runs", json=body)
    assert_error(response, 422, "invalid_parameters")  # the protocol's answer, not the guard's


# -- protocol sources ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "rule"),
    [("ext::sh -c id", "transport_helper"), ("file:///etc", "outside_roots")],
)
async def test_a_refused_source_is_422_naming_the_rule(
    api: httpx.AsyncClient, url: str, rule: str
) -> None:
    name = f"refused-{uuid.uuid4().hex[:8]}"
    response = await api.post("/api/v1/protocols/sources", json={"name": name, "url": url})
    error = assert_error(response, 422, "source_refused")
    assert error["message"].startswith(f"{rule}: ")
    assert error["details"]["rule"] == rule
    listed = (await api.get("/api/v1/protocols/sources", params={"limit": 500})).json()["items"]
    assert name not in {s["name"] for s in listed}


async def test_a_failed_source_is_deleted_with_204(
    api: httpx.AsyncClient, stack: WorkcellLayout, tmp_path: Path
) -> None:
    name = f"failed-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "url": str(tmp_path / "no-such-repo")}
    refused = await api.post("/api/v1/protocols/sources", json=body)
    error = assert_error(refused, 502, "source_sync_failed")
    assert "no-such-repo" in error["message"]  # it still says what failed
    assert_no_internals(refused)  # but names no folder of the server's (nor the test's)
    listed = (await api.get("/api/v1/protocols/sources", params={"limit": 500})).json()["items"]
    (failed,) = [s for s in listed if s["name"] == name]

    response = await api.delete(f"/api/v1/protocols/sources/{failed['accession_id']}")

    assert response.status_code == 204, response.text
    again = await api.delete(f"/api/v1/protocols/sources/{failed['accession_id']}")
    assert_error(again, 404, "not_found")


# -- NUL characters -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Ids:
    """Existing things for the write endpoints to name."""

    workcell: str
    source_id: str
    run_id: str
    assets: dict[str, str]  # kind -> an asset of that kind
    asset_id: str


@pytest.fixture(scope="module")
async def ids(gateway: str, stack: WorkcellLayout, admin_token: str) -> AsyncIterator[Ids]:
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=gateway, timeout=30.0, headers=headers) as http:
        sources = (await http.get("/api/v1/protocols/sources")).json()["items"]
        run = await http.post(
            "/api/v1/protocols/runs",
            json={"protocol_name": "stamp", "workcell": stack.workcell.name},
        )
        assert run.status_code == 201, run.text
        by_kind = {a.kind: str(a.accession_id) for a in stack.assets}
        yield Ids(
            workcell=stack.workcell.name,
            source_id=sources[0]["accession_id"],
            run_id=run.json()["accession_id"],
            assets=by_kind,
            asset_id=by_kind["resource"],
        )
        run_id = run.json()["accession_id"]  # a run no edge has is cancelled at once
        await http.post(f"/api/v1/protocols/runs/{run_id}/actions", json={"action": "cancel"})


Case = Callable[[Ids], tuple[str, dict[str, Any] | None, str]]
"""-> (url, JSON body or None, the location the refusal must name)."""

WRITES: dict[tuple[str, str], Case] = {
    ("POST", "/api/v1/protocols/sources"): lambda i: (
        "/api/v1/protocols/sources",
        {"name": NUL, "url": "/nowhere"},
        "body.name",
    ),
    ("POST", "/api/v1/protocols/sources/{source_id}/sync"): lambda i: (
        f"/api/v1/protocols/sources/{i.source_id}/sync",
        {"commit": NUL},
        "body.commit",
    ),
    ("DELETE", "/api/v1/protocols/sources/{source_id}"): lambda i: (
        f"/api/v1/protocols/sources/{i.source_id}%00",
        None,
        "path",
    ),
    ("POST", "/api/v1/protocols/runs"): lambda i: (
        "/api/v1/protocols/runs",
        {"protocol_name": "stamp", "parameters": {"label": NUL}},
        "body.parameters.label",
    ),
    ("POST", "/api/v1/protocols/runs/{run_id}/actions"): lambda i: (
        f"/api/v1/protocols/runs/{i.run_id}/actions",
        {"action": "pause", "reason": NUL},
        "body.reason",
    ),
    ("POST", "/api/v1/workcells"): lambda i: (
        "/api/v1/workcells",
        {"name": f"wc_{uuid.uuid4().hex[:8]}", "description": NUL},
        "body.description",
    ),
    ("PATCH", "/api/v1/workcells/{workcell}"): lambda i: (
        f"/api/v1/workcells/{i.workcell}",
        {"properties": {"room": {"name": NUL}}},
        "body.properties.room.name",
    ),
    ("DELETE", "/api/v1/workcells/{workcell}"): lambda i: (
        f"/api/v1/workcells/{i.workcell}%00",
        None,
        "path",
    ),
    ("POST", "/api/v1/workcells/{workcell}/drain"): lambda i: (
        f"/api/v1/workcells/{i.workcell}/drain",
        {"reason": f"maintenance{NUL}"},
        "body.reason",
    ),
    ("POST", "/api/v1/workcells/{workcell}/resume"): lambda i: (
        f"/api/v1/workcells/{i.workcell}/resume",
        {"reason": f"done{NUL}"},
        "body.reason",
    ),
    ("POST", "/api/v1/workcells/{workcell}/restore"): lambda i: (
        f"/api/v1/workcells/{i.workcell}/restore",
        {"snapshot_id": str(uuid.uuid4()), "reason": NUL},
        "body.reason",
    ),
    ("POST", "/api/v1/resources/{accession_id}/state"): lambda i: (
        f"/api/v1/resources/{i.asset_id}/state",
        {"tips": {"*": True}, "reason": NUL},
        "body.reason",
    ),
    ("POST", "/api/v1/locks/{asset_id}/force-release"): lambda i: (
        f"/api/v1/locks/{i.asset_id}/force-release",
        {"reason": NUL},
        "body.reason",
    ),
    ("POST", "/api/v1/dead-letters/{seq}/replay"): lambda i: (
        "/api/v1/dead-letters/1/replay",
        {"reason": NUL},
        "body.reason",
    ),
    ("POST", "/api/v1/tokens"): lambda i: (
        "/api/v1/tokens",
        {"name": NUL, "scopes": ["read"]},
        "body.name",
    ),
    ("DELETE", "/api/v1/tokens/{token_id}"): lambda i: (
        f"/api/v1/tokens/{uuid.uuid4()}%00",
        None,
        "path",
    ),
}
for _path, _kind in (("machines", "machine"), ("resources", "resource"), ("decks", "deck")):
    WRITES[("POST", f"/api/v1/{_path}")] = lambda i, p=_path: (
        f"/api/v1/{p}",
        {"workcell": i.workcell, "name": "x", "fqn": COR_96, "properties": {NUL: 1}},
        "body.properties.a\\u0000b",
    )
    WRITES[("PATCH", f"/api/v1/{_path}/{{accession_id}}")] = lambda i, p=_path, k=_kind: (
        f"/api/v1/{p}/{i.assets[k]}",
        {"name": NUL},
        "body.name",
    )
    WRITES[("DELETE", f"/api/v1/{_path}/{{accession_id}}")] = lambda i, p=_path, k=_kind: (
        f"/api/v1/{p}/{i.assets[k]}?reason=a%00b",
        None,
        "query.reason",
    )


def _without_nul(value: Any) -> Any:
    """``value`` with every NUL character replaced (keys too): a body that would be valid."""
    if isinstance(value, str):
        return value.replace(NUL, "-")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


_SHAPE = Ids("w", "s", "r", {"machine": "m", "resource": "r", "deck": "d"}, "a")
WITH_BODY = sorted(e for e, case in WRITES.items() if case(_SHAPE)[1] is not None)


@pytest.mark.parametrize("endpoint", WITH_BODY, ids=" ".join)
async def test_an_unknown_field_in_a_write_is_refused_naming_it(
    api: httpx.AsyncClient, ids: Ids, endpoint: tuple[str, str]
) -> None:
    """Nothing sent is silently ignored: a misspelt or unsupported field is refused."""
    method, _ = endpoint
    url, body, _ = WRITES[endpoint](ids)
    assert body is not None
    response = await api.request(method, url, json={**_without_nul(body), "colour": "red"})
    # A body that does not fit its model is 400 invalid_request, naming each field (as for a
    # missing or mistyped one).
    error = assert_error(response, 400, "invalid_request")
    assert [e["loc"] for e in error["details"]["errors"]] == ["body.colour"], error
    assert "body.colour" in error["message"]


async def test_on_failure_is_taken_over_http(api: httpx.AsyncClient, ids: Ids) -> None:
    body = {"protocol_name": "stamp", "workcell": ids.workcell, "on_failure": "rollback"}
    response = await api.post("/api/v1/protocols/runs", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["on_failure"] == "rollback"
    run_id = response.json()["accession_id"]
    await api.post(f"/api/v1/protocols/runs/{run_id}/actions", json={"action": "cancel"})


def test_every_write_endpoint_has_a_nul_case() -> None:
    paths = create_app(Settings()).openapi()["paths"]
    writes = {
        (method.upper(), path)
        for path, operations in paths.items()
        for method in operations
        if method in {"post", "put", "patch", "delete"}
    }
    assert writes == set(WRITES)


@pytest.mark.parametrize("endpoint", sorted(WRITES), ids=" ".join)
async def test_a_nul_anywhere_in_a_write_is_422_naming_the_field(
    api: httpx.AsyncClient, ids: Ids, endpoint: tuple[str, str]
) -> None:
    method, _ = endpoint
    url, body, where = WRITES[endpoint](ids)
    response = await api.request(method, url, json=body)
    error = assert_error(response, 422, "invalid_input")
    assert error["details"]["field"] == where
    assert where in error["message"]


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"name": NUL}, "query.name"),
        ({"property_filters": '{"vendor": "a\\u0000b"}'}, "query.property_filters.vendor"),
    ],
    ids=["plain", "json-escape"],
)
async def test_a_nul_in_a_query_is_422(
    api: httpx.AsyncClient, params: dict[str, str], where: str
) -> None:
    response = await api.get("/api/v1/machines", params=params)
    error = assert_error(response, 422, "invalid_input")
    assert error["details"]["field"] == where


async def test_a_nul_free_write_still_works(api: httpx.AsyncClient, ids: Ids) -> None:
    response = await api.patch(f"/api/v1/workcells/{ids.workcell}", json={"description": "ok"})
    assert response.status_code == 200, response.text


# -- submissions that cannot work -------------------------------------------------------------


async def stamp_runs(api: httpx.AsyncClient) -> set[str]:
    page = (
        await api.get("/api/v1/protocols/runs", params={"protocol_name": "stamp", "limit": 1000})
    ).json()
    return {run["accession_id"] for run in page["items"]}


@pytest.mark.parametrize(
    ("change", "code", "named"),
    [
        ({"workcell": "no_such_workcell"}, "no_matching_assets", {"workcell": "no_such_workcell"}),
        ({"assets": {"plate": "no_such_plate"}}, "no_matching_assets", {"pin": "no_such_plate"}),
        ({"assets": {"plate": "liquid_handler"}}, "no_matching_assets", {"pin": "liquid_handler"}),
        (
            {"asset_properties": {"plate": {"colour": "mauve"}}},
            "no_matching_assets",
            {"requirement": "plate", "properties": {"colour": "mauve"}},
        ),
        ({"assets": {"nope": "source_plate"}}, "invalid_parameters", {"loc": "assets.nope"}),
        (
            {"asset_properties": {"nope": {"colour": "mauve"}}},
            "invalid_parameters",
            {"loc": "asset_properties.nope"},
        ),
    ],
    ids=[
        "unknown-workcell",
        "unknown-pin",
        "pin-of-wrong-type",
        "no-asset-has-them",
        "pin-for-no-requirement",
        "properties-for-no-requirement",
    ],
)
async def test_a_submission_that_cannot_work_is_refused_and_leaves_no_run(
    api: httpx.AsyncClient,
    stack: WorkcellLayout,
    change: dict[str, Any],
    code: str,
    named: dict[str, Any],
) -> None:
    before = await stamp_runs(api)
    body = {"protocol_name": "stamp", "workcell": stack.workcell.name} | change
    response = await api.post("/api/v1/protocols/runs", json=body)
    error = assert_error(response, 422, code)
    details = error["details"]
    if "workcell" in named:
        assert details["workcell"] == named["workcell"]
    elif code == "no_matching_assets":
        assert details["workcell"] == stack.workcell.name
        (problem,) = details["problems"]
        assert problem["requirement"] == "plate"
        assert named.items() <= problem.items()
    else:
        assert [e["loc"] for e in details["errors"]] == [named["loc"]]
        assert details["requirements"] == ["lh", "plate"]
    assert await stamp_runs(api) == before


async def test_busy_assets_are_no_reason_to_refuse(
    api: httpx.AsyncClient, stack: WorkcellLayout
) -> None:
    """Two runs pinning the same plate: both are accepted, the second waits for the first."""
    body = {
        "protocol_name": "stamp",
        "workcell": stack.workcell.name,
        "assets": {"plate": "dest_plate"},
    }
    runs = [await api.post("/api/v1/protocols/runs", json=body) for _ in range(2)]
    assert [r.status_code for r in runs] == [201, 201], [r.text for r in runs]
    for run in runs:  # tidy up: a run no edge has is cancelled at once
        cancel = await api.post(
            f"/api/v1/protocols/runs/{run.json()['accession_id']}/actions",
            json={"action": "cancel"},
        )
        assert cancel.status_code == 200, cancel.text


async def test_the_asset_manager_answers_where_a_run_could_go(
    stack: WorkcellLayout, client: Bus
) -> None:
    plate = AssetRequirementSpec(name="plate", type_fqn=fqn(Plate), kind="resource")
    check = await client.request(CheckReservation(requirements=[plate]))
    (where,) = check.workcells
    assert where.workcell_name == stack.workcell.name
    (options,) = where.requirements
    assert options.requirement == "plate"
    assert set(options.assets) == {"source_plate", "dest_plate"}
    with pytest.raises(NoMatchingAssets) as refused:
        await client.request(CheckReservation(requirements=[plate], pins={"plate": "nothing"}))
    assert refused.value.details["problems"][0]["pin"] == "nothing"


# -- JSON nesting depth -------------------------------------------------------------------------
JSON = {"content-type": "application/json"}


def nested(depth: int) -> bytes:
    """A JSON array ``depth`` levels deep."""
    return b"[" * depth + b"]" * depth


def run_body(depth: int) -> bytes:
    """A ``POST /protocols/runs`` body ``depth`` levels deep in all (the body and its
    ``parameters`` are two of them)."""
    return b'{"protocol_name": "stamp", "parameters": {"nope": ' + nested(depth - 2) + b"}}"


DEEP = {
    "arrays-50000": b"[" * 50_000,
    "objects-10000": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "closed-2000": nested(2000),
    "limit-plus-one": run_body(MAX_JSON_DEPTH + 1),
    "100-in-parameters": run_body(100),
}


@pytest.mark.parametrize("name", sorted(DEEP))
async def test_json_nested_past_the_limit_is_400(api: httpx.AsyncClient, name: str) -> None:
    """However deep: a recursion limit never surfaces as a 500, and moderately deep documents
    (which Python parses, but the services' parsers may not) are refused alike."""
    response = await api.post("/api/v1/protocols/runs", content=DEEP[name], headers=JSON)
    error = assert_error(response, 400, "invalid_request")
    assert error["details"]["field"] == "body"
    assert error["details"]["max_depth"] == MAX_JSON_DEPTH
    assert str(MAX_JSON_DEPTH) in error["message"]


async def test_json_at_the_depth_limit_reaches_the_route(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/v1/protocols/runs", content=run_body(MAX_JSON_DEPTH), headers=JSON
    )
    assert_error(response, 422, "invalid_parameters")  # the protocol's answer, not the guard's


async def test_every_route_refuses_deep_json(api: httpx.AsyncClient) -> None:
    """One check in front of every route: none can forget it."""
    paths = create_app(Settings()).openapi()["paths"]
    wrong = []
    for path, operations in sorted(paths.items()):
        url = "/".join(str(uuid.uuid4()) if p.startswith("{") else p for p in path.split("/"))
        for method in operations:
            response = await api.request(method, url, content=DEEP["arrays-50000"], headers=JSON)
            if response.status_code != 400 or response.json().get("code") != "invalid_request":
                wrong.append(f"{method} {path}: {response.status_code} {response.text[:100]}")
    assert wrong == []


def test_the_depth_limit_is_generous_for_plr_definitions() -> None:
    """A workcell registration carrying the demo's PyLabRobot trees (a liquid handler with its
    deck and head) uses a fraction of the depth allowed."""
    body = WorkcellIn(name="wc", assets=demo_workcell()).model_dump(mode="json")
    assert 8 < json_depth(body) <= MAX_JSON_DEPTH // 4


@pytest.mark.parametrize(
    "value", ["[" * 2000, '{"a":' * (MAX_JSON_DEPTH + 1) + "1" + "}" * (MAX_JSON_DEPTH + 1)]
)
async def test_a_deep_property_filter_is_400(api: httpx.AsyncClient, value: str) -> None:
    response = await api.get("/api/v1/machines", params={"property_filters": value})
    error = assert_error(response, 400, "invalid_request")
    assert error["details"]["field"] == "query.property_filters"


async def test_a_number_python_will_not_read_is_400(api: httpx.AsyncClient) -> None:
    """Python refuses integers over 4300 digits (a ``ValueError``, not a JSON syntax error)."""
    body = b'{"protocol_name": "stamp", "priority": ' + b"9" * 5000 + b"}"
    response = await api.post("/api/v1/protocols/runs", content=body, headers=JSON)
    assert_error(response, 400, "invalid_request")


# -- no internals in answers --------------------------------------------------------------------
INTERNALS = re.compile(
    r"Traceback|File \"|\[SQL|\bSELECT\b|\bINSERT\b|\bUPDATE\b|\bOFFSET\b|\$\d|query argument"
    r"|asyncpg|sqlalchemy|psycopg|site-packages|\.venv|\.praxis/|/work/|/tmp/"
    r"|(?<![\w:/.~-])/[\w.@+~-]+/"  # an absolute path of two components or more
)


def assert_no_internals(response: httpx.Response) -> None:
    found = INTERNALS.search(response.text)
    assert found is None, f"{found.group()!r} in {response.text}"


LISTS = [
    "/api/v1/protocols/runs",  # scheduler
    "/api/v1/protocols/sources",  # code-manager
    "/api/v1/protocols/definitions",
    "/api/v1/workcells",  # asset-manager
    "/api/v1/machines",
    "/api/v1/catalog",
]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"offset": str(10**30)}, "query.offset"),
        ({"offset": str(2**63)}, "query.offset"),
        ({"offset": "-1"}, "query.offset"),
        ({"offset": "1e3"}, "query.offset"),
        ({"limit": "0"}, "query.limit"),
        ({"limit": str(10**30)}, "query.limit"),
    ],
    ids=["offset-1e30", "offset-2^63", "offset-negative", "offset-float", "limit-0", "limit-1e30"],
)
async def test_paging_out_of_range_is_400_naming_it(
    api: httpx.AsyncClient, params: dict[str, str], field: str
) -> None:
    for url in LISTS:
        response = await api.get(url, params=params)
        error = assert_error(response, 400, "invalid_request")
        assert [e["loc"] for e in error["details"]["errors"]] == [field], url
        assert_no_internals(response)


async def test_the_largest_offset_is_an_empty_page(api: httpx.AsyncClient) -> None:
    """PostgreSQL's ``OFFSET`` is a bigint: its largest value is served, past it is refused."""
    for url in LISTS:
        response = await api.get(url, params={"offset": 2**63 - 1})
        assert response.status_code == 200, (url, response.text)
        page = response.json()
        assert (page["items"], page["offset"]) == ([], 2**63 - 1), url


@pytest.mark.parametrize(
    "when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"], ids=["min", "max"]
)
async def test_a_date_with_no_utc_equivalent_is_400_naming_it(
    api: httpx.AsyncClient, when: str
) -> None:
    """Valid ISO 8601, but past year 1 or 9999 once in UTC: it used to reach the database
    driver and come back as its complaint about a query argument."""
    for url in LISTS:
        for field in ("date_range_start", "date_range_end"):
            response = await api.get(url, params={field: when})
            error = assert_error(response, 400, "invalid_request")
            assert error["details"]["field"] == f"query.{field}", url
            assert_no_internals(response)


# -- correlation ids ----------------------------------------------------------------------------


async def test_unknown_routes_and_wrong_methods_answer_in_the_error_shape(
    api: httpx.AsyncClient,
) -> None:
    assert_error(await api.get("/api/v1/no-such-thing"), 404, "not_found")
    assert_error(await api.get("/no-such-thing"), 404, "not_found")
    wrong = await api.put("/api/v1/protocols/runs", json={})
    error = assert_error(wrong, 405, "method_not_allowed")
    assert error["details"]["allowed"] == ["GET", "POST"]  # both routes at this path
    assert wrong.headers["allow"] == "GET, POST"


async def test_every_error_carries_the_callers_correlation_id(api: httpx.AsyncClient) -> None:
    """The middleware's refusals (401, 413, 422, 400), the routes' (403, 404), FastAPI's
    validation (400) and Starlette's routing (404, 405) alike."""
    created = await api.post("/api/v1/tokens", json={"name": "reader", "scopes": ["read"]})
    reader = {"Authorization": f"Bearer {created.json()['token']}"}
    runs = "/api/v1/protocols/runs"
    cases: list[tuple[int, str, dict[str, Any]]] = [
        (401, "unauthenticated", {"url": runs, "headers": {"Authorization": ""}}),
        (403, "forbidden", {"method": "POST", "url": runs, "json": {}, "headers": reader}),
        (404, "not_found", {"url": "/api/v1/nothing-here"}),
        (404, "not_found", {"url": f"{runs}/{uuid.uuid4()}"}),
        (405, "method_not_allowed", {"method": "DELETE", "url": runs}),
        (413, "payload_too_large", {"method": "POST", "url": runs, "content": b"x" * 2**21}),
        (422, "invalid_input", {"url": "/api/v1/machines", "params": {"name": NUL}}),
        (400, "invalid_request", {"url": "/api/v1/machines", "params": {"limit": 0}}),
        (400, "invalid_request", {"method": "POST", "url": runs, "content": b"{"}),
        (400, "invalid_request", {"method": "POST", "url": runs, "content": b"[" * 50_000}),
    ]
    for status, code, request in cases:
        sent = f"test-{status}-{uuid.uuid4().hex[:8]}"
        headers = {**JSON, **request.pop("headers", {}), "X-Correlation-Id": sent}
        response = await api.request(request.pop("method", "GET"), headers=headers, **request)
        error = assert_error(response, status, code)
        assert error["correlation_id"] == sent, request["url"]


@pytest.mark.parametrize("sent", ["x" * 500, "two words"], ids=["too-long", "spaces"])
async def test_an_unusable_correlation_id_is_replaced(api: httpx.AsyncClient, sent: str) -> None:
    response = await api.get("/api/v1/nothing-here", headers={"X-Correlation-Id": sent})
    error = assert_error(response, 404, "not_found")
    assert re.fullmatch(r"[0-9a-f]{32}", error["correlation_id"])
