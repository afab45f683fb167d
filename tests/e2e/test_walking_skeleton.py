"""End to end through HTTP: the whole stack as five processes on real NATS and PostgreSQL.

The stack gets its own nats-server (durable consumers are not shared with in-process service
tests) and a fresh database on the session's PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from praxis_devstack.pytest_plugin import MakeDatabase, eventually
from praxis_devstack.stack import DEMO_WORKCELL, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PLATES = {"source_plate": "source_plate", "dest_plate": "dest_plate"}
KEEPALIVE = 0.5  # the gateway's SSE_KEEPALIVE_SECONDS here


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, make_database: MakeDatabase, admin_token: str
) -> AsyncIterator[Stack]:
    base: Path = tmp_path_factory.mktemp("stack")
    environ = {"DATABASE_URL": make_database("e2e")}
    running = Stack(
        base_dir=base,
        fast=True,
        environ=environ,
        admin_token=admin_token,
        service_env={"SSE_KEEPALIVE_SECONDS": str(KEEPALIVE)},
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


async def finished(api: httpx.AsyncClient, run_id: str) -> tuple[list[str], dict[str, Any]]:
    """Follow the run's live event stream until it ends; return event names and the final run."""
    names: list[str] = []
    async with api.stream("GET", f"/api/v1/protocols/runs/{run_id}/events") as events:
        assert events.status_code == 200
        async for line in events.aiter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
    run = (await api.get(f"/api/v1/protocols/runs/{run_id}")).json()
    return names, run


async def submit(api: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await api.post("/api/v1/protocols/runs", json=body)
    assert response.status_code == 201, response.text
    run: dict[str, Any] = response.json()
    assert run["status"] == "queued"
    return run


async def test_transfer_moves_liquid(api: httpx.AsyncClient) -> None:
    run = await submit(
        api,
        protocol_name="transfer",
        workcell=DEMO_WORKCELL,
        parameters={"volume": 30, "wells": ["C3"]},
        assets=PLATES,
    )
    events, done = await finished(api, run["accession_id"])

    assert done["status"] == "completed", done["error"]
    assert done["result"] == {"C3": 30.0}
    assert done["final_state"] == {"transferred_ul": 30.0}
    source = done["asset_states"]["source_plate"]["source_plate_well_C3"]["volume"]
    dest = done["asset_states"]["dest_plate"]["dest_plate_well_C3"]["volume"]
    assert (source, dest) == (170.0, 30.0)
    assert {b["requirement"]: b["asset_name"] for b in done["bindings"]}[
        "source_plate"
    ] == "source_plate"
    assert events[0] == "scheduler.run.status_changed"
    assert "orchestrator.run.started" in events
    assert events.count("orchestrator.call.recorded") == 4  # transfer + nested move_liquid
    assert events[-1] == "scheduler.run.status_changed"
    assert "orchestrator.run.logged" in events  # its output, live

    # Its output, with the run's id: the protocol's log line, then its instruments' output. The
    # scheduler records output batches as they come, on a consumer of their own: the last may
    # land just after the run's end is recorded (nothing announces that it was stored).
    url = f"/api/v1/protocols/runs/{run['accession_id']}/logs"

    async def logged() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = (await api.get(url, params={"limit": 1000})).json()["items"]
        sources = {x["source"] for x in items}
        return items if {"protocol", "instrument"} <= sources else []

    lines = await eventually(logged, "the protocol's output recorded", timeout=10)
    assert [line["seq"] for line in lines] == list(range(len(lines)))
    protocol = [(x["level"], x["logger"], x["message"]) for x in lines if x["source"] == "protocol"]
    assert any(
        level == "INFO"
        and (logger or "").endswith("transfers")
        and text == "transferring 30.0 uL in 1 well(s)"
        for level, logger, text in protocol
    ), protocol
    instrument = [x["message"] for x in lines if x["source"] == "instrument"]
    assert any("Aspirating" in m for m in instrument), instrument
    only = (await api.get(url, params={"source": "protocol", "level": "INFO"})).json()
    assert only["items"] and all(x["source"] == "protocol" for x in only["items"])
    assert (await api.get(url, params={"level": "ERROR"})).json()["items"] == []
    assert (await api.get(url, params={"level": "LOUD"})).status_code == 400


async def test_protocol_error_fails_the_run_and_releases_assets(api: httpx.AsyncClient) -> None:
    run = await submit(api, protocol_name="transfer", parameters={"wells": ["Z99"]}, assets=PLATES)
    _, done = await finished(api, run["accession_id"])
    assert done["status"] == "failed"
    assert done["error"]["type"] == "IndexError"
    assert "Z99" in done["error"]["message"]

    # The failed run's leases were released: the same assets can be reserved again at once.
    again = await submit(api, protocol_name="transfer", parameters={"volume": 1}, assets=PLATES)
    _, done_again = await finished(api, again["accession_id"])
    assert done_again["status"] == "completed"


async def test_run_without_assets(api: httpx.AsyncClient) -> None:
    run = await submit(api, protocol_name="noop")
    _, done = await finished(api, run["accession_id"])
    assert done["status"] == "completed"
    assert done["workcell_name"] == DEMO_WORKCELL
    assert done["started_at"] is not None and done["finished_at"] is not None


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({}, 400, "invalid_request"),
        ({"protocol_name": "no_such_protocol"}, 404, "not_found"),
        (
            {"protocol_name": "transfer", "parameters": {"volume": "lots"}},
            422,
            "invalid_parameters",
        ),
        ({"protocol_name": "transfer", "parameters": {"nope": 1}}, 422, "invalid_parameters"),
        ({"protocol_name": "noop", "priority": 1000}, 400, "invalid_request"),
    ],
)
async def test_bad_submissions_get_typed_errors(
    api: httpx.AsyncClient, body: dict[str, Any], status: int, code: str
) -> None:
    response = await api.post("/api/v1/protocols/runs", json=body)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == code
    assert error["message"]
    assert error["correlation_id"] == response.headers["x-correlation-id"]
    assert "Traceback" not in response.text


