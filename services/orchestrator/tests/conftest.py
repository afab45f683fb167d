"""Harness for the orchestrator's tests: a real nats-server, the orchestrator service running
in-process, real PyLabRobot chatterbox objects, and the test itself standing in for the other
services: it answers the layout request (asset-manager), leases the assets in the real bucket
(as the asset-manager would), puts a code bundle in the real object store (code-manager), and
publishes ``ExecuteRun`` (scheduler). Events are read back from the events stream.

Every test gets a workcell of its own (its name is the orchestrator's routing key and durable),
so tests never share a consumer. A test that restarts NATS uses a server of its own
(``own_nats``); the session's server is never restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import tarfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerInfo

from praxis_contracts.assets import (
    AssetBinding,
    GetWorkcellLayout,
    WorkcellLayout,
)
from praxis_contracts.base import Event
from praxis_contracts.errors import Unavailable
from praxis_contracts.headers import ERROR as ERROR_HEADER
from praxis_contracts.protocols import ProtocolDefinition, ProtocolFunctionSpec
from praxis_contracts.runs import (
    EdgeHeartbeat,
    EdgeRun,
    ExecuteRun,
    FunctionCallRecorded,
    RunBlocked,
    RunFinished,
    RunHandedBack,
    RunPaused,
    RunPreparing,
    RunResumed,
    RunStarted,
)
from praxis_contracts.topology import ASSET_LEASES, COMMANDS, EDGES, PROTOCOL_CODE
from praxis_devstack.pytest_plugin import NatsAccess, provide_workcell
from praxis_devstack.servers import NatsServer, free_port, provision_blocking
from praxis_orchestrator.app import Orchestrator, Settings, build
from praxis_orchestrator.edge import EdgeBeacon
from praxis_orchestrator.executor import Executor
from praxis_orchestrator.outbox import Outbox
from praxis_plr import demo_workcell
from praxis_plr.layout import layout_from_drafts
from praxis_runtime.bus import Bus
from praxis_runtime.leases import EXPECTED_LAST_SUBJECT_SEQ, Claim, LeaseStore, lease_key
from praxis_runtime.natsauth import NatsAuth
from praxis_runtime.publisher import Outgoing
from praxis_runtime.service import Service
from praxis_sdk.loader import SourceTree

WAIT = 15.0
"""Upper bound for something that must happen (generous: passing is fast)."""

PROTOCOLS = '''"""Protocols for the orchestrator's own tests."""

import asyncio
import time
from pathlib import Path

from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.plate_reading import PlateReader
from pylabrobot.resources import Plate, Resource, TipRack

from praxis_sdk import PraxisState, protocol_function


@protocol_function(version="1.0.0", top_level=False)
async def step(plate: Plate, index: int) -> float:
    """One small protocol-function call: reads the live plate's tracked volume."""
    return float(plate.get_well("A1").tracker.get_used_volume()) + index


@protocol_function(version="1.0.0")
async def keep_stepping(
    plate: Plate, state: PraxisState, until: str, after: int = 3, pace: float = 0.02
) -> int:
    """Call ``step`` until the file ``until`` exists, then ``after`` more times."""
    count = 0
    while not Path(until).exists():
        count += 1
        await step(plate, count)
        await asyncio.sleep(pace)
    for _ in range(after):
        count += 1
        await step(plate, count)
    state["steps"] = count
    return count


@protocol_function(version="1.0.0")
async def touch(lh: LiquidHandler, plate: Plate, tips: TipRack, state: PraxisState) -> str:
    """Pick up one tip and put it back."""
    await lh.pick_up_tips([tips.get_item("A1")])
    await lh.return_tips()
    state["touched"] = plate.name
    return plate.name


@protocol_function(version="1.0.0")
async def fail_holding_tips(lh: LiquidHandler, tips: TipRack, wells: list[str]) -> None:
    """Picks up tips from ``wells`` of the rack, then fails holding them."""
    await lh.pick_up_tips([tips.get_item(w) for w in wells], use_channels=list(range(len(wells))))
    raise RuntimeError("the protocol failed holding tips")


