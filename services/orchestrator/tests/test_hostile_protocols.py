"""A protocol is untrusted code: whatever it does, it does to its own process.

Real nats-server, the orchestrator in-process, real runner processes. Each test is an attack a
protocol author could write; before runs had processes of their own, the protocol ran in the
orchestrator's process and each of these reached the edge's login, another run or the guard.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from praxis_contracts.errors import ErrorCode
from praxis_contracts.runs import RunFinished
from praxis_runtime import landlock

pytestmark = pytest.mark.integration

ROBOT = {"lh": "liquid_handler", "tips": "tip_rack", "dest": "dest_plate"}


async def test_a_protocol_finds_no_secret_no_network_and_nothing_of_the_edge(
    world: Any, tmp_path: Path, nats_access: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "credentials.json"
    secret.write_text('{"orchestrator": "s3cret"}')
    secret.chmod(0o600)
    port = int(nats_access.operator_url.rsplit(":", 1)[1].split("/")[0])
    monkeypatch.setenv("NATS_PASSWORD", "s3cret")  # as a service's environment holds it
    cmd = await world.command(
        "probe", {}, {"pid": os.getpid(), "secret_file": str(secret), "port": port}
    )
    finished = await (await world.execute(cmd)).finished()
    assert finished.outcome == "completed", finished.error
    found = finished.result
    assert not any("NATS" in name or "PASSWORD" in name for name in found["environ"])
    assert found["parent_environ"].startswith("refused"), found["parent_environ"][:80]
    assert found["file"].startswith("refused")
    if landlock.abi_version() >= 4:  # TCP is confined from ABI 4
        assert found["tcp"].startswith("refused")
    assert found["objects"] == []  # no lease keeper, NATS client or other run's view


async def test_a_protocol_that_exits_its_process_ends_only_its_own_run(world: Any) -> None:
    other = await world.command("keep_stepping", {"plate": "dest_plate"}, {"until": "/nope"})
    other_log = await world.execute(other)
    cmd = await world.command("exit_now", {"plate": "source_plate"})
    finished = await (await world.execute(cmd)).finished()
    assert finished.outcome == "failed"
    assert finished.error is not None and finished.error.type == "RunnerExited"
    run = world.edge.executor.runs.get(other.run_id)
    assert run is not None and not run.link.ended.done()  # the other run goes on
    assert other_log.of(RunFinished) == []


async def test_a_protocol_that_exhausts_memory_fails_alone(world: Any) -> None:
    cmd = await world.command("exhaust_memory", {"plate": "source_plate"})
    # Filling its 4 GiB address space takes 7-10 s here alone, longer on a loaded machine
    # (it once passed the general 15 s bound in CI): a bound on the outcome, not a speed.
    finished = await (await world.execute(cmd)).finished(timeout=90)
    assert finished.outcome == "failed"
    # Its process hit its own address-space limit (MemoryError) or was killed for it.
    assert finished.error is not None
    assert finished.error.type in {"MemoryError", "RunnerExited"}, finished.error
    again = await (await world.execute(await world.command("touch", ROBOT_TOUCH))).finished()
    assert again.outcome == "completed", again.error


ROBOT_TOUCH = {"lh": "liquid_handler", "plate": "dest_plate", "tips": "tip_rack"}


async def test_switching_off_the_guard_in_its_own_process_reaches_nothing(world: Any) -> None:
    """The guard that matters is in the orchestrator: patching the runner's copy of it (or
    anything else there) changes what the protocol sees, not what the orchestrator does."""
    cmd = await world.command("unguard", ROBOT)
    finished = await (await world.execute(cmd)).finished()
    assert finished.outcome == "failed"
    assert finished.error is not None and finished.error.code == ErrorCode.ASSET_NOT_LEASED
    plate = world.edge.executor.workcell.live.get("source_plate")
    assert [w.tracker.get_used_volume() for w in plate.get_all_items()] == [200.0] * 96
    # And the next run on the edge is guarded as ever.
    for binding in cmd.bindings:  # as the asset-manager does once the run finished
        await world.leases.force_release(binding.lease_key, "run finished")
    steal = await (await world.execute(await world.command("steal_via_channel", ROBOT))).finished()
    assert steal.error is not None and steal.error.code == ErrorCode.ASSET_NOT_LEASED
