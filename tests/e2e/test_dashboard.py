"""The dashboard (``/ui``) in a real headless Chromium against the whole stack: sign in, runs
appearing and completing live, a run cancelled by its button, the queue saying why, the deck
with its volumes, an intervention resolved from the inbox. Debian's Chromium, driven by
Playwright (``praxis_devstack.browser``); without it these skip, and fail under ``CI=true``."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from praxis_client import AsyncClient
from praxis_contracts.assets import ReserveAssets
from praxis_contracts.common import RunStatus
from praxis_devstack.browser import LAUNCH_ARGS, chromium
from praxis_devstack.pytest_plugin import MakeDatabase, server_unavailable
from praxis_devstack.stack import DEMO_WORKCELL, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

LIVE = 30_000  # ms the page has to show what the stack did (a push, not a poll, brings it)


@pytest.fixture(scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, make_database: MakeDatabase, admin_token: str
) -> AsyncIterator[Stack]:
    base: Path = tmp_path_factory.mktemp("dashboard")
    running = Stack(
        base_dir=base,
        fast=True,
        environ={"DATABASE_URL": make_database("dashboard")},
        admin_token=admin_token,
        # A cancel its frozen edge cannot confirm needs an operator after a second.
        service_env={"CANCEL_TIMEOUT_SECONDS": "1"},
    )
    try:
        await running.start()
        await running.seed()
        yield running
    finally:
        await running.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    path = chromium()
    if path is None:
        server_unavailable("no Chromium (make test installs Debian's where it can)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(path), args=LAUNCH_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser, stack: Stack) -> AsyncIterator[Page]:
    context = await browser.new_context(base_url=stack.api)
    opened = await context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on(
        "console",
        lambda message: (
            problems.append(f"{message.text} {message.location}")
            if message.type == "error"
            else None
        ),
    )
    await opened.goto("/ui/")
    await opened.get_by_test_id("token").fill(stack.admin_token)
    await opened.get_by_role("button", name="Sign in").click()
    await expect(opened.get_by_test_id("runs")).to_be_visible()
    yield opened
    await context.close()
    # No script error, nothing the Content-Security-Policy refused. (An HTTP error the page
    # answers in its banner, such as a protocol not found, is logged by the browser too.)
    answered = "Failed to load resource: the server responded with a status of 4"
    assert [p for p in problems if not p.startswith(answered)] == []


@pytest.fixture
async def praxis(stack: Stack) -> AsyncIterator[AsyncClient]:
    async with stack.client() as client:
        yield client


async def until_status(praxis: AsyncClient, run_id: Any, wanted: RunStatus) -> None:
    async for event in praxis.events(run_id):
        if event.type == "scheduler.run.status_changed" and event.data["status"] == wanted:
            return
    raise AssertionError(f"run {run_id} ended without reaching {wanted}")


async def test_a_wrong_token_is_refused_at_sign_in(browser: Browser, stack: Stack) -> None:
    context = await browser.new_context(base_url=stack.api)
    page = await context.new_page()
    await page.goto("/ui/")
    await page.get_by_test_id("token").fill("not-a-token")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_test_id("error")).to_contain_text("sign-in refused: unauthenticated")
    await expect(page.get_by_test_id("signin")).to_be_visible()
    await context.close()


async def test_a_run_submitted_from_the_api_completes_on_the_page(
    page: Page, praxis: AsyncClient
) -> None:
    run = await praxis.submit_run(
        "transfer",
        workcell=DEMO_WORKCELL,
        parameters={"volume": 5, "wells": ["A1"]},
        assets={"source_plate": "source_plate", "dest_plate": "dest_plate"},
    )
    run_id = str(run.accession_id)
    await expect(page.get_by_test_id(f"run-status-{run_id}")).to_have_text(
        "completed", timeout=LIVE
    )

    await page.get_by_test_id(f"run-row-{run_id}").get_by_role("link").click()
    await expect(page.get_by_test_id("run-status")).to_have_text("completed")
    await expect(page.get_by_test_id("call-tree")).to_contain_text("transfer completed")
    await expect(page.get_by_test_id("call-tree")).to_contain_text("move_liquid completed")
    await expect(page.get_by_test_id("field-result")).to_contain_text('"A1":5')
    await expect(page.get_by_test_id("timeline")).to_contain_text("orchestrator.run.finished")
    await expect(page.get_by_test_id("action-retry")).to_be_visible()


async def test_a_run_submitted_on_the_page_runs(page: Page, praxis: AsyncClient) -> None:
    await page.get_by_test_id("submit-protocol").fill("noop")
    await page.get_by_test_id("submit-workcell").fill(DEMO_WORKCELL)
    await page.get_by_test_id("submit-parameters").fill("[1]")
    await page.get_by_role("button", name="Submit").click()
    await expect(page.get_by_test_id("error")).to_contain_text("parameters must be a JSON object")
    await page.get_by_test_id("submit-parameters").fill("{}")
    await page.get_by_role("button", name="Submit").click()
    await expect(page.get_by_test_id("run-status")).to_have_text("completed", timeout=LIVE)
    run_id = page.url.rsplit("/", 1)[-1]
    assert (await praxis.get_run(run_id)).protocol_name == "noop"
    await page.goto("/ui/#/runs")
    await page.get_by_test_id("submit-protocol").fill("no_such_protocol")
    await page.get_by_role("button", name="Submit").click()
    await expect(page.get_by_test_id("error")).to_contain_text("not_found")


async def test_a_run_is_cancelled_by_its_button(page: Page, praxis: AsyncClient) -> None:
    run = await praxis.submit_run(
        "incubate", workcell=DEMO_WORKCELL, parameters={"steps": 300, "step_seconds": 0.1}
    )
    await page.goto(f"/ui/#/runs/{run.accession_id}")
    await expect(page.get_by_test_id("run-status")).to_have_text("running", timeout=LIVE)
    await expect(page.get_by_test_id("call-1")).to_be_visible(timeout=LIVE)  # calls arrive live
    await page.get_by_test_id("reason").fill("wrong plate loaded")
    await page.get_by_test_id("action-cancel").click()
    await expect(page.get_by_test_id("run-status")).to_have_text("cancelled", timeout=LIVE)
    ended = await praxis.get_run(run.accession_id)
    assert ended.status == RunStatus.CANCELLED


async def test_the_queue_says_why_and_the_deck_shows_volumes(
    page: Page, praxis: AsyncClient
) -> None:
    await page.goto(f"/ui/#/workcells/{DEMO_WORKCELL}")
    await expect(page.get_by_test_id("contents-source_plate")).to_contain_text("wells filled")
    await expect(page.get_by_test_id("contents-tip_rack")).to_contain_text("tips")
    layout = await praxis.get_workcell(DEMO_WORKCELL)
    plate = next(a for a in layout.assets if a.name == "source_plate")
    recorded = (plate.state or {})["source_plate_well_A1"]["volume"]
    await page.get_by_test_id("wells-source_plate").locator("summary").click()
    await expect(page.get_by_test_id("well-source_plate-A1")).to_have_text(f"{recorded:g}")
    await page.get_by_test_id("drain-reason").fill("maintenance")
    await page.get_by_test_id("drain").click()
    await expect(page.get_by_test_id("workcell-state")).to_have_text("drained: maintenance")
    try:
        run = await praxis.submit_run("noop", workcell=DEMO_WORKCELL)
        await page.goto("/ui/#/queue")
        waiting = page.get_by_test_id(f"waiting-{run.accession_id}")
        await expect(waiting).to_have_text("workcell_drained", timeout=LIVE)
    finally:
        await page.goto(f"/ui/#/workcells/{DEMO_WORKCELL}")
        await page.get_by_test_id("undrain").click()
        await expect(page.get_by_test_id("workcell-state")).to_have_text("open")
    await page.goto("/ui/#/queue")  # it leaves the queue live once placed
    await expect(page.get_by_test_id(f"queued-{run.accession_id}")).to_have_count(0, timeout=LIVE)
    assert (await praxis.wait(run.accession_id)).status == RunStatus.COMPLETED


async def test_the_edges_page_shows_the_workcells_orchestrator(page: Page) -> None:
    await page.goto("/ui/#/edges")
    await expect(page.get_by_test_id(f"edge-state-{DEMO_WORKCELL}")).to_have_text("live")


async def test_a_dead_letter_is_shown_with_its_body(page: Page, stack: Stack) -> None:
    seq = await stack.dead_letter(ReserveAssets.subject, b'{"run_id": "dashboard"}')
    await page.goto("/ui/#/dead-letters")
    row = page.get_by_test_id(f"dead-letter-{seq}")
    await expect(row).to_contain_text("ReserveAssets")
    await row.get_by_role("link").click()
    await expect(page.get_by_test_id("dead-body")).to_contain_text('"run_id": "dashboard"')
    await expect(page.get_by_test_id("dead-reason")).to_contain_text("malformed")

    # Replayed from the page: the consumer finds it as malformed as before, and says so.
    await page.get_by_test_id("replay-reason").fill("dashboard replay")
    await page.get_by_test_id("replay").click()
    await expect(page.get_by_test_id("error")).to_contain_text("malformed ReserveAssets")
    # The audit trail has the replay, with who asked.
    await page.goto("/ui/#/audit")
    await page.get_by_test_id("audit-type").fill("deadletters.letter.replayed")
    await page.get_by_test_id("audit-search").click()
    row = page.get_by_test_id("audit").locator("tbody tr").filter(has_text=f'"seq":{seq},')
    await expect(row).to_contain_text("bootstrap-admin")
    await expect(row).to_contain_text("asset-manager")


async def test_an_intervention_is_resolved_from_the_inbox(
    page: Page, praxis: AsyncClient, stack: Stack
) -> None:
    """Last: it freezes the edge. A cancel the frozen edge cannot confirm leaves the run to an
    operator, who resolves it on the page."""
    run = await praxis.submit_run(
        "incubate", workcell=DEMO_WORKCELL, parameters={"steps": 600, "step_seconds": 0.1}
    )
    await until_status(praxis, run.accession_id, RunStatus.RUNNING)
    edge = stack.service("orchestrator").process.pid
    os.killpg(edge, signal.SIGSTOP)
    try:
        await praxis.cancel_run(run.accession_id, reason="dashboard test")
        await until_status(praxis, run.accession_id, RunStatus.REQUIRES_INTERVENTION)
        await page.goto("/ui/#/interventions")
        await expect(page.get_by_test_id("inbox-count")).to_have_text("(1)", timeout=LIVE)
        row = page.get_by_test_id(f"intervention-{run.accession_id}")
        await expect(row).to_be_visible(timeout=LIVE)
        await page.get_by_test_id(f"reason-{run.accession_id}").fill("plate checked by hand")
        await page.get_by_test_id(f"resolve-failed-{run.accession_id}").click()
        await expect(row).to_have_count(0, timeout=LIVE)
        await expect(page.get_by_test_id("inbox-count")).to_have_text("", timeout=LIVE)
        assert (await praxis.get_run(run.accession_id)).status == RunStatus.FAILED
        assert (await praxis.list_locks(run_id=run.accession_id)).items == []
    finally:
        os.killpg(edge, signal.SIGCONT)
