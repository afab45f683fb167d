"""Orchestrator with a real asset-manager and code-manager, NATS, PostgreSQL and PyLabRobot.

The module registers the demo workcell (chatterbox backends) under a name of its own and a git
repository of protocols, then drives the orchestrator the way the scheduler does: reserve assets,
resolve the protocol, publish ``ExecuteRun``, follow the run's events.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import git
import pytest

from praxis_asset_manager import app as asset_manager_app
from praxis_code_manager import app as code_manager_app
from praxis_contracts.assets import (
    AssetsReleased,
    AssetsReserved,
    RegisterWorkcell,
    ReleaseAssets,
    ReserveAssets,
    WorkcellLayout,
)
from praxis_contracts.errors import ErrorCode
from praxis_contracts.protocols import (
    ProtocolSource,
    RegisterProtocolSource,
    ResolvedProtocol,
    ResolveProtocol,
)
from praxis_contracts.runs import (
    ExecuteRun,
    FunctionCallRecorded,
    RunFinished,
    RunPreparing,
    RunStarted,
)
from praxis_contracts.topology import ASSET_LEASES
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity
from praxis_devstack.servers import provision_blocking
from praxis_orchestrator import app as orchestrator_app
from praxis_plr.layout import demo_workcell
from praxis_runtime.bus import Bus
from praxis_runtime.leases import LeaseStore

pytestmark = pytest.mark.integration

PROTOCOLS = '''"""Protocols for the orchestrator's integration tests."""

from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.resources import Plate, TipRack

from praxis_sdk import PraxisState, protocol_function


@protocol_function(version="1.0.0")
async def touch(
    lh: LiquidHandler, plate: Plate, tips: TipRack, state: PraxisState, label: str = "touched"
) -> str:
    """Pick up one tip and put it back: moves nothing but the tip."""
    await lh.pick_up_tips([tips.get_item("A1")])
    await lh.return_tips()
    state["touched"] = plate.name
    return f"{label}:{plate.name}"


@protocol_function(version="1.0.0")
async def explode(plate: Plate, state: PraxisState) -> None:
    """Fail on purpose."""
    state["before_failure"] = True
    raise ValueError(f"boom on {plate.name}")