@protocol_function(version="1.0.0")
async def hold_tip_until(lh: LiquidHandler, tips: TipRack, until: str) -> None:
    """Picks up a tip, then waits at checkpoints (cancel it there)."""
    await lh.pick_up_tips([tips.get_item("D1")])
    while not Path(until).exists():
        await step_nothing()


@protocol_function(version="1.0.0", top_level=False)
async def step_nothing() -> None:
    await asyncio.sleep(0.02)


# -- protocols that misbehave (isolation tests) ----------------------------------------------
@protocol_function(version="1.0.0")
async def block(plate: Plate, until: str) -> str:
    """Blocks its event loop (time.sleep) until the file ``until`` exists, then takes a step."""
    while not Path(until).exists():
        time.sleep(0.05)
    await step(plate, 1)
    return "unblocked"


@protocol_function(version="1.0.0")
async def spin(plate: Plate, until: str) -> int:
    """Spins on the CPU (no sleep, no await) until the file ``until`` exists."""
    rounds = 0
    while not Path(until).exists():
        for _ in range(20000):
            rounds += 1
    await step(plate, 1)
    return rounds


@protocol_function(version="1.0.0")
async def await_forever(plate: Plate) -> None:
    """Awaits an event nobody sets: no checkpoint is ever reached."""
    await asyncio.Event().wait()


@protocol_function(version="1.0.0")
async def steal_via_root(dest: Plate) -> None:
    """Bound to one plate only, reaches the liquid handler above it."""
    lh = dest.get_root()
    await lh.aspirate([dest.get_well("A1")], vols=[20])


@protocol_function(version="1.0.0")
async def steal_via_deck(lh: LiquidHandler, tips: TipRack, dest: Plate) -> None:
    """Takes the source plate it did not lease from the deck by name."""
    source = lh.deck.get_resource("source_plate")
    await lh.pick_up_tips([tips.get_item("A1")])
    await lh.aspirate([source.get_well("A1")], vols=[20])


@protocol_function(version="1.0.0")
async def steal_via_children(lh: LiquidHandler, tips: TipRack, dest: Plate) -> None:
    """Walks the deck's children (not guarded) to the source plate and aspirates from it: the
    backend guard refuses the command."""
    carrier = dest.parent.parent
    source = next(site.resource for site in carrier.children if site.resource is not dest)
    await lh.pick_up_tips([tips.get_item("A1")])
    try:
        await lh.aspirate([source.get_well("A1")], vols=[20])
    finally:
        await lh.return_tips()


@protocol_function(version="1.0.0")
async def steal_via_channel(lh: LiquidHandler, tips: TipRack, dest: Plate) -> None:
    """Names a well of the source plate it did not lease in a command it makes up."""
    well = dest.get_well("A1")
    forged = Resource(
        name=well.name.replace("dest_plate", "source_plate"), size_x=1, size_y=1, size_z=1
    )
    await lh.pick_up_tips([tips.get_item("A1")])
    try:
        await lh.aspirate([forged], vols=[20])
    finally:
        await lh.return_tips()


@protocol_function(version="1.0.0")
async def read_by_hand(reader: PlateReader, plate: Plate) -> list[float | None]:
    """Moves the plate into the reader by hand, reads a row, puts the plate back."""
    site, location = plate.parent, plate.location
    plate.unassign()
    reader.assign_child_resource(plate)
    try:
        (reading,) = await reader.read_absorbance(
            wavelength=450, wells=[plate.get_well("A1")], use_new_return_type=True
        )
    finally:
        plate.unassign()
        site.assign_child_resource(plate, location=location)
    return reading["data"][0][:2]


@protocol_function(version="1.0.0")
async def park_in_reader(reader: PlateReader, plate: Plate) -> str:
    """Moves the plate into the reader by hand and leaves it there."""
    plate.unassign()
    reader.assign_child_resource(plate)
    return plate.parent.name


