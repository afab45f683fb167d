"""Runs protocols on this workcell: prepare, claim, confirm, call, report.

The orchestrator never touches the database: it learns what to run from ``ExecuteRun`` and reports
through events. Each run is a task on the one event loop that owns the live PyLabRobot objects
(the *supervisor*); its protocol function runs in a sandboxed process of its own, forked for
the run (``praxis_orchestrator.isolation``), whose instrument commands this process executes
behind a view of the workcell that reaches only the run's leased assets (``praxis_plr.guard``).

A run's life, and why in this order:

1. It is registered as active and ``RunPreparing``, naming this process (``edge_instance``), is
   queued. A heartbeat listing it (phase ``preparing``) is stored before anything else, so if
   this process dies from here on the scheduler learns of the run when the heartbeat expires.
2. Its leases are *claimed* (``LeaseKeeper.claim``): renewed once at the granted tokens with
   this process stamped in, and renewed from then on. Of two processes handed the same command
   only one claims it (the other drops it); a claimed lease that runs out is held for an
   operator, never handed on. Every delivery of the command is kept "in progress" meanwhile,
   so it is not redelivered while this process works on it.
3. It is prepared in a task of its own, so that a cancel can abort a layout fetch or a code load
   that hangs: live objects, fence check, code, a runner forked and given the code, the
   parameters and copies of the leased assets. Then it waits for one of the
   ``max_concurrent_runs`` slots (its leases renewed all along).
4. ``RunPreparing`` has been published, and a delivery of ``ExecuteRun`` is acknowledged, each
   retried while NATS is away (the leases are renewed meanwhile: an outage delays the run, it
   does not fail it). From then on a crash cannot hand the command to another process; a crash
   before it redelivers the command, whose next process finds the claim (the run then waits for
   an operator, as the dead process's heartbeat says). A process that stops gracefully before
   that withdraws its claim and hands the command back.
5. ``RunStarted``, and the protocol function is called in the run's runner process
   (``praxis_orchestrator.isolation``), which holds copies of the leased assets; each
   instrument command it sends is checked and executed here, on the live objects.
6. ``RunFinished``; the keeper renews the leases until the scheduler takes them back (it
   releases them, or holds them for an operator, once it has the report), then stops.

A cancel of a running protocol escalates (default ``CANCEL_ESCALATION_SECONDS`` 10 s: a cancel
ends the run within that bound, well inside the scheduler's ``CANCEL_TIMEOUT_SECONDS``):

1. cooperative: ``RunCancelled`` at the protocol's next checkpoint (a protocol-function call),
   for half the bound;
2. its task is cancelled on the runner's loop (a protocol awaiting something without
   checkpoints), for a quarter;
3. the runner's process group is killed (a protocol blocking or spinning its loop). The
   instrument commands under way run here, not in the runner: they finish, within the last
   quarter, before the run ends.

The run ends ``cancelled``, unless an instrument command had to be cut short (then
``requires_intervention``: that instrument's state is unknown). A runner whose loop stops
turning for ``run_blocked_seconds`` is reported once per stall (``RunBlocked``).

Events go through the ``Outbox``: a protocol never waits for NATS, and never fails for its sake.

The state of the run's assets is recorded (``praxis_orchestrator.snapshots``) before the
protocol is called, after each protocol-function call that completes, and at the end. A run
with ``on_failure="rollback"`` that fails or is cancelled has its assets' live state put back as
it was before the protocol was called (and recorded so); one that requires intervention is left
as it is for the operator. An operator's restore (``WorkcellStateRestored``) is loaded into the
live objects, except into those a run holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pylabrobot.machines.machine import Machine
from pylabrobot.resources import TipRack

from praxis_contracts.base import Event
from praxis_contracts.common import ErrorInfo
from praxis_contracts.errors import ErrorCode, LeaseLost, PraxisError, Unavailable
from praxis_contracts.runs import (
    CALL_RESULT_MAX_BYTES,
    ControlRunExecution,
    EdgeRun,
    ExecuteRun,
    FunctionCallRecorded,
    LogLine,
    RunBlocked,
    RunFinished,
    RunHandedBack,
    RunLogged,
    RunOutcome,
    RunPaused,
    RunPreparing,
    RunResumed,
    RunStarted,
    call_result_object,
)
from praxis_contracts.state import SnapshotInfo, SnapshotKind, WorkcellStateRestored
from praxis_orchestrator.cleanup import Cleanup, holds_tips, make_safe, tip_policy
from praxis_orchestrator.code import CodeCache
from praxis_orchestrator.isolation import RunnerLink, Zygote
from praxis_orchestrator.keeper import ClaimedElsewhere, LeaseKeeper
from praxis_orchestrator.outbox import Outbox
from praxis_orchestrator.runlog import RunLog, capture
from praxis_orchestrator.snapshots import StateRecorder
from praxis_orchestrator.workcell import WorkcellHost
from praxis_plr.guard import WorkcellView
from praxis_plr.remote import RunObjects, copy_layout, run_assets
from praxis_runtime.bus import (
    INFRA_RETRY_CAP,
    acknowledge,
    in_progress_until,
    is_infrastructure,
    retry_delay,
)
from praxis_runtime.leases import LeaseStore
from praxis_runtime.logging import log_context
from praxis_runtime.recent import RecentIds
from praxis_sdk.context import RunControl

log = logging.getLogger(__name__)

Phase = Literal["preparing", "running", "paused"]

HANDBACK_SECONDS = 1.0
"""How long a shutdown waits for the handlers of abandoned runs to return their commands."""

RUN_BLOCKED_SECONDS = 60.0
CANCEL_ESCALATION_SECONDS = 10.0

ASSET_STATES_INLINE_BYTES = 256 * 1024
CLEANUP_TIMEOUT_SECONDS = 30.0
"""Clean-up of a failed run's machines that takes longer (a machine stopped answering) leaves
the run ``requires_intervention``."""
"""``RunFinished.asset_states`` larger than this encoded are sent as a reference to the
snapshot that holds them (``{"snapshot_id", "object_name", "size_bytes"}``): a run bound to many
tip racks would exceed NATS' 1 MB message limit."""

