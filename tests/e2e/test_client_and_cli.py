"""The typed client (``praxis_client``) and the ``praxis`` CLI against the whole stack: replies
as contract models, errors as the contract's exceptions (and the CLI's exit codes), lists paged,
the live stream resumed after the gateway is killed mid-run."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import nats
import pytest
from click.testing import Result
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from praxis_cli.main import app as cli_app
from praxis_client import AsyncClient, Client, StreamEvent, calls, correlation_of, status_of
from praxis_contracts.assets import ReserveAssets
from praxis_contracts.common import RunStatus
from praxis_contracts.errors import Conflict, InvalidRequest, NotFound, Unauthenticated
from praxis_contracts.runs import FunctionCallRecorded, RunStatusChanged
from praxis_devstack.otlp import ReceivedSpan, TraceReceiver
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_devstack.stack import DEMO_WORKCELL, Stack, make_example_repo, repo_root

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

PLATES = {"source_plate": "source_plate", "dest_plate": "dest_plate"}


@pytest.fixture(scope="module")
def traces() -> Iterator[TraceReceiver]:
    receiver = TraceReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory,
    make_database: MakeDatabase,
    admin_token: str,
    traces: TraceReceiver,
) -> AsyncIterator[Stack]:
    base: Path = tmp_path_factory.mktemp("client-stack")
    running = Stack(
        base_dir=base,
        fast=True,
        environ={"DATABASE_URL": make_database("client")},
        admin_token=admin_token,
        # Traces on for this module's stack: every test here runs with them.
        service_env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": traces.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    try:
        await running.start()
        await running.seed()
        yield running
    finally:
        await running.stop()


@pytest.fixture
async def praxis(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with stack.client() as client:
        yield client


async def test_a_run_submitted_followed_and_read_back_as_contract_models(
    praxis: AsyncClient,
) -> None:
    run = await praxis.submit_run(
        "transfer",
        workcell=DEMO_WORKCELL,
        parameters={"volume": 10, "wells": ["A1", "B1"]},
        assets=PLATES,
    )
    assert run.status == RunStatus.QUEUED
    events = [event async for event in praxis.events(run.accession_id)]
    ids = [e.id for e in events]
    assert all(i is not None for i in ids) and ids == sorted(set(ids))  # type: ignore[type-var]
    messages = [e.message() for e in events]
    assert isinstance(messages[-1], RunStatusChanged)
    assert messages[-1].status == RunStatus.COMPLETED
    recorded = [m for m in messages if isinstance(m, FunctionCallRecorded)]
    assert {m.function for m in recorded} >= {"transfer", "move_liquid"}

    ended = await praxis.get_run(run.accession_id)
    assert ended.status == RunStatus.COMPLETED
    page = await praxis.list_calls(run.accession_id)
    one_by_one = [c async for c in praxis.paginate(calls.list_calls(run.accession_id, limit=1))]
    assert [c.sequence for c in one_by_one] == [c.sequence for c in page.items]
    assert len(one_by_one) == page.total >= 3
    summaries = [r async for r in praxis.paginate(calls.list_runs(status=["completed"]))]
    assert run.accession_id in {r.accession_id for r in summaries}

    # Resuming after an event gives exactly the events after it.
    after = [e async for e in praxis.events(run.accession_id, last_event_id=ids[2])]
    assert after == events[3:]


async def test_errors_come_back_as_the_contracts_exceptions(stack: Stack) -> None:
    async with stack.client() as praxis:
        with pytest.raises(NotFound) as missing:
            await praxis.get_run(uuid4())
    assert status_of(missing.value) == 404 and correlation_of(missing.value)
    async with AsyncClient(stack.api, "not-a-token") as stranger:
        with pytest.raises(Unauthenticated) as refused:
            await stranger.list_runs()
    assert status_of(refused.value) == 401


def test_the_sync_client_is_the_same_api(stack: Stack) -> None:
    with Client(stack.api, stack.admin_token, timeout=60.0) as praxis:
        run = praxis.submit_run("noop", workcell=DEMO_WORKCELL)
        events = list(praxis.events(run.accession_id))
        assert events[-1].ends_run
        assert praxis.get_run(run.accession_id).status == RunStatus.COMPLETED
        assert praxis.get_workcell(DEMO_WORKCELL).workcell.name == DEMO_WORKCELL
        with pytest.raises(NotFound):
            praxis.get_run(uuid4())


async def test_the_stream_resumes_across_a_gateway_killed_mid_run(
    stack: Stack, praxis: AsyncClient
) -> None:
    run = await praxis.submit_run(
        "incubate", workcell=DEMO_WORKCELL, parameters={"steps": 30, "step_seconds": 0.2}
    )
    seen: list[StreamEvent] = []
    killed = False
    async for event in praxis.events(run.accession_id):
        seen.append(event)
        if not killed and event.type == "orchestrator.call.recorded":
            killed = True
            await stack.kill_service("gateway")
            stack.start_service("gateway", "killed under a client's event stream")
    assert killed and seen[-1].ends_run
    assert RunStatus(seen[-1].data["status"]) == RunStatus.COMPLETED
    # Nothing lost, nothing twice: the same events as one unbroken read of the stream.
    await stack.wait_ready("gateway")
    whole = [e async for e in praxis.events(run.accession_id)]
    assert seen == whole


# -- the praxis CLI -------------------------------------------------------------------------------
def cli(stack: Stack, *args: str, token: str | None = None) -> Result:
    """``praxis <args>`` in this process, against the stack."""
    env = {
        "PRAXIS_URL": stack.api,
        "PRAXIS_TOKEN": token or stack.admin_token,
        "PRAXIS_PROFILE": "",
        "COLUMNS": "250",
    }
    return CliRunner().invoke(cli_app, list(args), env=env)


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def no_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRAXIS_CONFIG", str(tmp_path / "praxis.json"))


def test_cli_submit_watch_then_read_the_run_back(stack: Stack) -> None:
    submitted = cli(
        stack,
        "--json",
        "submit",
        "transfer",
        "-p",
        "volume=10",
        "-p",
        'wells=["A1"]',
        "-a",
        "source_plate=source_plate",
        "-a",
        "dest_plate=dest_plate",
        "--workcell",
        DEMO_WORKCELL,
        "--watch",
    )
    assert submitted.exit_code == 0, submitted.output
    events = json_lines(submitted.output)
    assert events[-1]["type"] == "scheduler.run.status_changed"
    assert events[-1]["data"]["status"] == "completed"
    run_id = events[-1]["data"]["run_id"]

    listed = cli(stack, "--json", "runs", "list", "--status", "completed", "--all")
    assert listed.exit_code == 0, listed.output
    assert run_id in {r["accession_id"] for r in json.loads(listed.output)}
    shown = cli(stack, "runs", "show", run_id)
    assert shown.exit_code == 0 and "completed" in shown.output and "transfer" in shown.output
    tree = cli(stack, "runs", "calls", run_id)
    assert tree.exit_code == 0
    assert "transfer completed" in tree.output and "move_liquid completed" in tree.output
    assert cli(stack, "runs", "logs", run_id).exit_code == 0

    # A finished run cannot be cancelled (409: exit 4); an unknown one is not found (exit 3).
    refused = cli(stack, "runs", "cancel", run_id)
    assert refused.exit_code == 4, refused.output
    assert "invalid_transition" in refused.output and "correlation id" in refused.output
    assert cli(stack, "runs", "show", str(uuid4())).exit_code == 3

    deck = cli(stack, "workcells", "show", DEMO_WORKCELL, "--wells", "dest_plate")
    assert deck.exit_code == 0, deck.output
    assert "dest_plate" in deck.output and "wells filled" in deck.output
    assert "dest_plate (uL)" in deck.output


def test_cli_queue_says_why_runs_wait_and_watch_ends_with_their_outcome(stack: Stack) -> None:
    drained = cli(stack, "workcells", "drain", DEMO_WORKCELL, "--reason", "cli test")
    assert drained.exit_code == 0, drained.output
    try:
        queued = cli(stack, "--json", "submit", "noop", "--workcell", DEMO_WORKCELL)
        assert queued.exit_code == 0, queued.output
        run_id = json.loads(queued.output)["accession_id"]
        waiting = cli(stack, "--json", "queue", "--workcell", DEMO_WORKCELL)
        assert waiting.exit_code == 0, waiting.output
        (mine,) = [
            r for r in json.loads(waiting.output)[DEMO_WORKCELL] if r["accession_id"] == run_id
        ]
        assert mine["waiting_for"] == "workcell_drained" and mine["waiting_since"]
        table = cli(stack, "queue")
        assert "workcell_drained" in table.output and f"{DEMO_WORKCELL}: " in table.output
    finally:
        assert cli(stack, "workcells", "undrain", DEMO_WORKCELL).exit_code == 0
    assert cli(stack, "runs", "watch", run_id).exit_code == 0

    long = cli(
        stack, "--json", "submit", "incubate", "--workcell", DEMO_WORKCELL, "-p", "steps=100"
    )
    long_id = json.loads(long.output)["accession_id"]
    assert cli(stack, "runs", "cancel", long_id, "--reason", "cli test").exit_code == 0
    watched = cli(stack, "runs", "watch", long_id)
    assert watched.exit_code == 7, watched.output
    assert "cancelled" in watched.output


def test_cli_tokens_scopes_and_leases(stack: Stack) -> None:
    created = cli(stack, "--json", "tokens", "create", "cli-reader", "--scope", "read")
    assert created.exit_code == 0, created.output
    reader = json.loads(created.output)
    assert cli(stack, "runs", "list", token=reader["token"]).exit_code == 0
    forbidden = cli(stack, "runs", "cancel", str(uuid4()), token=reader["token"])
    assert forbidden.exit_code == 5, forbidden.output
    assert cli(stack, "tokens", "revoke", reader["id"]).exit_code == 0
    assert cli(stack, "runs", "list", token=reader["token"]).exit_code == 5
    edges = cli(stack, "--json", "edges", "--workcell", DEMO_WORKCELL)
    assert edges.exit_code == 0, edges.output
    (edge,) = json.loads(edges.output)["items"]
    assert (edge["workcell"], edge["live"], edge["accepting"]) == (DEMO_WORKCELL, True, True)
    assert "live" in cli(stack, "edges").output
    leases = cli(stack, "--json", "locks", "list")
    assert leases.exit_code == 0 and "items" in json.loads(leases.output)


def test_the_installed_praxis_logs_in_and_checks_the_stack(stack: Stack, tmp_path: Path) -> None:
    praxis = Path(sys.executable).parent / "praxis"
    env = {**os.environ, "PRAXIS_CONFIG": str(tmp_path / "cfg.json"), "COLUMNS": "200"}
    for name in ("PRAXIS_URL", "PRAXIS_TOKEN", "PRAXIS_PROFILE"):
        env.pop(name, None)
    login = subprocess.run(
        [str(praxis), "login", stack.api, "--token", stack.admin_token, "--name", "lab"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert login.returncode == 0, login.stderr
    doctor = subprocess.run(
        [str(praxis), "--json", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    checks = json.loads(doctor.stdout)
    assert checks["profile"] == "lab" and checks["ready"] is True
    assert checks["token"] == "accepted" and checks["server_version"]
    assert abs(checks["clock_skew_s"]) < 2
    bad = subprocess.run(
        [str(praxis), "login", stack.api, "--token", "wrong", "--name", "bad"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 5 and "refused the token" in bad.stderr


def readme_block(marker: str, language: str) -> str:
    text = (repo_root() / "README.md").read_text()
    start = text.index(f"<!-- {marker}:start -->")
    end = text.index(f"<!-- {marker}:end -->")
    (block,) = re.findall(rf"```{language}\n(.*?)```", text[start:end], flags=re.S)
    return str(block)


def test_the_readme_client_example_runs(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_block("client-example", "python").replace("http://127.0.0.1:8000", stack.api)
    exec(compile(code, "README.md", "exec"), {"token": stack.admin_token})
    printed = capsys.readouterr().out
    assert "scheduler.run.status_changed" in printed and "completed" in printed


def test_the_readme_cli_example_runs(stack: Stack, tmp_path: Path) -> None:
    """Each ``praxis`` line of the README's example (before any pipe), in order, with only
    what ``login`` stored: no URL or token in the environment."""
    env = {"PRAXIS_CONFIG": str(tmp_path / "cfg.json"), "COLUMNS": "200"}
    env |= {"PRAXIS_URL": "", "PRAXIS_TOKEN": "", "PRAXIS_PROFILE": ""}
    lines = [
        line.split(" #")[0].split(" | ")[0].strip()
        for line in readme_block("cli-example", "sh").splitlines()
    ]
    assert len(lines) >= 8 and all(line.startswith("praxis ") for line in lines)
    for line in lines:
        words = shlex.split(line.replace("http://127.0.0.1:8000", stack.api))[1:]
        args = [a.replace("$TOKEN", stack.admin_token) for a in words]
        result = CliRunner().invoke(cli_app, args, env=env)
        assert result.exit_code == 0, f"{line}: {result.output}"


async def test_dead_letters_are_listed_and_shown_to_admins(
    stack: Stack, praxis: AsyncClient, tmp_path: Path
) -> None:
    seq = await stack.dead_letter(ReserveAssets.subject, b'{"run_id": "not-a-run"}')
    page = await praxis.list_dead_letters(limit=5)
    assert page.total >= 1 and page.items[0].seq == seq
    letter = page.items[0]
    assert letter.original_subject == ReserveAssets.subject
    assert letter.message_type == "ReserveAssets" and "malformed" in letter.reason
    shown = await praxis.get_dead_letter(seq)
    assert shown.payload == {"run_id": "not-a-run"} and shown.reason == letter.reason
    with pytest.raises(NotFound):
        await praxis.get_dead_letter(seq + 1000)

    listed = cli(stack, "--json", "dead-letters", "list", "--limit", "1")
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output)["items"][0]["seq"] == seq
    assert "ReserveAssets" in cli(stack, "dead-letters", "show", str(seq)).output
    reader = await praxis.create_token("dead-letter-reader", ["read", "operate"])
    refused = cli(stack, "dead-letters", "list", token=reader.token)
    assert refused.exit_code == 5 and "admin" in refused.output

    # A replay goes to the asset-manager's consumer, which finds it as malformed as before.
    assert shown.headers["Praxis-Dead-Letter-Identity"] == "asset-manager"
    with pytest.raises(InvalidRequest, match="malformed ReserveAssets"):
        await praxis.replay_dead_letter(seq, reason="retry after the fix")
    replayed = cli(stack, "dead-letters", "replay", str(seq), "--reason", "again")
    assert replayed.exit_code != 0 and "malformed" in replayed.output
    assert cli(stack, "dead-letters", "replay", str(seq), token=reader.token).exit_code == 5
    assert stack.infra is not None
    nc = await nats.connect(stack.infra.nats_operator_url)
    try:  # the replays were announced before they answered: the stream holds them now
        last = (await nc.jetstream().stream_info("PRAXIS_EVENTS")).state.last_seq
        # A dead letter that names no consumer (stored by hand, or before replays) is refused.
        ack = await nc.jetstream().publish("praxis.dlq.cmd.asset.reserve", b"{}")
    finally:
        await nc.close()
    trail = await praxis.list_events(
        types=["deadletters.letter.replayed"], limit=10, stored_through=last
    )
    mine = [e for e in trail.items if e.payload["seq"] == seq]
    assert [e.payload["reason"] for e in mine][-1] == "retry after the fix"
    assert {(e.actor, e.payload["outcome"], e.publisher) for e in mine} == {
        ("bootstrap-admin", "failed", "asset-manager")
    }
    with pytest.raises(Conflict, match="does not say which consumer"):
        await praxis.replay_dead_letter(ack.seq)


async def scrape(
    stack: Stack, service: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, labels): value}`` of the service's ``/metrics``."""
    url = stack.service(service).health_url.replace("/readyz", "/metrics")
    async with httpx.AsyncClient(timeout=10.0) as http:
        text = (await http.get(url)).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_domain_metrics_answer_an_operators_questions(
    stack: Stack, praxis: AsyncClient
) -> None:
    done = await praxis.wait((await praxis.submit_run("noop", workcell=DEMO_WORKCELL)).accession_id)
    assert done.status == RunStatus.COMPLETED
    await stack.dead_letter(ReserveAssets.subject, b'{"run_id": "metrics"}')
    await praxis.drain_workcell(DEMO_WORKCELL, reason="metrics test")
    try:
        queued = await praxis.submit_run("noop", workcell=DEMO_WORKCELL)
        async for event in praxis.events(queued.accession_id):
            if event.type == "asset.reservation.waiting":
                break
        waiting = await scrape(stack, "asset-manager")
        assert waiting[("praxis_reservation_queue", (("workcell", DEMO_WORKCELL),))] == 1
        oldest = ("praxis_reservation_oldest_wait_seconds", (("workcell", DEMO_WORKCELL),))
        assert waiting[oldest] >= 0
    finally:
        await praxis.undrain_workcell(DEMO_WORKCELL)
    assert (await praxis.wait(queued.accession_id)).status == RunStatus.COMPLETED

    assets = await scrape(stack, "asset-manager")
    assert assets[("praxis_reservation_queue", (("workcell", DEMO_WORKCELL),))] == 0
    assert assets[("praxis_lease_grants_total", (("path", "fast"),))] >= 1
    assert assets[("praxis_lease_grants_total", (("path", "queued"),))] >= 1
    assert assets[("praxis_reservation_wait_seconds_count", ())] >= 1
    dead = (("service", "asset-manager"), ("subject", ReserveAssets.subject))
    assert assets[("praxis_dead_letters_total", dead)] >= 1
    assert ("praxis_outbox_backlog", (("service", "asset-manager"),)) in assets

    runs = await scrape(stack, "scheduler")
    assert runs[("praxis_runs_ended_total", (("status", "completed"),))] >= 2
    # Every protocol run here has a series per open status, 0 now that all have ended.
    queued = {labels: v for (name, labels), v in runs.items() if name == "praxis_runs"}
    assert queued[(("protocol", "transfer"), ("status", "queued"))] == 0
    assert queued[(("protocol", "transfer"), ("status", "requires_intervention"))] == 0
    assert runs[("praxis_edges_live", (("workcell", DEMO_WORKCELL),))] == 1
    assert runs[("praxis_run_seconds_count", (("status", "completed"),))] >= 2
    assert runs[("praxis_run_phase_seconds_count", (("phase", "queued"),))] >= 2
    assert runs[("praxis_run_phase_seconds_count", (("phase", "running"),))] >= 2
    assert runs[("praxis_outbox_backlog", (("service", "scheduler"),))] >= 0
    assert runs[("praxis_db_connections", (("service", "scheduler"), ("state", "idle")))] >= 0