@protocol_function(version="1.0.0")
async def put_on_site(lh: LiquidHandler, plate: Plate, site: str) -> str:
    """Takes the plate from wherever it is and puts it on a site of the handler's deck."""
    plate.unassign()
    lh.deck.get_resource(site).assign_child_resource(plate)
    return plate.parent.name


@protocol_function(version="1.0.0")
async def misplace(plate: Plate) -> str:
    """Moves its plate by hand onto a free site of the deck it did not lease."""
    carrier = plate.parent.parent
    free = next(site for site in carrier.children if site.resource is None)
    plate.unassign()
    free.assign_child_resource(plate)
    return free.name


@protocol_function(version="1.0.0")
async def probe(pid: int, secret_file: str, port: int) -> dict:
    """Looks for the orchestrator's secrets from inside a run."""
    import gc
    import os
    import socket

    found = {"environ": sorted(os.environ)}
    for name, path in (("parent_environ", f"/proc/{pid}/environ"), ("file", secret_file)):
        try:
            with open(path, "rb") as handle:
                found[name] = handle.read().decode(errors="replace")
        except OSError as exc:
            found[name] = f"refused: {type(exc).__name__}"
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        found["tcp"] = "connected"
    except OSError as exc:
        found["tcp"] = f"refused: {type(exc).__name__}"
    names = {type(o).__name__ for o in gc.get_objects()}
    found["objects"] = sorted(names & {"LeaseKeeper", "Bus", "Client", "WorkcellView", "Executor"})
    return found


@protocol_function(version="1.0.0")
async def exit_now(plate: Plate) -> None:
    """Ends its own process, abruptly."""
    import os

    os._exit(0)


@protocol_function(version="1.0.0")
async def exhaust_memory(plate: Plate) -> int:
    """Allocates until it cannot."""
    hoard = []
    while True:
        hoard.append(bytearray(64 * 1024 * 1024))


@protocol_function(version="1.0.0")
async def unguard(lh: LiquidHandler, tips: TipRack, dest: Plate) -> None:
    """Switches off whatever guard it can find in its own process, then aspirates from the
    source plate it did not lease, naming it."""
    import praxis_plr.guard as guard

    guard.current_view.set(None)
    guard.WorkcellView.check_reachable = lambda self, resource: None
    forged = Resource(name="source_plate", size_x=1, size_y=1, size_z=1)
    await lh.pick_up_tips([tips.get_item("A1")])
    try:
        await lh.aspirate([forged], vols=[20])
    finally:
        await lh.return_tips()


@protocol_function(version="1.0.0")
async def dial_zygote(path: str) -> str:
    """Asks the zygote (whose socket it can reach) to fork a process for it."""
    import json
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        return f"cannot connect: {type(exc).__name__}"
    ours, theirs = socket.socketpair()
    request = json.dumps({"op": "fork", "run": "deadbeef"}).encode()
    socket.send_fds(sock, [request], [theirs.fileno()])
    await step_nothing()  # its call record says the request is queued at the zygote

    def answer() -> str:
        sock.settimeout(60)
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            return "refused"  # closed with the request unread
        except OSError as exc:
            return f"no answer: {type(exc).__name__}"
        return f"served: {data.decode()}" if data else "refused"

    return await asyncio.to_thread(answer)


@protocol_function(version="1.0.0")
async def transfer(
    lh: LiquidHandler, tips: TipRack, source: Plate, dest: Plate, volume: float = 20.0
) -> float:
    """An honest transfer of ``volume`` uL from source A1 to dest A1."""
    await lh.pick_up_tips([tips.get_item("A1")])
    await lh.aspirate([source.get_well("A1")], vols=[volume])
    await lh.dispense([dest.get_well("A1")], vols=[volume])
    await lh.return_tips()
    return float(dest.get_well("A1").tracker.get_used_volume())


@protocol_function(version="1.0.0")
async def two_transfers(
    lh: LiquidHandler, tips: TipRack, source: Plate, dest: Plate, volume: float = 20.0
) -> float:
    """Two ``transfer`` calls (two checkpoints that change state)."""
    await transfer(lh, tips, source, dest, volume)
    return await transfer(lh, tips, source, dest, volume)