ROLLED_BACK_OUTCOMES = frozenset({"failed", "cancelled"})


@dataclass(frozen=True)
class Ended:
    """How a protocol function ended, as its runner reports it (with the run's final state)."""

    outcome: RunOutcome
    result: Any = None
    error: ErrorInfo | None = None
    state: dict[str, Any] = field(default_factory=dict)


def now() -> datetime:
    return datetime.now(UTC)


class ActiveRun:
    """A run this process has, from its ``ExecuteRun`` until ``RunFinished`` is queued."""

    def __init__(self, cmd: ExecuteRun, control: RunControl) -> None:
        self.cmd = cmd
        self.control = control
        self.started = False  # the protocol function has been called
        self.abandoned = False  # the process stopped it before it started: the command stays
        self.last_call: str | None = None
        self.last_checkpoint_at: datetime | None = None
        self.keeper: LeaseKeeper | None = None
        self.claiming: LeaseKeeper | None = None  # its claim under way (withdrawn on a stop)
        self.preparation: asyncio.Task[PreparedCall] | None = None
        self.task: asyncio.Task[None] | None = None
        self.accepted = asyncio.Event()  # ready to start, or ended: its deliveries confirm now
        self.confirmed = asyncio.Event()  # a delivery of its command was acknowledged
        self.declined = False  # another process claimed it first: not this process's run
        self.slot = False  # it holds one of the ``max_concurrent_runs`` slots
        self.link: RunnerLink | None = None  # its runner process, once forked
        self.waiting = False  # its protocol waits at a checkpoint (paused)
        # Once the protocol function is called:
        self.view: WorkcellView | None = None
        self.ended: asyncio.Future[Ended] | None = None
        self.escalation: asyncio.Task[None] | None = None  # a cancel under way
        self.given_up = False  # its runner was killed before the protocol ended
        self.blocked_reported = False
        self.before: dict[str, Any] | None = None  # its assets' state when the protocol began
        self.held: set[str] | None = None  # names whose leases it still holds as it ends
        self.output: RunLog | None = None  # its output lines on their way out (``runlog``)

    @property
    def run_id(self) -> uuid.UUID:
        return self.cmd.run_id

    @property
    def phase(self) -> Phase:
        if not self.started:
            return "preparing"
        return "paused" if self.waiting else "running"

    def report(self) -> EdgeRun:
        return EdgeRun(
            run_id=self.run_id,
            phase=self.phase,
            last_call=self.last_call,
            last_checkpoint_at=self.last_checkpoint_at,
        )