SERVICES = {"gateway", "scheduler", "code-manager", "asset-manager", "orchestrator"}


async def test_one_submission_is_one_trace_across_every_service(
    praxis: AsyncClient, traces: TraceReceiver
) -> None:
    """The gateway's span of ``POST /protocols/runs`` is the root of a trace that every
    service continues: the request to the scheduler, the code-manager's resolve, the
    asset-manager's reservation (through the scheduler's outbox), the edge's execution."""
    run = await praxis.submit_run("noop", workcell=DEMO_WORKCELL)
    await praxis.wait(run.accession_id)

    def root(spans: list[ReceivedSpan]) -> ReceivedSpan | None:
        return next(
            (
                s
                for s in spans
                if s.service == "gateway"
                and s.name == "POST /api/v1/protocols/runs"
                and s.trace_id in {t.trace_id for t in spans if t.name == "orchestrator ExecuteRun"}
            ),
            None,
        )

    def complete(spans: list[ReceivedSpan]) -> bool:
        found = root(spans)
        return (
            found is not None
            and {s.service for s in spans if s.trace_id == found.trace_id} >= SERVICES
        )

    spans = await asyncio.to_thread(traces.wait_for, complete, 60.0)
    found = root(spans)
    assert found is not None and found.parent_id == ""  # the gateway started it
    trace = [s for s in spans if s.trace_id == found.trace_id]
    names = {(s.service, s.name) for s in trace}
    assert ("scheduler", "scheduler SubmitRun") in names
    assert ("code-manager", "code-manager ResolveProtocol") in names
    assert ("asset-manager", "asset-manager ReserveAssets") in names
    ids = {s.span_id for s in trace}
    assert all(s.parent_id in ids for s in trace if s is not found)  # one tree, no orphans