async def test_malformed_http_is_rejected(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/api/v1/protocols/runs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_request"
    response = await api.get("/api/v1/protocols/runs/not-a-uuid")
    assert response.status_code == 400
    response = await api.get("/api/v1/protocols/runs/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404
    response = await api.get("/api/v1/machines", params={"property_filters": "[1, 2"})
    assert response.status_code == 400
    assert "property_filters" in response.json()["message"]
    response = await api.get("/api/v1/protocols/runs", params={"sort_by": "password"})
    assert response.status_code == 400


async def test_lists_with_standard_filters(api: httpx.AsyncClient) -> None:
    run = await submit(api, protocol_name="noop")
    await finished(api, run["accession_id"])
    page = (
        await api.get("/api/v1/protocols/runs", params={"limit": 1, "sort_by": "-created_at"})
    ).json()
    assert page["limit"] == 1 and len(page["items"]) == 1 and page["total"] >= 1
    assert page["items"][0]["accession_id"] == run["accession_id"]
    only = await api.get(
        "/api/v1/protocols/runs",
        params={"protocol_run_accession_id": run["accession_id"], "status": "completed"},
    )
    assert [r["accession_id"] for r in only.json()["items"]] == [run["accession_id"]]

    workcell = (await api.get(f"/api/v1/workcells/{DEMO_WORKCELL}")).json()["workcell"]
    machines = (
        await api.get(
            "/api/v1/machines", params={"workcell_accession_id": workcell["accession_id"]}
        )
    ).json()
    assert sorted(m["name"] for m in machines["items"]) == ["liquid_handler", "plate_reader"]
    plates = (
        await api.get("/api/v1/resources", params={"fqn": "pylabrobot.resources.plate.Plate"})
    ).json()
    assert {"source_plate", "dest_plate"} <= {p["name"] for p in plates["items"]}
    decks = (await api.get("/api/v1/decks")).json()
    assert [d["name"] for d in decks["items"]] == ["deck"]
    definitions = (
        await api.get("/api/v1/protocols/definitions", params={"name": "transfer"})
    ).json()
    spec = definitions["items"][0]["spec"]
    assert {a["name"] for a in spec["assets"]} == {"lh", "tips", "source_plate", "dest_plate"}


async def test_operations_endpoints(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).status_code == 200
    assert (await api.get("/readyz")).status_code == 200
    metrics = (await api.get("/metrics")).text
    assert "praxis_http_requests_total" in metrics
    openapi = (await api.get("/openapi.json")).json()
    assert "/api/v1/protocols/runs/{run_id}/events" in openapi["paths"]
    assert json.dumps(openapi)  # the document serialises


async def _status_events(api: httpx.AsyncClient, run_id: str) -> AsyncIterator[str]:
    async with api.stream("GET", f"/api/v1/protocols/runs/{run_id}/events") as events:
        name = ""
        async for line in events.aiter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: ") and name == "scheduler.run.status_changed":
                yield json.loads(line.removeprefix("data: "))["status"]


async def test_pause_resume_cancel_and_the_call_log(api: httpx.AsyncClient) -> None:
    run = await submit(
        api, protocol_name="incubate", parameters={"steps": 400, "step_seconds": 0.05}
    )
    run_id = run["accession_id"]
    # The operator pauses once running, resumes once paused, cancels once running again.
    seen: list[str] = []
    async for status in _status_events(api, run_id):
        seen.append(status)
        resumed = "resuming" in seen
        action = {"running": "cancel" if resumed else "pause", "paused": "resume"}.get(status)
        if action is not None:
            response = await api.post(
                f"/api/v1/protocols/runs/{run_id}/actions", json={"action": action}
            )
            assert response.status_code == 200, response.text
    assert seen[-1] == "cancelled"
    lifecycle = [s for s in seen if s not in ("queued", "pending", "preparing")]
    assert lifecycle == [
        "running",
        "pausing",
        "paused",
        "resuming",
        "running",
        "canceling",
        "cancelled",
    ]
    done = (await api.get(f"/api/v1/protocols/runs/{run_id}")).json()
    assert 0 < done["final_state"]["completed_steps"] < 400

    async def recorded() -> dict[str, Any]:  # calls land on a consumer of their own
        page: dict[str, Any] = (
            await api.get(f"/api/v1/protocols/runs/{run_id}/calls", params={"limit": 1000})
        ).json()
        steps = [c for c in page["items"][1:] if c["status"] == "completed"]
        finished = page["items"] and page["items"][0]["status"] == "cancelled"
        return page if finished and len(steps) == done["final_state"]["completed_steps"] else {}

    calls = await eventually(recorded, "every call of the run recorded", timeout=10)
    top = calls["items"][0]
    assert top["function"] == "incubate" and top["parent_call_id"] is None
    assert top["status"] == "cancelled"
    steps = calls["items"][1:]
    assert steps and all(c["parent_call_id"] == top["call_id"] for c in steps)
    assert [c["sequence"] for c in calls["items"]] == sorted(c["sequence"] for c in calls["items"])
    assert sum(c["status"] == "completed" for c in steps) == done["final_state"]["completed_steps"]
    # Each step returned its index: the call log keeps what every call returned.
    returned = [c["result"] for c in steps if c["status"] == "completed"]
    assert returned == list(range(len(returned)))

    again = await api.post(f"/api/v1/protocols/runs/{run_id}/actions", json={"action": "resume"})
    assert again.status_code == 409
    assert again.json()["code"] == "invalid_transition"
    wrong = await api.post(f"/api/v1/protocols/runs/{run_id}/actions", json={"action": "explode"})
    assert wrong.status_code == 400


async def test_a_plate_created_by_type_name_serves_a_run(api: httpx.AsyncClient) -> None:
    created = await api.post(
        "/api/v1/resources",
        json={
            "workcell": DEMO_WORKCELL,
            "name": "fresh_plate",
            "fqn": "cor_96_wellplate_360uL_Fb",  # a factory name, resolved through the catalog
            "parent": "deck",
            "slot": "plate_carrier-3",
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "available"

    run = await submit(
        api,
        protocol_name="transfer",
        parameters={"volume": 10, "wells": ["D4"]},
        assets={"source_plate": "source_plate", "dest_plate": "fresh_plate"},
    )
    _, done = await finished(api, run["accession_id"])
    assert done["status"] == "completed", done["error"]
    assert done["asset_states"]["fresh_plate"]["fresh_plate_well_D4"]["volume"] == 10.0
    # (Status history is written after the release, which follows the run's last event here;
    # it is asserted deterministically in the asset-manager's inventory tests.)


async def test_an_operator_force_releases_a_paused_runs_plate(api: httpx.AsyncClient) -> None:
    run = await submit(
        api,
        protocol_name="incubate_plate",
        parameters={"steps": 400, "step_seconds": 0.05},
        assets={"plate": "source_plate"},
    )
    run_id = run["accession_id"]
    seen: list[str] = []
    async for status in _status_events(api, run_id):
        seen.append(status)
        if status == "running" and "pausing" not in seen:
            await api.post(f"/api/v1/protocols/runs/{run_id}/actions", json={"action": "pause"})
        if status != "paused":
            continue
        # Paused, holding its plate: the operator takes the plate away.
        locks = await api.get("/api/v1/locks", params={"protocol_run_accession_id": run_id})
        (lease,) = locks.json()["items"]
        assert lease["asset_name"] == "source_plate" and lease["seconds_left"] > 0
        path = f"/api/v1/locks/{lease['asset_id']}/force-release"
        missing_reason = await api.post(path, json={})
        assert missing_reason.status_code == 400, missing_reason.text
        released = await api.post(path, json={"reason": "needed in the reader"})
        assert released.status_code == 200, released.text
        assert released.json()["run_id"] == run_id and released.json()["token"] == lease["token"]
        again = await api.post(path, json={"reason": "twice"})
        assert again.status_code == 404 and again.json()["code"] == "not_found"
        locks = await api.get("/api/v1/locks", params={"protocol_run_accession_id": run_id})
        assert locks.json()["items"] == []
        # Resumed, the run is fenced before its next step touches anything.
        await api.post(f"/api/v1/protocols/runs/{run_id}/actions", json={"action": "resume"})
    assert seen[-1] == "failed"
    done = (await api.get(f"/api/v1/protocols/runs/{run_id}")).json()
    assert done["error"]["code"] == "lease_lost", done["error"]
    assert done["final_state"]["completed_steps"] < 400


def _environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


async def test_each_service_process_holds_only_its_own_secrets(stack: Stack) -> None:
    """Before, every service got the whole environment: the admin token, the database URL and
    (under ``make run``) every identity's NATS password."""
    seen: dict[str, dict[str, str]] = {}
    for service in stack.processes:
        seen[service.name] = _environ_of(service.process.pid)
    for name, env in seen.items():
        assert env["NATS_USER"].startswith(name.split("-")[0]), name
        assert ("PRAXIS_ADMIN_TOKEN" in env) == (name == "gateway"), name
        has_db = name in ("scheduler", "code-manager", "asset-manager", "audit")
        assert ("DATABASE_URL" in env) == has_db, name
        others = [p for n, e in seen.items() if n != name for p in [e["NATS_PASSWORD"]]]
        assert not any(password in env.values() for password in others), name


async def test_runs_on_demand_and_in_time(api: httpx.AsyncClient) -> None:
    """``mode: immediate`` is placed now (201) or refused (409 naming the holder, nothing left
    queued); ``not_before`` delays a queued run; ``deadline`` fails one that could not start."""
    runs = "/api/v1/protocols/runs"
    slow = {"steps": 600, "step_seconds": 0.05}
    holder = await submit(
        api, protocol_name="incubate_plate", parameters=slow, assets={"plate": "dest_plate"}
    )
    holder_id = holder["accession_id"]
    async for status in _status_events(api, holder_id):
        if status == "running":
            break

    refused = await api.post(
        runs,
        json={
            "protocol_name": "incubate_plate",
            "assets": {"plate": "dest_plate"},
            "mode": "immediate",
        },
    )
    assert refused.status_code == 409, refused.text
    error = refused.json()
    assert error["code"] == "assets_unavailable"
    assert error["details"]["blocked_by"] == [holder_id]
    recorded = (await api.get(f"{runs}/{error['details']['run_id']}")).json()
    assert (recorded["status"], recorded["mode"]) == ("failed", "immediate")
    assert recorded["error"]["code"] == "assets_unavailable"
    queued = (await api.get(runs, params={"status": "queued", "limit": 1000})).json()["items"]
    assert error["details"]["run_id"] not in [r["accession_id"] for r in queued]

    placed = await api.post(
        runs,
        json={
            "protocol_name": "incubate_plate",
            "parameters": {"steps": 2, "step_seconds": 0.01},
            "assets": {"plate": "source_plate"},
            "mode": "immediate",
        },
    )
    assert placed.status_code == 201, placed.text
    assert placed.json()["status"] != "queued"
    _, done = await finished(api, placed.json()["accession_id"])
    assert done["status"] == "completed"

    late = await api.post(
        runs,
        json={
            "protocol_name": "incubate_plate",
            "assets": {"plate": "dest_plate"},
            "deadline": (datetime.now(UTC) + timedelta(seconds=1)).isoformat(),
        },
    )
    assert late.status_code == 201, late.text
    _, done = await finished(api, late.json()["accession_id"])
    assert (done["status"], done["error"]["code"]) == ("failed", "deadline_passed")

    not_before = datetime.now(UTC) + timedelta(seconds=2)
    later = await submit(api, protocol_name="noop", not_before=not_before.isoformat())
    assert later["not_before"] is not None
    _, done = await finished(api, later["accession_id"])
    assert done["status"] == "completed"
    assert datetime.fromisoformat(done["started_at"]) >= not_before

    for body, field in (
        ({"mode": "immediate", "not_before": not_before.isoformat()}, "not_before"),
        ({"deadline": "2020-01-01T00:00:00+00:00"}, "deadline"),
        ({"not_before": "2030-01-01T00:00:00"}, "not_before"),  # no time zone
    ):
        bad = await api.post(runs, json={"protocol_name": "noop", **body})
        assert bad.status_code == 400, bad.text
        assert field in bad.text

    cancel = await api.post(f"{runs}/{holder_id}/actions", json={"action": "cancel"})
    assert cancel.status_code == 200, cancel.text


async def test_an_operator_sets_a_wells_volume_and_the_next_run_finds_it(
    api: httpx.AsyncClient,
) -> None:
    found = await api.get("/api/v1/resources", params={"name": "source_plate"})
    (plate,) = [p for p in found.json()["items"] if p["name"] == "source_plate"]
    url = f"/api/v1/resources/{plate['accession_id']}/state"

    done = await api.post(
        url, json={"state": {"source_plate_well_D5": {"volume": 77}}, "reason": "refilled D5"}
    )
    assert done.status_code == 200, done.text
    assert done.json()["kind"] == "set"
    now = (await api.get(f"/api/v1/resources/{plate['accession_id']}")).json()
    assert now["state"]["source_plate_well_D5"]["volume"] == 77

    run = await submit(
        api, protocol_name="transfer", parameters={"volume": 7, "wells": ["D5"]}, assets=PLATES
    )
    _, finished_run = await finished(api, run["accession_id"])
    assert finished_run["status"] == "completed", finished_run["error"]
    source = finished_run["asset_states"]["source_plate"]["source_plate_well_D5"]["volume"]
    assert source == 70.0  # the live plate had the operator's 77 µL

    for body, status, code in (
        (
            {"state": {"source_plate_well_D5": {"volume": 9999}}, "reason": "x"},
            422,
            "invalid_input",
        ),
        ({"state": {"nope": {"volume": 1}}, "reason": "x"}, 422, "invalid_input"),
        ({"tips": {"A1": True}, "reason": "x"}, 422, "invalid_input"),  # a plate has no tips
        ({"state": {"source_plate_well_D5": {"volume": 1}}}, 400, "invalid_request"),  # no reason
        ({"reason": "x", "colour": "red"}, 400, "invalid_request"),
    ):
        refused = await api.post(url, json=body)
        assert (refused.status_code, refused.json()["code"]) == (status, code), refused.text


async def sse(
    api: httpx.AsyncClient, run_id: str, last_event_id: str | None = None
) -> list[tuple[int, str]]:
    """The run's event stream read to its end: (id, event name) of each event."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    found: list[tuple[int, str]] = []
    url = f"/api/v1/protocols/runs/{run_id}/events"
    async with api.stream("GET", url, headers=headers) as events:
        assert events.status_code == 200
        assert events.headers["content-type"].startswith("text/event-stream")
        event_id = None
        async for line in events.aiter_lines():
            if line.startswith("id: "):
                event_id = int(line.removeprefix("id: "))
            elif line.startswith("event: "):
                assert event_id is not None, "an event without an id"
                found.append((event_id, line.removeprefix("event: ")))
                event_id = None
    return found


async def test_the_event_stream_numbers_its_events_and_resumes_after_the_last_one_seen(
    api: httpx.AsyncClient,
) -> None:
    run = await submit(api, protocol_name="noop")
    events = await sse(api, run["accession_id"])
    ids = [event_id for event_id, _ in events]
    assert ids == sorted(set(ids)) and len(ids) >= 5, events
    assert events[-1][1] == "scheduler.run.status_changed"

    # A client that saw the third event reconnects: it gets the rest, and the stream ends
    # (the run has ended) instead of waiting for events that will not come.
    assert await sse(api, run["accession_id"], last_event_id=str(ids[2])) == events[3:]
    assert await sse(api, run["accession_id"], last_event_id=str(ids[-1])) == [
        e for e in events if e[0] > ids[-1]
    ]

    url = f"/api/v1/protocols/runs/{run['accession_id']}/events"
    refused = await api.get(url, headers={"Last-Event-ID": "yesterday"})
    assert refused.status_code == 400
    assert refused.json()["code"] == "invalid_request"

    openapi = (await api.get("/openapi.json")).json()
    documented = openapi["paths"]["/api/v1/protocols/runs/{run_id}/events"]["get"]
    assert "text/event-stream" in documented["responses"]["200"]["content"]
    assert "Last-Event-ID" in {p["name"] for p in documented["parameters"]}


async def test_an_idle_event_stream_sends_keep_alives(api: httpx.AsyncClient) -> None:
    """A run that waits sends nothing for a while: comment lines keep proxies from closing
    the stream, and the stream still ends when the run does."""
    later = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    run = await submit(api, protocol_name="noop", not_before=later)
    url = f"/api/v1/protocols/runs/{run['accession_id']}/events"
    keepalives = 0
    async with api.stream("GET", url) as events:
        async for line in events.aiter_lines():
            if line == ": keep-alive":
                keepalives += 1
                if keepalives == 2:
                    cancel = {"action": "cancel"}
                    actions = f"/api/v1/protocols/runs/{run['accession_id']}/actions"
                    assert (await api.post(actions, json=cancel)).status_code == 200
    assert keepalives >= 2
    assert (await api.get(f"/api/v1/protocols/runs/{run['accession_id']}")).json()[
        "status"
    ] == "cancelled"