class Executor:
    def __init__(
        self,
        workcell: WorkcellHost,
        code: CodeCache,
        leases: LeaseStore,
        outbox: Outbox,
        instance: str,
        *,
        run_blocked_seconds: float = RUN_BLOCKED_SECONDS,
        cancel_escalation_seconds: float = CANCEL_ESCALATION_SECONDS,
        recorder: StateRecorder | None = None,
        max_concurrent_runs: int = 4,
        zygote: Zygote | None = None,
    ) -> None:
        self.workcell = workcell
        self.reporter = {"workcell": workcell.name, "edge_instance": instance}
        """Who reports a run event: the workcell (its subject key) and this process."""
        capture()  # instrument output goes to the run whose command it comes from (runlog)
        self.code = code
        self.leases = leases
        self.outbox = outbox
        self.instance = instance
        self.run_blocked_seconds = run_blocked_seconds
        self.cancel_escalation_seconds = cancel_escalation_seconds
        self.recorder = recorder
        self.asset_states_inline_bytes = ASSET_STATES_INLINE_BYTES
        self._loop = asyncio.get_running_loop()  # the supervisor's
        self._thread = threading.get_ident()
        self.on_runs_changed: Callable[[], None] = lambda: None  # the heartbeat beats at once
        self.list_runs: Callable[[], Awaitable[None]] = _nothing  # a heartbeat listing them, stored
        self._slots = asyncio.Semaphore(max_concurrent_runs)
        self.zygote = zygote
        self.machine_locks: dict[str, asyncio.Lock] = {}  # one command per machine at a time
        self.runs: dict[uuid.UUID, ActiveRun] = {}
        self.done = RecentIds()  # runs that ended here: a redelivered command is dropped
        self.cancelled_early = RecentIds()  # cancels that overtook their ExecuteRun
        self._handlers: set[asyncio.Task[Any]] = set()  # tasks handling an ExecuteRun now
        self.stopping = False  # set on a graceful stop: no run starts any more

    def edge_runs(self) -> list[EdgeRun]:
        """What the heartbeat reports: every run this process has, in any phase."""
        return [run.report() for run in self.runs.values()]

    # -- accepting a run ----------------------------------------------------------------------
    async def accept(self, cmd: ExecuteRun) -> None:
        """Take the run; returns once this delivery of its command is confirmed (or declined).

        Every delivery of a run's command (a redelivery too) waits, keeping the command in
        progress, until the run is ready to start here, then confirms itself; the protocol is
        called only after one delivery was confirmed. A delivery of a run that ended here, or
        that another process claimed, is confirmed and dropped."""
        run = self.runs.get(cmd.run_id)
        if run is not None:
            log.info("run %s is already accepted here; this delivery waits", cmd.run_id)
        elif cmd.run_id in self.done:
            log.info("run %s already executed here; ignoring redelivery", cmd.run_id)
            return
        else:
            run = self._register(cmd)
            run.task = asyncio.create_task(self._lifecycle(run))
        self._track_handler()
        await in_progress_until(run.accepted)
        if run.abandoned:
            # Not confirmed, not started, its claim withdrawn: the command is redelivered.
            raise Unavailable(f"the orchestrator stopped before run {cmd.run_id} started")
        await self._confirm(run)

    async def _confirm(self, run: ActiveRun) -> None:
        """Acknowledge this delivery, waiting until the server recorded it; retried while NATS
        is away, until it works or another delivery of the run was confirmed (this one then
        comes back later and is dropped as a run this process has or had)."""
        attempt = 0
        while True:
            try:
                await acknowledge()
                run.confirmed.set()
                return
            except Exception as exc:
                if not is_infrastructure(exc):
                    raise
                attempt += 1
                log.warning("confirming the command failed (attempt %d): %r", attempt, exc)
            if run.confirmed.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.confirmed.wait(), retry_delay(attempt, INFRA_RETRY_CAP))

    def _track_handler(self) -> None:
        handler = asyncio.current_task()
        if handler is not None and handler not in self._handlers:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)

    def _register(self, cmd: ExecuteRun) -> ActiveRun:
        run = ActiveRun(cmd, RunControl())
        self.runs[cmd.run_id] = run
        self.on_runs_changed()
        return run

    def _free_slot(self, run: ActiveRun) -> None:
        if run.slot:
            run.slot = False
            self._slots.release()

    def _unregister(self, run: ActiveRun) -> None:
        self._free_slot(run)
        self.runs.pop(run.run_id, None)
        if not run.abandoned:
            self.done.add(run.run_id)
        run.accepted.set()
        run.confirmed.set()
        self.on_runs_changed()

    async def _lifecycle(self, run: ActiveRun) -> None:
        """Accept (listed, claimed), prepare, wait for a slot, confirm, call, report.

        The run is listed in a stored heartbeat before its leases are claimed, so whatever
        happens to this process from then on, the scheduler learns of it (the heartbeat
        expires) or the asset-manager does (a claimed lease that runs out is held, never
        freed). The leases are renewed from the claim on, through preparation and confirmation
        alike: a NATS outage there delays the run, it does not fail it."""
        cmd = run.cmd
        with log_context(run_id=cmd.run_id):
            try:
                if cmd.run_id in self.cancelled_early:
                    await self._finish(run, "cancelled", state=cmd.initial_state)
                    return
                preparing = self._emit(RunPreparing(run_id=cmd.run_id, at=now(), **self.reporter))
                if not await self._claim(run):
                    return
                call = await self._preparation(run, preparing)
                if call is not None:
                    await self._call(run, call)
            except asyncio.CancelledError:
                if not run.started:  # shutdown: the next process takes the command
                    run.abandoned = True
                    # A claim cut short may have reached the server: withdrawn all the same
                    # (else the next process finds the run claimed here and drops it).
                    keeper = run.keeper or run.claiming
                    if keeper is not None and keeper.lost is None:
                        await keeper.stop()
                        await keeper.unclaim()
                    self._emit(
                        RunHandedBack(
                            run_id=cmd.run_id,
                            at=now(),
                            reason="the orchestrator is stopping; the workcell's next one "
                            "takes the run",
                            **self.reporter,
                        )
                    )
                raise
            finally:
                await self._close_runner(run)
                if run.keeper is not None:
                    await run.keeper.stop()
                self._unregister(run)

    async def _claim(self, run: ActiveRun) -> bool:
        """Listed in a stored heartbeat, then the leases claimed and kept from here on; False
        if the run ended here (a lease lost: failed) or is another process's (dropped)."""
        cmd = run.cmd
        await self.list_runs()
        keeper = LeaseKeeper(self.leases, cmd.run_id, cmd.bindings, self.instance)
        run.claiming = keeper
        try:
            await keeper.claim()
        except ClaimedElsewhere as exc:
            log.warning("run %s is another process's (%s): dropped here", cmd.run_id, exc.edge)
            run.declined = True
            return False
        except LeaseLost as exc:
            log.warning("run could not start: %s", exc.message)
            error = _error_info(exc, ErrorCode.PREPARATION_FAILED)
            await self._finish(run, "failed", error=error, state={})
            return False
        run.keeper = keeper
        keeper.start()
        return True

    async def _preparation(self, run: ActiveRun, preparing: int) -> PreparedCall | None:
        """Prepare the run in a task a cancel can abort, wait for a slot, have its command
        confirmed; None if the run ended there (failed, or cancelled by an operator)."""
        run.preparation = asyncio.create_task(self._prepare_and_confirm(run, preparing))
        try:
            return await run.preparation
        except asyncio.CancelledError:
            if _being_cancelled():
                raise  # the process is stopping, this is no operator's cancel
            await self._finish(run, "cancelled", state=run.cmd.initial_state)
        except Exception as exc:
            log.warning("run could not start: %s: %s", type(exc).__name__, exc)
            error = _error_info(exc, ErrorCode.PREPARATION_FAILED)
            await self._finish(run, "failed", error=error, state={})
        finally:
            run.preparation = None
        return None

    @staticmethod
    async def _close_runner(run: ActiveRun) -> None:
        """The run's runner (if one was forked) killed, its channel closed, its watch on the
        live objects ended; again is harmless."""
        if run.link is not None:
            await asyncio.shield(run.link.close())

    async def _prepare_and_confirm(self, run: ActiveRun, preparing: int) -> PreparedCall:
        call = await self._prepare(run)
        await self._slots.acquire()  # at most ``max_concurrent_runs`` protocols at once
        run.slot = True
        if self.stopping:
            # The process is stopping: it starts nothing more. The run waits here, its leases
            # renewed, until the running protocols are done and it is handed back (``hand_back``)
            # to the workcell's next orchestrator, which takes it at once.
            await asyncio.Event().wait()
        await self.outbox.delivered(preparing)  # the scheduler knows which process has it
        # Confirmed by the handlers of its deliveries: from here a crash redelivers nothing,
        # and the process that claimed the leases is the one that calls the protocol.
        run.accepted.set()
        await run.confirmed.wait()
        return call

    async def _prepare(self, run: ActiveRun) -> PreparedCall:
        """Live objects, the fence, the code unpacked, a runner forked and prepared: it imports
        the code, checks the parameters and builds copies of the leased assets."""
        cmd = run.cmd
        keeper = run.keeper
        assert keeper is not None and self.zygote is not None
        live = await self.workcell.ensure(cmd.bindings)
        keeper.check_now()
        root, identity = await self.code.folder(cmd.definition)
        leased = [b.asset_name for b in cmd.bindings]
        view = live.view(cmd.run_id, leased, keeper.check_now)
        layout = live.follow_moves()  # where earlier runs left the labware
        names = run_assets(layout, leased)  # and the decks they are on or own
        objects = RunObjects(
            {name: live.get(name) for name in names},
            [b.asset_name for b in cmd.bindings if b.kind == "machine"],
            others=[live.get(name) for name in live.names()],
            run_id=cmd.run_id,
            leased=leased,
            view=view,
        )
        link = run.link = await self.zygote.fork(cmd.run_id)
        link.attach(objects, view, self.machine_locks)
        link.on_call = lambda message: self._on_call(run, message)
        link.output = run.output = RunLog(lambda lines: self._logged(run, lines))
        link.on_log = lambda message: self._on_log(run, message)
        link.on_paused = lambda _: self._waiting(run, True)
        link.on_resumed = lambda _: self._waiting(run, False)
        answer = await link.prepare(
            {
                "run_id": str(cmd.run_id),
                "code_root": str(root),
                "code_identity": identity,
                "module": cmd.definition.spec.module,
                "qualname": cmd.definition.spec.qualname,
                "parameters": cmd.parameters,
                "bindings": {b.requirement: b.asset_name for b in cmd.bindings},
                "layout": copy_layout(layout, names).model_dump(mode="json"),
                "states": live.snapshot(names),
                "initial_state": cmd.initial_state,
                "tick": self._tick,
            }
        )
        if answer.get("op") != "ready":
            raise PreparationFailed(answer.get("error") or {"message": "the runner ended"})
        return PreparedCall(link, view)

    @property
    def _tick(self) -> float:
        """How often a runner's loop reports it is turning."""
        return min(1.0, self.run_blocked_seconds / 4)

    def _on_call(self, run: ActiveRun, message: dict[str, Any]) -> None:
        """A protocol-function call started or ended in the runner: published (stamped with
        this run, workcell and process whatever the runner said), noted for the heartbeat; a
        nested call that completed is a checkpoint: its assets' state is recorded."""
        raw = dict(message.get("record") or {})
        body = raw.pop("result_body", None)
        try:
            record = FunctionCallRecorded.model_validate(
                {**raw, "run_id": str(run.run_id), **self.reporter}
            )
        except ValueError as exc:
            log.warning("run %s sent a malformed call record: %s", run.run_id, exc)
            return
        if record.status == "running":
            run.last_call = record.function
        run.last_checkpoint_at = now()
        self._emit_call(run, record, body)
        if record.status == "completed" and record.parent_call_id is not None and not run.given_up:
            self._record_state(run, "checkpoint", checkpoint=f"{record.function}#{record.sequence}")

    def _emit_call(self, run: ActiveRun, record: FunctionCallRecorded, body: Any) -> None:
        """Publish a call record; a large result (its marker, with the whole JSON beside it) is
        kept in the workcell's state store first and the marker names it (``object_name``)."""
        recorder = self.recorder
        marker = record.result
        if (
            recorder is None
            or not isinstance(body, str)
            or not isinstance(marker, dict)
            or not marker.get("truncated")
            or len(body.encode()) > CALL_RESULT_MAX_BYTES
        ):
            self._emit(record)
            return
        name = call_result_object(self.workcell.name, run.run_id, record.sequence)
        data = body.encode()
        record = record.model_copy(update={"result": {**marker, "object_name": name}})
        self.outbox.emit(record, before=lambda: recorder.keep(name, data))

    def _on_log(self, run: ActiveRun, message: dict[str, Any]) -> None:
        """Lines the protocol printed or logged in its runner (which may say anything: what
        does not parse is dropped)."""
        if run.output is None:
            return
        lines = message.get("lines")
        for line in lines if isinstance(lines, list) else []:
            if isinstance(line, dict) and isinstance(line.get("message"), str):
                level, logger = line.get("level"), line.get("logger")
                run.output.add(
                    "protocol",
                    level if isinstance(level, str) else "INFO",
                    logger if isinstance(logger, str) else None,
                    line["message"],
                )
        dropped = message.get("dropped")
        if isinstance(dropped, int) and dropped > 0:
            run.output.dropped += dropped

    def _logged(self, run: ActiveRun, lines: list[LogLine]) -> None:
        event = RunLogged(run_id=run.run_id, at=now(), **self.reporter, lines=lines)
        self.outbox.emit(event, msg_id=f"logged:{run.run_id}:{lines[0].seq}:{self.instance}")

    def _waiting(self, run: ActiveRun, waiting: bool) -> None:
        run.waiting = waiting
        event = RunPaused if waiting else RunResumed
        self._emit(event(run_id=run.run_id, at=now(), **self.reporter))
        self.on_runs_changed()

    # -- running it ---------------------------------------------------------------------------
    async def _call(self, run: ActiveRun, call: PreparedCall) -> None:
        cmd = run.cmd
        link = call.link
        run.started = True
        run.view = call.view
        self.on_runs_changed()
        self._emit(RunStarted(run_id=cmd.run_id, at=now(), **self.reporter))
        run.before = self._record_state(run, "run_started")
        run.ended = asyncio.get_running_loop().create_future()
        link.ended.add_done_callback(lambda done: self._runner_ended(run, done))
        stop_watching = self._watch(run)
        fence = asyncio.create_task(self._fence_when_lost(run))
        await link.send("go")
        if run.control.cancelled:  # a cancel came while it was being confirmed
            await link.send("cancel")
            self._escalate_cancel(run)
        elif run.control.paused:
            await link.send("pause")
        try:
            end = await asyncio.shield(run.ended)
        except asyncio.CancelledError:
            await self._stop_on_shutdown(run)
            raise
        finally:
            stop_watching()
            fence.cancel()
            await link.close()
        cleanup: list[str] = []
        # What it still holds decides what clean-up, rollback and the last snapshot may touch:
        # a run fenced off a lease must leave that asset to whoever holds it now.
        run.held = await self._still_held(run)
        if end.outcome in ("failed", "cancelled"):
            end, cleanup = await self._make_safe(run, end)
        await self._finish(
            run, end.outcome, result=end.result, error=end.error, state=end.state, cleanup=cleanup
        )

    async def _fence_when_lost(self, run: ActiveRun) -> None:
        """A lost lease fences the runner too (its next checkpoint raises ``LeaseLost``); its
        commands are refused by the supervisor anyway."""
        keeper = run.keeper
        if keeper is None or run.link is None:
            return
        await keeper.fenced.wait()
        if keeper.lost is not None:
            await run.link.send("fence", message=keeper.lost.message)

    def _runner_ended(self, run: ActiveRun, done: asyncio.Future[dict[str, Any]]) -> None:
        """The runner reported how the protocol ended, or its process is gone."""
        if run.ended is None or run.ended.done():
            return
        report = done.result()
        if report.get("lost"):
            if run.given_up:
                return  # killed by a cancel's last step: the escalation ends the run
            message = "the protocol's process ended without reporting how the protocol ended"
            report = {"outcome": "failed", "error": {"type": "RunnerExited", "message": message}}
        run.ended.set_result(_ended(report))

    async def _make_safe(self, run: ActiveRun, end: Ended) -> tuple[Ended, list[str]]:
        """Clean up the run's machines (``cleanup``); a machine that cannot be made safe ends
        the run ``requires_intervention`` (its leases are then held for an operator)."""
        live = self.workcell.live
        if live is None:
            return end, []
        properties = {asset.name: asset.properties for asset in live.layout.assets}
        held = run.held if run.held is not None else await self._still_held(run)
        all_held = len(held) == len(run.cmd.bindings)
        machines, untouchable = {}, []
        for b in run.cmd.bindings:
            if b.kind != "machine" or b.asset_name not in properties:
                continue
            if b.asset_name not in held:  # another run may hold it now: hands off
                untouchable.append(live.get(b.asset_name))
                continue
            # A tip goes back only into a rack the run still holds; else into the trash.
            policy = tip_policy(properties[b.asset_name]) if all_held else "discard"
            machines[b.asset_name] = (live.get(b.asset_name), policy)
        try:
            async with asyncio.timeout(CLEANUP_TIMEOUT_SECONDS):  # a machine that stopped answering
                done = await make_safe(machines)
            done.problems += [
                f"{m.name}: holds tips, not touched: the run lost its lease on it"
                for m in untouchable
                if holds_tips(m)
            ]
        except TimeoutError:
            log.error("clean-up after run %s timed out", run.run_id)
            done = Cleanup(problems=[f"clean-up did not end in {CLEANUP_TIMEOUT_SECONDS:.0f} s"])
        except Exception as exc:  # never lose the run's outcome to its clean-up
            log.exception("clean-up after run %s failed", run.run_id)
            done = Cleanup(problems=[f"clean-up failed: {type(exc).__name__}: {exc}"])
        for action in done.actions:
            log.info("run %s clean-up: %s", run.run_id, action)
        if done.safe:
            return end, done.actions
        before = f" (the run had {end.outcome}: {end.error.message})" if end.error else ""
        message = "its machines could not be made safe: " + "; ".join(done.problems) + before
        log.error("run %s: %s", run.run_id, message)
        error = _ended_error("MachineNotSafe", message)
        return Ended("requires_intervention", error=error), [*done.actions, *done.problems]

    def _watch(self, run: ActiveRun) -> Callable[[], None]:
        """The watchdog: ``RunBlocked`` once the runner's loop has not turned (no tick) for
        ``run_blocked_seconds``, once per stall. Returns what stops it."""
        link, limit = run.link, self.run_blocked_seconds
        assert link is not None
        loop = asyncio.get_running_loop()
        handle: list[asyncio.TimerHandle] = []

        def check() -> None:
            stalled = loop.time() - link.last_tick
            if stalled < limit:
                run.blocked_reported = False
                delay = limit - stalled
            else:
                if not run.blocked_reported:
                    run.blocked_reported = True
                    log.warning("run %s has blocked its runner for %.1f s", run.run_id, stalled)
                    self._emit(
                        RunBlocked(
                            run_id=run.run_id,
                            at=now(),
                            blocked_seconds=round(stalled, 3),
                            last_call=run.last_call,
                            **self.reporter,
                        )
                    )
                delay = self._tick
            handle[0] = loop.call_later(delay, check)

        handle.append(loop.call_later(limit, check))
        return lambda: handle[0].cancel()  # noqa: PLW0108 (the handle changes at every check)

    def _escalate_cancel(self, run: ActiveRun) -> None:
        if run.escalation is None and run.ended is not None and not run.ended.done():
            run.escalation = asyncio.create_task(self._escalation(run))

    async def _escalation(self, run: ActiveRun) -> None:
        """A cancel of a running protocol, step by step (see the module's docstring)."""
        assert run.ended is not None and run.link is not None
        step = self.cancel_escalation_seconds / 2
        if await _within(run.ended, step):
            return
        log.warning("run %s did not stop at a checkpoint; interrupting its protocol", run.run_id)
        await run.link.send("interrupt")
        if await _within(run.ended, step / 2):
            return
        await self._kill(run, f"it did not stop within {self.cancel_escalation_seconds:g} s")

    async def _kill(self, run: ActiveRun, why: str) -> None:
        """Kill the runner; the instrument commands under way (in this process) finish first,
        within the escalation's bound, or are cancelled (their instruments' state unknown)."""
        assert run.link is not None and run.ended is not None
        run.given_up = True
        run.link.kill()
        log.error("run %s killed: %s", run.run_id, why)
        settled = await run.link.settle(self.cancel_escalation_seconds / 4)
        if run.ended.done():
            return
        if settled:
            run.ended.set_result(Ended("cancelled"))
            return
        if run.view is not None:
            run.view.interrupted = True
        message = (
            f"run killed ({why}) with an instrument command still under way: its "
            "instrument's state is unknown"
        )
        run.ended.set_result(
            Ended("requires_intervention", error=_ended_error("CommandInterrupted", message))
        )

    async def _stop_on_shutdown(self, run: ActiveRun) -> None:
        """The process is stopping while the protocol runs: interrupt it, wait a bounded time,
        kill it if it does not stop."""
        assert run.ended is not None and run.link is not None
        await run.link.send("interrupt")
        if not await _within(run.ended, self.cancel_escalation_seconds / 2):
            await self._kill(run, "the orchestrator stopped while it ran")

    async def _still_held(self, run: ActiveRun) -> set[str]:
        """Names of the run's assets whose leases it still holds (all, unless it was fenced)."""
        if run.keeper is None or run.keeper.lost is None:
            return {b.asset_name for b in run.cmd.bindings}
        held = set()
        for binding in run.cmd.bindings:
            try:
                state = await self.leases.read(binding.lease_key)
            except Exception as exc:  # unknown: treat as lost
                log.warning("could not read %s: %r", binding.lease_key, exc)
                continue
            token = run.keeper.tokens.get(binding.lease_key)
            if (
                state.holder is not None
                and state.holder.run_id == run.run_id
                and state.revision == token  # the lease it knows, not one granted again since
            ):
                held.add(binding.asset_name)
        return held

    async def _finish(
        self,
        run: ActiveRun,
        outcome: RunOutcome,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        state: dict[str, Any],
        cleanup: list[str] | None = None,
    ) -> None:
        self._free_slot(run)
        if run.output is not None:
            run.output.close()  # its last lines go out before its end
        asset_states, snapshot = self._final_asset_states(run, outcome)
        event = RunFinished(
            run_id=run.run_id,
            at=now(),
            **self.reporter,
            outcome=outcome,
            result=result,
            error=error,
            final_state=state,
            asset_states=asset_states,
            cleanup=cleanup or [],
            snapshot_id=snapshot.snapshot_id if snapshot is not None else None,
        )
        # Through the same queue as the run's other events, so it is published after them. The
        # id is this process's: a second process handed the same run reports separately (the
        # scheduler heeds the one executing it), and is not de-duplicated against it.
        self.outbox.emit(event, msg_id=f"finished:{run.run_id}:{self.instance}")
        if run.keeper is not None:
            # The leases stay claimed and renewed until the scheduler takes them back (it
            # releases or holds them once it has the report): a report held up by a NATS outage
            # must not let a claimed lease run out, which would send the run to an operator.
            await run.keeper.hand_back()

    def _asset_states(self, run: ActiveRun) -> dict[str, Any]:
        try:
            return self.workcell.snapshot([b.asset_name for b in run.cmd.bindings])
        except Exception:
            # The run's outcome matters more than its assets' states: report it regardless.
            log.exception("could not snapshot the assets of run %s", run.run_id)
            return {}

    def _emit(self, event: Event) -> int:
        return self.outbox.emit(event)

    # -- the state of its assets --------------------------------------------------------------
    def _record_state(
        self,
        run: ActiveRun,
        kind: SnapshotKind,
        *,
        checkpoint: str | None = None,
        sole_writer: bool = False,
        force: bool = False,
    ) -> dict[str, Any] | None:
        """Read the run's assets' state, record it if it changed; the state (None if it could
        not be read: a snapshot never fails a run)."""
        return self._record_snapshot(run, kind, checkpoint, sole_writer, force)[0]

    def _record_snapshot(
        self,
        run: ActiveRun,
        kind: SnapshotKind,
        checkpoint: str | None = None,
        sole_writer: bool = False,
        force: bool = False,
    ) -> tuple[dict[str, Any] | None, SnapshotInfo | None]:
        bindings = [b for b in run.cmd.bindings if run.held is None or b.asset_name in run.held]
        try:
            names = [b.asset_name for b in bindings]
            states = self.workcell.snapshot(names, sole_writer=sole_writer)
            if self.recorder is None:
                return states, None
            ids = {b.asset_name: b.asset_id for b in bindings}
            info = self.recorder.record(
                kind,
                states,
                ids,
                run_id=run.run_id,
                checkpoint=checkpoint,
                force=force,
                placements=self.workcell.placements(names),
            )
        except Exception:
            log.exception("could not record the %s state of run %s", kind, run.run_id)
            return None, None
        return states, info

    def _final_asset_states(
        self, run: ActiveRun, outcome: RunOutcome
    ) -> tuple[dict[str, Any], SnapshotInfo | None]:
        """The state of the run's assets as it ends (rolled back first if it asked for that),
        recorded; a reference to the snapshot instead when too large for the event. And the
        snapshot recorded (None if the protocol never started: nothing it did to record)."""
        if not run.started:
            return self._asset_states(run), None
        # Recorded even when unchanged: one per run, the state it left its assets in.
        states, info = self._record_snapshot(run, "run_finished", force=True)
        if (
            run.cmd.on_failure == "rollback"
            and outcome in ROLLED_BACK_OUTCOMES
            and run.before is not None
        ):
            self._roll_back(run, run.before)
            states, info = self._record_snapshot(run, "rolled_back", force=True)
        if states is None:
            return {}, info
        if len(json.dumps(states, separators=(",", ":"))) <= self.asset_states_inline_bytes:
            return states, info
        if info is None:
            log.error("run %s: its assets' state is too large to report", run.run_id)
            return {}, None
        reference = {
            "snapshot_id": str(info.snapshot_id),
            "object_name": info.object_name,
            "size_bytes": info.size_bytes,
        }
        return reference, info

    def _roll_back(self, run: ActiveRun, before: dict[str, Any]) -> None:
        """Put the run's labware back as it was when its protocol was called: the liquid. Not
        tips (a tip put in the trash is not back in its rack because a tracker says so), not
        machines, and not an asset the run no longer holds (another run may be using it)."""
        live = self.workcell.live
        if live is None:
            return
        for name, state in before.items():
            if run.held is not None and name not in run.held:
                log.warning("run %s: %s not rolled back: no longer its", run.run_id, name)
                continue
            obj = live.get(name)
            if isinstance(obj, TipRack | Machine):
                continue
            try:
                live.restore({name: state})
            except Exception:
                log.exception("run %s: could not roll %s back", run.run_id, name)
        log.info("run %s rolled back: %s", run.run_id, ", ".join(before))

    async def apply_restored(self, event: WorkcellStateRestored) -> None:
        """Load an operator's restore into the live objects. Skipped for an asset a run has
        (the asset-manager refused while leased, but a grant may have raced it) and when the
        workcell is not live yet (it will be built from the layout, which has the restored
        state). Loading the same state again changes nothing: redelivery is harmless."""
        if self.workcell.live is None or self.recorder is None:
            log.info("restore %s: the workcell is not live", event.restored.snapshot_id)
            return
        snapshot = await self.recorder.fetch(event.restored.object_name)
        if snapshot is None:
            log.warning("restore %s: its snapshot is gone", event.restored.snapshot_id)
            return
        live = self.workcell.live  # after the fetch: nothing awaits from here on
        if live is None:
            return
        in_use = {b.asset_id: r.run_id for r in self.runs.values() for b in r.cmd.bindings}
        loaded: dict[str, Any] = {}
        for asset in snapshot.assets:
            if asset.asset_id in in_use:
                log.warning(
                    "restore %s: %s is in use by run %s; not loaded",
                    event.restored.snapshot_id,
                    asset.asset_name,
                    in_use[asset.asset_id],
                )
            elif not live.has({asset.asset_id: asset.asset_name}):
                log.warning(
                    "restore %s: %s is not live here; not loaded",
                    event.restored.snapshot_id,
                    asset.asset_name,
                )
            else:
                try:
                    live.restore({asset.asset_name: asset.state})
                except Exception:
                    log.exception("restore: could not load the state of %s", asset.asset_name)
                    continue
                loaded[asset.asset_name] = asset.state
        self.recorder.remember(loaded)
        log.info("restored %s: %s", event.restored.snapshot_id, ", ".join(loaded) or "nothing")

    # -- operators and shutdown ---------------------------------------------------------------
    async def control(self, cmd: ControlRunExecution) -> None:
        """Apply an operator action in any phase; a cancel may arrive before the run itself."""
        run = self.runs.get(cmd.run_id)
        if run is None:
            if cmd.action == "cancel" and cmd.run_id not in self.done:
                self.cancelled_early.add(cmd.run_id)
            log.info("run %s is not executing here; %s noted", cmd.run_id, cmd.action)
            return
        control = run.control
        started = run.started and run.link is not None
        if cmd.action == "pause":
            control.pause()
            if started:
                await run.link.send("pause")  # type: ignore[union-attr]
        elif cmd.action == "cancel":
            control.cancel()
            if run.preparation is not None:
                run.preparation.cancel()  # a layout fetch or code load may hang: abort it
            if started:
                await run.link.send("cancel")  # type: ignore[union-attr]
            self._escalate_cancel(run)  # a running protocol that does not stop is made to
        else:
            control.resume()
            if started:
                await run.link.send("resume")  # type: ignore[union-attr]
            if not run.waiting:  # paused before any checkpoint was reached: nothing waited
                self._emit(RunResumed(run_id=cmd.run_id, at=now(), **self.reporter))

    async def resync_leases(self) -> None:
        """NATS came back: every keeper re-creates its watchers (see ``LeaseKeeper.resync``)."""
        for run in list(self.runs.values()):
            if run.keeper is not None:
                await run.keeper.resync()

    async def finish_started(self, timeout: float) -> None:
        """On a graceful stop (``stopping`` set): wait up to ``timeout`` for the runs that
        started (or are about to: their command confirmed) to end. The others wait at the
        gate, their leases renewed, for ``hand_back``."""
        committed = [
            r.task
            for r in self.runs.values()
            if r.task is not None and (r.started or r.accepted.is_set())
        ]
        if committed:
            await asyncio.wait(committed, timeout=timeout)

    async def hand_back(self) -> int:
        """On shutdown, once the running protocols are done: give back every run accepted here
        that has not started (its claim withdrawn, ``RunHandedBack``, its command handed back
        for the workcell's next orchestrator); how many. Handed back last, not first: until
        then their leases are renewed here (a drain can outlast a lease's TTL)."""
        unstarted = [r.task for r in self.runs.values() if not r.started and r.task is not None]
        for task in unstarted:
            task.cancel()
        if unstarted:
            await asyncio.wait(unstarted)
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=HANDBACK_SECONDS)
        return len(unstarted)

    async def drain(self, timeout: float) -> None:
        """On shutdown: let running protocols finish, cancel what is left after ``timeout``.
        A run cancelled before it started is abandoned: its command was not acknowledged and
        goes to the next process."""
        tasks = [run.task for run in self.runs.values() if run.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        if self._handlers:
            # The handlers of abandoned runs now hand their commands back (a nack, so the next
            # process gets them at once rather than after the ack wait); the connection must
            # still be open for that. Bounded: with one worker the handler is the consumer's
            # own long-lived task.
            await asyncio.wait(set(self._handlers), timeout=HANDBACK_SECONDS)


class PreparedCall:
    """A run ready to start: its prepared runner and its view of the workcell (the guard)."""

    def __init__(self, link: RunnerLink, view: WorkcellView) -> None:
        self.link = link
        self.view = view


class PreparationFailed(Exception):
    """The runner could not prepare the run (code, parameters, copies): its error."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message", "the run could not be prepared")))
        self.error = error


def _ended(report: dict[str, Any]) -> Ended:
    """How the runner reports its protocol ended (``finished``), checked: the runner is not
    trusted to say more than an outcome, a JSON result, an error and its state."""
    said = report.get("outcome")
    outcome: Literal["completed", "failed", "cancelled"] = (
        said if said in ("completed", "cancelled") else "failed"
    )
    error = None
    if report.get("error") is not None:
        try:
            error = ErrorInfo.model_validate(report["error"])
        except ValueError:
            error = ErrorInfo(type="RunnerError", message="the runner reported a malformed error")
    state = report.get("state")
    return Ended(
        outcome,
        result=report.get("result"),
        error=error,
        state=state if isinstance(state, dict) else {},
    )


async def _nothing() -> None:
    return None


async def _within(future: asyncio.Future[Any], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``future`` (never cancelling it); whether it is done."""
    await asyncio.wait({future}, timeout=seconds)
    return future.done()


def _ended_error(kind: str, message: str) -> ErrorInfo:
    return ErrorInfo(type=kind, message=message, code="requires_intervention")


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _error_info(exc: BaseException, fallback: ErrorCode) -> ErrorInfo:
    """A run's error before its protocol was called: the runner's own report (its message and
    code, checked), or this exception's message and code (else ``fallback``). No file of the
    orchestrator's reaches a run record."""
    if isinstance(exc, PreparationFailed):
        try:
            return ErrorInfo.model_validate({**exc.error, "traceback": None})
        except ValueError:
            return ErrorInfo(type="PreparationFailed", message=str(exc), code=fallback.value)
    code = exc.code.value if isinstance(exc, PraxisError) else fallback.value
    message = exc.message if isinstance(exc, PraxisError) else str(exc)
    return ErrorInfo(type=type(exc).__name__, message=message or type(exc).__name__, code=code)