async def test_cli_steers_a_run_and_follows_its_events(stack: Stack, praxis: AsyncClient) -> None:
    long = cli(
        stack, "--json", "submit", "incubate", "--workcell", DEMO_WORKCELL, "-p", "steps=300"
    )
    run_id = json.loads(long.output)["accession_id"]
    first = None
    async for event in praxis.events(run_id):
        first = first or event.id
        if event.type == "scheduler.run.status_changed" and event.data["status"] == "running":
            break
    assert cli(stack, "runs", "pause", run_id, "--reason", "cli").exit_code == 0
    await until(praxis, run_id, "paused")
    assert cli(stack, "runs", "resume", run_id).exit_code == 0
    await until(praxis, run_id, "running")
    assert cli(stack, "runs", "cancel", run_id).exit_code == 0
    await until(praxis, run_id, "cancelled")
    retried = cli(stack, "--json", "runs", "retry", run_id)
    assert retried.exit_code == 0, retried.output
    retry = json.loads(retried.output)
    assert retry["retry_of"] == run_id and retry["accession_id"] != run_id
    assert cli(stack, "runs", "cancel", retry["accession_id"]).exit_code == 0

    # The statuses of the first run, from the event before its first one (a follow resumes).
    followed = cli(
        stack,
        "--json",
        "events",
        "follow",
        "--type",
        "scheduler.run.status_changed",
        "--after",
        str(first - 1),
        "--count",
        "8",
    )
    assert followed.exit_code == 0, followed.output
    statuses = [
        e["data"]["status"] for e in json_lines(followed.output) if e["data"]["run_id"] == run_id
    ]
    assert statuses[:1] == ["queued"] and "paused" in statuses and "resuming" in statuses


