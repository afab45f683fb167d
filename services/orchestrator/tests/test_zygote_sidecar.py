"""The Kubernetes shape of run isolation: the zygote in a container of its own.

There it is not started by the orchestrator's sandbox but runs as its container's program
(``python -m praxis_orchestrator.zygote --listen ...``), with no Secret mounted, confines itself
once its socket is bound, and the orchestrator reaches it through the socket
(``ZYGOTE_SOCKET``). Here it is a process started the same way, with an environment holding
nothing; the runs behave as with a zygote the orchestrator started, and its runners are killed
by the zygote (they are in another PID namespace in a pod).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from praxis_contracts.runs import ControlRunExecution, FunctionCallRecorded, RunBlocked

pytestmark = pytest.mark.integration


@pytest.fixture
def sidecar(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    socket_dir = tmp_path / "zygote"
    socket_dir.mkdir()
    code, runs = tmp_path / "code", tmp_path / "runs"
    code.mkdir()
    runs.mkdir()
    path = socket_dir / "zygote.sock"
    argv = [sys.executable, "-m", "praxis_orchestrator.zygote", "--listen", str(path)]
    argv += ["--scratch", str(runs), "--code", str(code)]
    env = {"PATH": os.defpath, "HOME": str(runs), "LANG": "C.UTF-8"}
    process = subprocess.Popen(argv, env=env, start_new_session=True)
    try:
        yield path, process
    finally:
        process.kill()
        process.wait(10)


async def test_runs_go_through_a_zygote_in_a_container_of_its_own(
    sidecar: tuple[Path, subprocess.Popen[bytes]],
    nats_access: Any,
    tmp_path: Path,
    make_world: Any,
    eventually: Any,
) -> None:
    path, process = sidecar
    settings = {
        "zygote_socket": path,
        "protocol_code_cache_dir": tmp_path / "code",
        "run_scratch_dir": tmp_path / "runs",
        "run_blocked_seconds": 0.5,
        "cancel_escalation_seconds": 2.0,
    }
    async with make_world(nats_access, tmp_path, **settings) as world:
        await world.edge.start()
        assert world.edge.executor.zygote.process is None  # not started here: reached
        robot = {"lh": "liquid_handler", "tips": "tip_rack", "dest": "dest_plate"}
        both = {**robot, "source": "source_plate"}
        transfer = await world.command("transfer", both)
        finished = await (await world.execute(transfer)).finished()
        assert (finished.outcome, finished.result) == ("completed", 20.0), finished.error
        for binding in transfer.bindings:  # as the asset-manager does once the run finished
            await world.leases.force_release(binding.lease_key, "run finished")

        # A protocol that blocks its loop is killed through the zygote on cancel.
        flag = world.flag()
        cmd = await world.command("block", {"plate": "source_plate"}, {"until": str(flag)})
        log = await world.execute(cmd)
        await log.first(RunBlocked)
        runner = world.edge.executor.runs[cmd.run_id].link.pid
        started = time.monotonic()
        await world.client.publish(
            ControlRunExecution(run_id=cmd.run_id, workcell_name=world.workcell, action="cancel")
        )
        assert (await log.finished()).outcome == "cancelled"
        assert time.monotonic() - started < 12
        await eventually(lambda: not _alive(runner), "the runner was killed by the zygote")
        await asyncio.to_thread(flag.touch)
    assert (
        process.poll() is None
    )  # the zygote outlives an orchestrator (a restarted one reattaches)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_runner_that_reaches_the_zygotes_socket_is_refused(
    sidecar: tuple[Path, subprocess.Popen[bytes]],
    nats_access: Any,
    tmp_path: Path,
    make_world: Any,
) -> None:
    """Landlock does not confine connecting to a named socket: a runner can queue a connection
    at the zygote. When the orchestrator's connection ends (a restart), the zygote takes the
    next one in line: a process of its own is refused, never served as a supervisor."""
    path, process = sidecar
    settings = {
        "zygote_socket": path,
        "protocol_code_cache_dir": tmp_path / "code",
        "run_scratch_dir": tmp_path / "runs",
    }
    async with make_world(nats_access, tmp_path, **settings) as world:
        await world.edge.start()
        cmd = await world.command("dial_zygote", {}, {"path": str(path)})
        log = await world.execute(cmd)
        await log.first(FunctionCallRecorded, where=lambda c: c.function == "step_nothing")
        await world.edge.executor.zygote.stop()  # the orchestrator lets go of the zygote
        finished = await log.finished()
        assert (finished.outcome, finished.result) == ("completed", "refused"), finished
        # The zygote serves the orchestrator again (it reconnects for the next run).
        touch = {"lh": "liquid_handler", "plate": "dest_plate", "tips": "tip_rack"}
        again = await (await world.execute(await world.command("touch", touch))).finished()
        assert again.outcome == "completed", again.error
    assert process.poll() is None
