"""A small ``make chaos``: four sources whose modules loop at import beside a normal one, then
every service SIGKILLed and restarted in turn, nats-server stopped and started once in each
phase of a run, then PostgreSQL, under 15 contended runs of the chaos protocols (with a lease
TTL shorter than the time it takes to declare a killed edge lost).

The harness starts its own stack on embedded servers (it stops and starts them), so external
``NATS_URL`` / ``DATABASE_URL`` are not used. The checks do not depend on timing: every run ends
(after interventions are resolved), no asset ever had two live holders in the lease bucket's
history, none went to another run after a claimed lease ran out, no run failed for a fault, the
normal source was discovered in time, every service is ready again and no lease is left. A
failure prints the whole report (kills with their recovery times, the runs and leases at fault,
log lines about them); the stack's logs stay in the test's temporary folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from praxis_devstack.chaos import NATS_PHASES, ChaosOptions, run_chaos

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


async def test_every_run_ends_and_no_asset_is_held_twice_under_chaos(tmp_path: Path) -> None:
    options = ChaosOptions(
        runs=15,
        in_flight=4,
        seed=7,
        base_dir=tmp_path / "chaos",
        recover_timeout=60.0,
        spacing_timeout=30.0,
        settle_timeout=75.0,
        drain_timeout=60.0,
        workload_timeout=240.0,
        resolve_during=True,  # as an operator would: the queue keeps running through faults
        deadline=480.0,  # well inside the test's own limit, so the report is never cut off
        nats_phase_repeats=1,
        hostile_sources=4,
    )
    report = await run_chaos(options)
    text = json.dumps(report, indent=2, default=str)
    violations = report.get("violations", {})

    assert not report["errors"], text
    assert [k["target"] for k in report["kills"]] == [
        "scheduler",
        "code-manager",
        "asset-manager",
        "audit",
        "orchestrator",
        "gateway",
        *(f"nats-server@{phase}" for phase in NATS_PHASES),
        "postgresql",
    ], text
    assert not [k for k in report["kills"] if k.get("error")], text
    assert violations["overlaps"] == [], text
    assert violations["handed_on_while_unknown"] == [], text
    assert violations["failed_by_faults"] == [], text
    assert violations["discovery_starved"] == [], text
    assert report["discovery"]["normal_source"]["status"] == "synced", text
    assert violations["stuck"] == [], text
    assert violations["not_ready"] == [], text
    assert violations["leases_left"] == [], text
    assert violations["crashed"] == [], text
    assert violations["interventions_on_live_edge"] == [], text
    assert violations["submission"] == [], text
    assert violations["audit_trail"] == [], text  # every event once, through every kill
    assert report["interventions"]["failed"] == [], text
    assert set(report["by_status"]) <= {"completed", "failed", "cancelled"}, text
    assert report["runs_seen"] >= report["runs_submitted"] == options.runs, text
    assert report["ok"], text