async def until(praxis: AsyncClient, run_id: str, status: str) -> None:
    async for event in praxis.events(run_id):
        if event.type == "scheduler.run.status_changed" and event.data["status"] == status:
            return
    raise AssertionError(f"run {run_id} ended before {status}")


def test_cli_sources_and_snapshots(stack: Stack) -> None:
    repo = make_example_repo(stack.base_dir / "cli-source")
    added = cli(stack, "--json", "sources", "add", "cli-source", str(repo))
    assert added.exit_code == 0, added.output
    source = json.loads(added.output)
    assert source["status"] == "synced" and source["commit"]
    assert cli(stack, "sources", "sync", source["accession_id"]).exit_code == 0
    assert "cli-source" in cli(stack, "sources", "list").output
    assert cli(stack, "sources", "delete", source["accession_id"]).exit_code == 0
    assert "cli-source" not in cli(stack, "sources", "list").output

    snapshots = cli(stack, "--json", "workcells", "snapshots", DEMO_WORKCELL, "--limit", "5")
    assert snapshots.exit_code == 0, snapshots.output
    newest = json.loads(snapshots.output)["items"][0]
    restored = cli(
        stack,
        "workcells",
        "restore",
        DEMO_WORKCELL,
        newest["snapshot_id"],
        "--reason",
        "cli test",
    )
    assert restored.exit_code == 0, restored.output
    assert "restored" in restored.output