@protocol_function(version="1.0.0")
async def transfer_then_fail(
    lh: LiquidHandler, tips: TipRack, source: Plate, dest: Plate, volume: float = 20.0
) -> None:
    """A ``transfer``, then a failure."""
    await transfer(lh, tips, source, dest, volume)
    raise RuntimeError("failed after the transfer")


@protocol_function(version="1.0.0")
async def transfer_then_wait(
    lh: LiquidHandler, tips: TipRack, source: Plate, dest: Plate, until: str
) -> None:
    """A ``transfer``, then waits (no checkpoint) for ``until``, then one more command."""
    await transfer(lh, tips, source, dest, 20.0)
    while not Path(until).exists():
        await asyncio.sleep(0.02)
    await lh.pick_up_tips([tips.get_item("H12")])


@protocol_function(version="1.0.0")
async def keep_transferring(
    lh: LiquidHandler, tips: TipRack, source: Plate, dest: Plate, until: str
) -> int:
    """1 uL ``transfer`` calls until the file ``until`` exists, then one more."""
    count = 0
    while not Path(until).exists():
        count += 1
        await transfer(lh, tips, source, dest, 1.0)
        await asyncio.sleep(0.02)
    await transfer(lh, tips, source, dest, 1.0)
    return count + 1


@protocol_function(version="1.0.0")
async def serial_dilution(
    lh: LiquidHandler, tips: TipRack, source: Plate, dest: Plate, steps: int = 3
) -> list[float]:
    """An honest serial dilution down row A of ``dest``, seeded from ``source``."""
    await lh.pick_up_tips([tips.get_item("B1")])
    await lh.aspirate([source.get_well("B1")], vols=[100])
    await lh.dispense([dest.get_well("B1")], vols=[100])
    for column in range(1, steps):
        here, there = dest.get_well(f"B{column}"), dest.get_well(f"B{column + 1}")
        await lh.aspirate([here], vols=[50])
        await lh.dispense([there], vols=[50])
    await lh.return_tips()
    return [float(dest.get_well(f"B{c}").tracker.get_used_volume()) for c in range(1, steps + 1)]


@protocol_function(version="1.0.0")
async def fenced_between_commands(lh: LiquidHandler, tips: TipRack, until: str) -> None:
    """Picks up a tip, waits for ``until`` without reaching a checkpoint, returns the tip."""
    await lh.pick_up_tips([tips.get_item("C1")])
    while not Path(until).exists():
        await asyncio.sleep(0.02)
    await lh.return_tips()
