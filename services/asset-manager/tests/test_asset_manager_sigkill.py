"""Killing the asset-manager (SIGKILL) loses no lease, and a restarted one serves the waiters.

The asset-manager runs as a real process on a nats-server of this module's own (so its durable
consumers are not shared with the in-process services of other modules).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from praxis_contracts.assets import (
    AssetDraft,
    AssetsReserved,
    RegisterWorkcell,
    ReleaseAssets,
    ReservationWaiting,
    ReserveAssets,
)
from praxis_contracts.protocols import AssetRequirementSpec
from praxis_contracts.topology import ASSET_LEASES
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_devstack.servers import NatsServer, provision_blocking
from praxis_runtime.bus import Bus
from praxis_runtime.leases import LeaseStore, lease_key
from praxis_runtime.natsauth import NatsAuth

pytestmark = pytest.mark.integration

PLATE = "pylabrobot.resources.plate.Plate"


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    auth = NatsAuth(())
    with NatsServer(tmp_path_factory.mktemp("nats-sigkill"), auth=auth) as server:
        provision_blocking(server.operator_url, ())  # as a deployment's provisioning step
        yield server


class AssetManagerProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start and wait for the service's own 'ready' log line (pushed through a pipe)."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "praxis_asset_manager",
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.process.stderr is not None
        async with asyncio.timeout(60):
            while line := await self.process.stderr.readline():
                with self.log.open("ab") as f:
                    f.write(line)
                if b"asset-manager ready" in line:
                    asyncio.get_running_loop().create_task(self._drain())
                    return
        raise AssertionError(f"asset-manager did not start; see {self.log}")

    async def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            with self.log.open("ab") as f:
                f.write(line)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        assert await self.process.wait() == -signal.SIGKILL

    async def terminate(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            await self.process.wait()


@pytest.fixture
async def processes(
    own_nats: NatsServer, make_database: MakeDatabase, tmp_path: Path
) -> AsyncIterator[AssetManagerProcess]:
    assert own_nats.auth is not None
    env = {
        **os.environ,
        "NATS_URL": own_nats.url,
        **own_nats.auth.env_for("asset-manager"),
        "DATABASE_URL": make_database("sigkill"),
        "LOG_FORMAT": "text",
        "SERVICE_NAME": "asset-manager",
        "EDGE_PLACEMENT": "false",  # no orchestrator here: runs are placed without one
    }
    env.pop("HEALTH_PORT", None)
    process = AssetManagerProcess(env, tmp_path / "asset-manager.log")
    yield process
    await process.terminate()


async def test_sigkill_loses_no_lease_and_a_restart_serves_the_waiter(
    own_nats: NatsServer, processes: AssetManagerProcess
) -> None:
    await processes.start()
    client = Bus(own_nats.operator_url, "sigkill-test")
    await client.connect()
    try:
        await _scenario(client, processes)
    finally:
        await client.stop()


async def _scenario(client: Bus, processes: AssetManagerProcess) -> None:
    layout = await client.request(
        RegisterWorkcell(
            name="sigkill",
            assets=[AssetDraft(kind="resource", name="plate", fqn=PLATE, definition={})],
        ),
        timeout=30,
    )
    plate_id = layout.assets[0].accession_id
    events: dict[tuple[str, uuid.UUID], asyncio.Future[Any]] = {}

    def future(kind: str, run_id: uuid.UUID) -> asyncio.Future[Any]:
        return events.setdefault((kind, run_id), asyncio.get_running_loop().create_future())

    def handler(kind: str, event_type: Any) -> Any:
        async def on_message(msg: Any) -> None:
            event = event_type.model_validate_json(msg.data)
            if not future(kind, event.run_id).done():
                future(kind, event.run_id).set_result(event)

        return on_message

    for kind, event_type in (("granted", AssetsReserved), ("waiting", ReservationWaiting)):
        await client.nc.subscribe(event_type.subscription_subject(), cb=handler(kind, event_type))
    await client.nc.flush()

    requirement = [AssetRequirementSpec(name="plate", type_fqn=PLATE, kind="resource")]
    first, second = uuid.uuid4(), uuid.uuid4()
    for run_id in (first, second):
        await client.publish(
            ReserveAssets(run_id=run_id, requirements=requirement, workcell="sigkill")
        )
    held = await asyncio.wait_for(future("granted", first), 15)
    await asyncio.wait_for(future("waiting", second), 15)

    await processes.kill()

    leases = LeaseStore(client.publisher, ASSET_LEASES.bucket)
    state = await leases.read(lease_key("sigkill", plate_id))
    assert state.holder is not None and state.holder.run_id == first
    assert state.revision == held.bindings[0].token

    await processes.start()  # a new process: waiters come back from PostgreSQL
    await client.publish(ReleaseAssets(run_id=first, reason="run finished"))
    granted = await asyncio.wait_for(future("granted", second), 15)
    assert granted.bindings[0].asset_id == plate_id
    assert granted.bindings[0].token > held.bindings[0].token