async def test_the_audit_trail_names_who_set_each_event_going(
    stack: Stack, praxis: AsyncClient
) -> None:
    """A run submitted by one token and cancelled by another: every event of it is in the
    trail (the edge's too, carried on from the request through every message), with the actor
    that caused it; filters and the CLI read it back."""
    name = f"alice-{uuid4().hex[:6]}"
    alice = await praxis.create_token(name, ["operate"])
    async with AsyncClient(stack.api, alice.token) as as_alice:
        run = await as_alice.submit_run(
            "incubate", workcell=DEMO_WORKCELL, parameters={"steps": 300}
        )
        async for event in as_alice.events(run.accession_id):
            if event.type == "orchestrator.run.started":
                break
    await praxis.cancel_run(run.accession_id, reason="audit test")
    last = 0
    async for event in praxis.events(run.accession_id):
        last = event.id or last
    page = await praxis.list_events(run_id=run.accession_id, stored_through=last, limit=500)
    trail = list(reversed(page.items))
    assert page.next_before is None and trail[-1].stream_seq == last
    actors = {e.type: e.actor for e in trail if e.type != "scheduler.run.status_changed"}
    assert actors["orchestrator.run.started"] == f"token:{name}"  # carried to the edge
    assert actors["asset.reservation.granted"] == f"token:{name}"
    statuses = [(e.payload["status"], e.actor) for e in trail if e.type.endswith("changed")]
    assert statuses[0] == ("queued", f"token:{name}")
    # The cancel is the admin's act; the edge's report that ends the run is of alice's chain.
    assert ("canceling", "bootstrap-admin") in statuses and statuses[-1][0] == "cancelled"
    started = next(e for e in trail if e.type == "orchestrator.run.started")
    assert started.publisher == f"orchestrator-{DEMO_WORKCELL}"
    assert started.workcell == DEMO_WORKCELL and started.correlation_id

    by_alice = await praxis.list_events(actor=f"token:{name}", stored_through=last, limit=500)
    assert {e.run_id for e in by_alice.items} == {run.accession_id}
    listed = cli(stack, "--json", "events", "list", "--run", str(run.accession_id), "--limit", "3")
    assert listed.exit_code == 0, listed.output
    first = json.loads(listed.output)
    assert [e["id"] for e in first["items"]] == [e.id for e in page.items[:3]]
    older = cli(
        stack,
        "events",
        "list",
        "--run",
        str(run.accession_id),
        "--before",
        str(first["next_before"]),
    )
    assert older.exit_code == 0 and "newest first" in older.output
    refused = cli(stack, "events", "list", "--since", "yesterday")
    assert refused.exit_code != 0