'''

T = TypeVar("T")
E = TypeVar("E", bound=Event)


# -- the world around the orchestrator --------------------------------------------------------
def demo_layout(workcell: str) -> WorkcellLayout:
    """The demo workcell (chatterbox liquid handler, tips, two plates) as the asset-manager
    would hand it out, with asset ids of its own (so lease keys are this test's)."""
    return layout_from_drafts(demo_workcell(), workcell)


class LayoutService:
    """Answers ``GetWorkcellLayout`` for one workcell, as the asset-manager would; ``hold()``
    makes answers wait until ``release()`` (a layout fetch that hangs)."""

    def __init__(self, layout: WorkcellLayout) -> None:
        self.layout = layout
        self.requests = 0
        self._open = asyncio.Event()
        self._open.set()
        self._answering: set[asyncio.Task[None]] = set()
        self._failing = 0

    def hold(self) -> None:
        self._open.clear()

    def fail_next(self, times: int) -> None:
        """Answer the next ``times`` requests ``unavailable`` (the asset-manager restarting)."""
        self._failing = times

    def release(self) -> None:
        self._open.set()

    async def on_request(self, msg: Msg) -> None:
        query = GetWorkcellLayout.model_validate_json(msg.data)
        if query.workcell != self.layout.workcell.name:
            return
        self.requests += 1
        task = asyncio.create_task(self._answer(msg))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, msg: Msg) -> None:
        await self._open.wait()
        if self._failing > 0:
            self._failing -= 1
            error = Unavailable("the asset-manager is restarting").to_reply()
            await msg.respond(error.model_dump_json().encode(), headers={ERROR_HEADER: "1"})
            return
        with contextlib.suppress(Exception):  # the requester may have given up
            await msg.respond(self.layout.model_dump_json().encode())

    async def close(self) -> None:
        for task in list(self._answering):
            task.cancel()
        await asyncio.gather(*self._answering, return_exceptions=True)


def bundle_protocols(folder: Path) -> tuple[bytes, list[ProtocolFunctionSpec]]:
    """The test protocols written to ``folder``: their tar archive and their specs."""
    folder.mkdir(parents=True)
    (folder / "protocols.py").write_text(PROTOCOLS)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder / "protocols.py", arcname="protocols.py")
    discovered = SourceTree(folder, f"discover-{uuid.uuid4().hex}").discover()
    assert not discovered.problems, discovered.problems
    return buffer.getvalue(), discovered.functions


async def upload_protocols(client: Bus, folder: Path) -> dict[str, ProtocolDefinition]:
    """Put the test protocols in the object store as one bundle; their definitions by name."""
    archive, specs = bundle_protocols(folder)
    bundle = f"orchestrator-tests-{uuid.uuid4().hex}"
    store = await client.js.object_store(PROTOCOL_CODE.bucket)
    await store.put(bundle, archive)
    source_id, commit = uuid.uuid4(), uuid.uuid4().hex
    return {
        spec.name: ProtocolDefinition(
            accession_id=uuid.uuid4(),
            source_id=source_id,
            source_name="orchestrator-tests",
            commit=commit,
            spec=spec,
            code_bundle=bundle,
            created_at=datetime.now(UTC),
        )
        for spec in specs
    }


# -- events read back from the stream ---------------------------------------------------------
RUN_EVENTS: dict[str, type[Event]] = {
    cls.subject: cls
    for cls in (
        RunPreparing,
        RunStarted,
        FunctionCallRecorded,
        RunPaused,
        RunResumed,
        RunFinished,
        RunBlocked,
        RunHandedBack,
    )
}


class RunLog:
    """Every orchestrator event of one run as stored in the events stream, in stream order
    (an ordered consumer from the start of the stream)."""

    def __init__(self, run_id: uuid.UUID) -> None:
        self.run_id = run_id
        self.events: list[Event] = []
        self._changed = asyncio.Event()
        self._sub: Subscription | None = None

    async def open(self, client: Bus) -> RunLog:
        self._sub = await client.js.subscribe(
            f"praxis.evt.orchestrator.*.*.*.{self.run_id}", ordered_consumer=True, cb=self._on
        )
        return self

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def _on(self, msg: Msg) -> None:
        subject = msg.subject.rsplit(".", 2)[0]  # without the workcell and run keys
        self.events.append(RUN_EVENTS[subject].model_validate_json(msg.data))
        self._changed.set()

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    async def first(
        self, kind: type[E], timeout: float = WAIT, where: Callable[[E], bool] = lambda e: True
    ) -> E:
        """The first event of ``kind`` (that ``where`` accepts), waiting for it if need be."""
        async with asyncio.timeout(timeout):
            while not (found := [e for e in self.of(kind) if where(e)]):
                self._changed.clear()
                await self._changed.wait()
        return found[0]

    async def finished(self, timeout: float = WAIT) -> RunFinished:
        return await self.first(RunFinished, timeout)


# -- the orchestrator under test --------------------------------------------------------------
class Edge:
    """One orchestrator process, started in-process from ``build``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.service: Service | None = None
        self.parts = Orchestrator()

    async def start(self) -> Edge:
        self.service, self.parts = build(self.settings)
        await self.service.start()
        await self.service.bus.nc.flush()  # the server has every subscription (see the root
        await self.service.bus.nc.flush()  # conftest's ``registered``)
        return self

    async def stop(self, within: float = 30.0) -> None:
        service, self.service = self.service, None
        if service is not None:
            async with asyncio.timeout(within):
                await service.stop()

    @property
    def instance(self) -> str:
        return self.parts.instance

    @property
    def executor(self) -> Executor:
        assert self.parts.executor is not None
        return self.parts.executor

    @property
    def outbox(self) -> Outbox:
        assert self.parts.outbox is not None
        return self.parts.outbox

    @property
    def beacon(self) -> EdgeBeacon:
        assert self.parts.beacon is not None
        return self.parts.beacon


@dataclass
class World:
    """The orchestrator of one workcell and everything it talks to."""

    client: Bus
    leases: LeaseStore
    layout: WorkcellLayout
    layouts: LayoutService
    protocols: dict[str, ProtocolDefinition]
    edge: Edge
    tmp_path: Path
    logs: list[RunLog] = field(default_factory=list)
    commands: dict[uuid.UUID, ExecuteRun] = field(default_factory=dict)

    @property
    def workcell(self) -> str:
        return self.layout.workcell.name

    async def take_back(self, msg: Msg) -> None:
        """What the scheduler does with a ``RunFinished``: release the run's leases, or hold
        them for an operator (the edge keeps renewing them until then)."""
        finished = RunFinished.model_validate_json(msg.data)
        cmd = self.commands.get(finished.run_id)
        if cmd is None:
            return
        for binding in cmd.bindings:
            if finished.outcome == "requires_intervention":
                with contextlib.suppress(Exception):
                    await self.hold_for_intervention(binding.lease_key)
            else:
                await self.leases.release_holder(binding.lease_key, finished.run_id)

    @property
    def durable(self) -> str:
        return f"orchestrator-{self.workcell}"

    def flag(self, name: str = "done") -> Path:
        """A file a ``keep_stepping`` run waits for (create it to let the run finish)."""
        return self.tmp_path / f"{name}-{uuid.uuid4().hex[:8]}"

    async def command(
        self,
        protocol: str,
        assets: dict[str, str],
        parameters: dict[str, Any] | None = None,
        *,
        lease_ttl: int = 30,
    ) -> ExecuteRun:
        """An ``ExecuteRun`` for a new run whose assets (requirement -> asset name) are leased."""
        run_id = uuid.uuid4()
        by_name = {asset.name: asset for asset in self.layout.assets}
        claims = [Claim(by_name[name].accession_id, req) for req, name in assets.items()]
        granted = await self.leases.acquire_all(
            run_id,
            claims,
            lease_ttl,
            workcell=self.workcell,
            workcell_id=self.layout.workcell.accession_id,
        )
        bindings = [
            AssetBinding(
                requirement=req,
                asset_id=by_name[name].accession_id,
                asset_name=name,
                kind=by_name[name].kind,
                fqn=by_name[name].fqn,
                lease_key=lease_key(self.workcell, by_name[name].accession_id),
                token=granted[by_name[name].accession_id].revision,
            )
            for req, name in assets.items()
        ]
        cmd = ExecuteRun(
            run_id=run_id,
            workcell_id=self.layout.workcell.accession_id,
            workcell_name=self.workcell,
            definition=self.protocols[protocol],
            parameters=parameters or {},
            bindings=bindings,
        )
        self.commands[run_id] = cmd
        return cmd

    async def follow(self, run_id: uuid.UUID) -> RunLog:
        log = await RunLog(run_id).open(self.client)
        self.logs.append(log)
        return log

    async def execute(self, cmd: ExecuteRun) -> RunLog:
        """Follow the run's events, then publish its command."""
        log = await self.follow(cmd.run_id)
        await self.client.publish(cmd)
        return log

    async def consumer(self) -> ConsumerInfo:
        """The orchestrator's command consumer: what the server would still (re)deliver."""
        info: ConsumerInfo = await self.client.js.consumer_info(COMMANDS.name, self.durable)
        return info

    async def heartbeat(self) -> EdgeHeartbeat | None:
        """The orchestrator's heartbeat as the bucket holds it now."""
        stream = f"KV_{EDGES.bucket}"
        try:
            msg = await self.client.js.get_msg(stream, subject=f"$KV.{EDGES.bucket}.{self.key}")
        except Exception:
            return None
        if not msg.data:
            return None
        return EdgeHeartbeat.model_validate_json(msg.data)

    async def listed(self, run_id: uuid.UUID) -> EdgeRun | None:
        """The heartbeat's entry for ``run_id``, if the bucket's heartbeat lists it now."""
        beat = await self.heartbeat()
        return next((r for r in beat.runs if r.run_id == run_id), None) if beat else None

    @property
    def key(self) -> str:
        return f"edge.{self.workcell}.{self.edge.instance}"

    async def hold_for_intervention(self, key: str) -> int:
        """Rewrite a lease as the asset-manager does when its run needs an operator: the same
        holder with ``ttl_seconds`` 0 and no TTL (compare-and-set at the current revision)."""
        for _ in range(5):
            state = await self.leases.read(key)
            assert state.holder is not None, f"{key} is not leased"
            held = replace(state.holder, ttl_seconds=0)
            write = Outgoing(
                self.leases.subject(key),
                held.encode(),
                {EXPECTED_LAST_SUBJECT_SEQ: str(state.revision)},
            )
            (result,) = await self.leases.publisher.publish_all([write])
            if isinstance(result, int):
                return result
        pytest.fail(f"could not hold {key}: it kept changing")


@contextlib.asynccontextmanager
async def world_on(
    nats: NatsAccess | NatsServer, tmp_path: Path, **settings: Any
) -> AsyncIterator[World]:
    """A world on the session's server (``nats_access``) or a test's own; ``settings`` override
    the orchestrator's. The test's client is the operator; the orchestrator is itself."""
    if isinstance(nats, NatsServer):
        nats = NatsAccess(nats.url, nats.auth)
    client = Bus(nats.operator_url, f"orchestrator-test-{uuid.uuid4().hex[:8]}")
    await client.connect()
    layout = demo_layout(f"wc_{uuid.uuid4().hex[:12]}")
    await provide_workcell(client.js, layout.workcell.name)
    layouts = LayoutService(layout)
    responder = await client.nc.subscribe(GetWorkcellLayout.subject, cb=layouts.on_request)
    await client.nc.flush()
    protocols = await upload_protocols(client, tmp_path / "protocols")
    config: dict[str, Any] = {
        **nats.settings_for("orchestrator"),
        "praxis_workcell": layout.workcell.name,
        "protocol_code_cache_dir": tmp_path / "code-cache",
        "run_scratch_dir": tmp_path / "runs",
        "health_port": None,
        "graceful_timeout_seconds": 5,
        # A stop lets running protocols finish for this long, then interrupts them (tests of
        # the interruption need it short; the hand-over tests set it).
        "edge_stop_grace_seconds": 5,
        **settings,
    }
    edge = Edge(Settings(**config))
    world = World(
        client,
        LeaseStore(client.publisher, ASSET_LEASES.bucket),
        layout,
        layouts,
        protocols,
        edge,
        tmp_path,
    )
    finished = await client.nc.subscribe(RunFinished.subscription_subject(), cb=world.take_back)
    try:
        yield world
    finally:
        await finished.unsubscribe()
        for log in world.logs:
            await log.close()
        layouts.release()
        await edge.stop()
        await layouts.close()
        await responder.unsubscribe()
        await client.stop()


@pytest.fixture
async def world(nats_access: NatsAccess, tmp_path: Path) -> AsyncIterator[World]:
    """A started orchestrator on the session's nats-server."""
    async with world_on(nats_access, tmp_path) as made:
        await made.edge.start()
        yield made


@pytest.fixture
def make_world() -> Callable[..., contextlib.AbstractAsyncContextManager[World]]:
    """``async with make_world(nats_access or own_nats, tmp_path, **settings) as world``: not
    yet started."""
    return world_on


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own on a fixed free port, so it can be stopped and started
    again on the same port with its data (the session's server is never restarted)."""
    server = NatsServer(tmp_path / "nats", port=free_port(), auth=NatsAuth(("*",)))
    server.start()
    provision_blocking(server.operator_url, ())
    try:
        yield server
    finally:
        server.stop()