'''


@pytest.fixture(scope="module")
def workcell_name() -> str:
    return f"wc_{uuid.uuid4().hex[:12]}"  # also the orchestrator's routing key and durable


@pytest.fixture(scope="module")
async def stack(
    nats_identity: NatsIdentity,
    nats_url: str,
    make_database: MakeDatabase,
    tmp_path_factory: pytest.TempPathFactory,
    services: Any,
    local_sources: dict[str, Any],
    workcell_name: str,
) -> None:
    common = {"health_port": None, "graceful_timeout_seconds": 5}
    await services(
        asset_manager_app.build_app,
        asset_manager_app.Settings(
            database_url=make_database("orch_am"), **nats_identity("asset-manager"), **common
        ),
    )
    await services(
        code_manager_app.build_app,
        code_manager_app.Settings(
            database_url=make_database("orch_cm"),
            protocol_repo_dir=tmp_path_factory.mktemp("orch-code-manager"),
            **nats_identity("code-manager"),
            **common,
            **local_sources,
        ),
    )
    provision_blocking(nats_url, [workcell_name])  # its state store, as deployment does
    await services(
        orchestrator_app.build_app,
        orchestrator_app.Settings(
            praxis_workcell=workcell_name,
            protocol_code_cache_dir=tmp_path_factory.mktemp("orchestrator-code"),
            run_scratch_dir=tmp_path_factory.mktemp("orchestrator-runs"),
            **nats_identity("orchestrator"),
            **common,
        ),
    )


@pytest.fixture(scope="module")
async def workcell(stack: None, client: Bus, workcell_name: str) -> WorkcellLayout:
    return await client.request(
        RegisterWorkcell(name=workcell_name, assets=demo_workcell()), timeout=30
    )


@pytest.fixture(scope="module")
async def source(
    stack: None, client: Bus, tmp_path_factory: pytest.TempPathFactory
) -> ProtocolSource:
    path = tmp_path_factory.mktemp("protocols")
    (path / "protocols.py").write_text(PROTOCOLS)
    repo = git.Repo.init(path, initial_branch="main")
    repo.index.add(["protocols.py"])
    author = git.Actor("Praxis Tests", "tests@praxis.invalid")
    repo.index.commit("protocols", author=author, committer=author)
    return await client.request(
        RegisterProtocolSource(name=f"orch-{uuid.uuid4().hex[:8]}", url=str(path)), timeout=60
    )


@pytest.fixture
async def ready(workcell: WorkcellLayout, source: ProtocolSource, client: Bus) -> Bus:
    """The client bus, with the workcell and protocols registered."""
    return client


@pytest.fixture
def leases(client: Bus) -> LeaseStore:
    return LeaseStore(client.publisher, ASSET_LEASES.bucket)


Reserve = Callable[..., Awaitable[AssetsReserved]]


@pytest.fixture
async def reserve(ready: Bus, tap: Any, workcell: WorkcellLayout) -> AsyncIterator[Reserve]:
    """``await reserve(run_id, resolved, pins)``: lease the protocol's assets for the run.

    Every reservation is released when the test ends (the scheduler would, on RunFinished).
    """
    runs: list[uuid.UUID] = []

    async def lease(
        run_id: uuid.UUID, resolved: ResolvedProtocol, pins: dict[str, str] | None = None
    ) -> AssetsReserved:
        granted = await tap(AssetsReserved, str(run_id))
        runs.append(run_id)
        await ready.publish(
            ReserveAssets(
                run_id=run_id,
                requirements=resolved.definition.spec.assets,
                workcell=workcell.workcell.name,
                pins=pins or {},
            )
        )
        return await granted.next()

    yield lease
    for run_id in runs:
        released = await tap(AssetsReleased, str(run_id))
        await ready.publish(ReleaseAssets(run_id=run_id, reason="test over"))
        await released.next()


class RunEvents:
    """Taps on every orchestrator event of one run."""

    def __init__(self, preparing: Any, started: Any, calls: Any, finished: Any) -> None:
        self.preparing = preparing
        self.started = started
        self.calls = calls
        self.finished = finished


@pytest.fixture
def follow(tap: Any, workcell_name: str) -> Callable[[uuid.UUID], Awaitable[RunEvents]]:
    async def subscribe(run_id: uuid.UUID) -> RunEvents:
        key = f"{workcell_name}.{run_id}"  # run events are keyed by workcell, then run
        return RunEvents(
            await tap(RunPreparing, key),
            await tap(RunStarted, key),
            await tap(FunctionCallRecorded, key),
            await tap(RunFinished, key),
        )

    return subscribe


async def resolve(client: Bus, name: str, **parameters: Any) -> ResolvedProtocol:
    return await client.request(ResolveProtocol(protocol_name=name, parameters=parameters))


def execute(run_id: uuid.UUID, resolved: ResolvedProtocol, grant: AssetsReserved) -> ExecuteRun:
    return ExecuteRun(
        run_id=run_id,
        workcell_id=grant.workcell_id,
        workcell_name=grant.workcell_name,
        definition=resolved.definition,
        parameters=resolved.parameters,
        bindings=grant.bindings,
    )


async def test_protocol_runs_to_completion(
    ready: Bus, reserve: Reserve, follow: Any, workcell_name: str
) -> None:
    run_id = uuid.uuid4()
    resolved = await resolve(ready, "touch", label="hello")
    grant = await reserve(run_id, resolved, {"plate": "source_plate"})
    assert grant.workcell_name == workcell_name
    events = await follow(run_id)

    await ready.publish(execute(run_id, resolved, grant))

    await events.preparing.next()
    await events.started.next()
    running, completed = await events.calls.next(), await events.calls.next()
    assert (running.function, running.version, running.status) == ("touch", "1.0.0", "running")
    assert completed.call_id == running.call_id
    assert (completed.status, completed.error, completed.parent_call_id) == (
        "completed",
        None,
        None,
    )
    assert running.arguments["label"] == "hello"
    assert running.arguments["plate"] == {"asset": "source_plate", "type": "Plate"}
    finished = await events.finished.next()
    assert finished.outcome == "completed", finished.error
    assert finished.result == "hello:source_plate"
    assert finished.final_state == {"touched": "source_plate"}
    assert set(finished.asset_states) == {b.asset_name for b in grant.bindings}
    assert {b.requirement: b.asset_name for b in grant.bindings} == {
        "lh": "liquid_handler",
        "plate": "source_plate",
        "tips": "tip_rack",
    }
    # The plate's state came from the inventory (200 uL per well) and was not touched.
    assert finished.asset_states["source_plate"]["source_plate_well_A1"]["volume"] == 200.0


async def test_failing_protocol_reports_its_error(
    ready: Bus, reserve: Reserve, follow: Any
) -> None:
    run_id = uuid.uuid4()
    resolved = await resolve(ready, "explode")
    grant = await reserve(run_id, resolved, {"plate": "dest_plate"})
    events = await follow(run_id)

    await ready.publish(execute(run_id, resolved, grant))

    finished = await events.finished.next()
    assert finished.outcome == "failed"
    assert finished.error is not None
    assert (finished.error.type, finished.error.message) == ("ValueError", "boom on dest_plate")
    assert finished.error.code == "protocol_error"
    # The protocol's own frames, paths relative to its source; no file of the edge's own.
    trace = finished.error.traceback
    assert trace and "boom on dest_plate" in trace and 'File "protocols.py"' in trace, trace
    assert "praxis_orchestrator" not in trace and "site-packages" not in trace
    assert finished.final_state == {"before_failure": True}
    assert set(finished.asset_states) == {"dest_plate"}
    statuses = [call.status for call in events.calls.drained()]
    assert statuses == ["running", "failed"]


async def test_stale_fencing_token_stops_the_run_before_it_starts(
    ready: Bus, reserve: Reserve, follow: Any, leases: LeaseStore
) -> None:
    run_id = uuid.uuid4()
    resolved = await resolve(ready, "touch")
    grant = await reserve(run_id, resolved)
    tips = next(b for b in grant.bindings if b.requirement == "tips")
    # The lease is lost (expired, or force-released) between the grant and the execution.
    assert await leases.release(tips.lease_key, tips.token)
    events = await follow(run_id)

    await ready.publish(execute(run_id, resolved, grant))

    await events.preparing.next()
    finished = await events.finished.next()
    assert finished.outcome == "failed"
    assert finished.error is not None
    assert (finished.error.type, finished.error.code) == ("LeaseLost", ErrorCode.LEASE_LOST)
    assert "tip_rack" in finished.error.message
    # Events of one publisher arrive in order: had the protocol run, these would be here.
    assert events.started.drained() == []
    assert events.calls.drained() == []


async def test_duplicate_execute_runs_once(ready: Bus, reserve: Reserve, follow: Any) -> None:
    run_id = uuid.uuid4()
    resolved = await resolve(ready, "touch")
    grant = await reserve(run_id, resolved)
    events = await follow(run_id)
    command = execute(run_id, resolved, grant)

    await ready.publish(command)
    await ready.publish(command)  # a redelivery: no msg id, so JetStream keeps both

    assert (await events.finished.next()).outcome == "completed"
    await events.finished.assert_silent()
    assert len(events.preparing.drained()) == 1
    assert len(events.started.drained()) == 1


async def test_unknown_parameter_fails_the_run(ready: Bus, reserve: Reserve, follow: Any) -> None:
    run_id = uuid.uuid4()
    resolved = await resolve(ready, "touch")
    grant = await reserve(run_id, resolved)
    events = await follow(run_id)
    command = execute(run_id, resolved, grant).model_copy(update={"parameters": {"nope": 1}})

    await ready.publish(command)

    finished = await events.finished.next()
    assert finished.outcome == "failed"
    assert finished.error is not None and finished.error.code == ErrorCode.INVALID_PARAMETERS
    assert events.calls.drained() == []
