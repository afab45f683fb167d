"""Runs protocols on this workcell: prepare, claim, confirm, call, report.

The orchestrator never touches the database: it learns what to run from ``ExecuteRun`` and reports
through events. Each run is a task on the one event loop that owns the live PyLabRobot objects
(the *supervisor*), and its protocol function runs on a worker thread with a loop of its own
(``praxis_orchestrator.isolation``), behind a view of the workcell that reaches only the run's
leased assets (``praxis_plr.guard``).

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
   that hangs: live objects, fence check, code, parameters. Then it waits for one of the
   ``max_concurrent_runs`` slots (its leases renewed all along).
4. ``RunPreparing`` has been published, and a delivery of ``ExecuteRun`` is acknowledged, each
   retried while NATS is away (the leases are renewed meanwhile: an outage delays the run, it
   does not fail it). From then on a crash cannot hand the command to another process; a crash
   before it redelivers the command, whose next process finds the claim (the run then waits for
   an operator, as the dead process's heartbeat says). A process that stops gracefully before
   that withdraws its claim and hands the command back.
5. ``RunStarted``, and the protocol function is called on the run's worker thread.
6. ``RunFinished``; the keeper renews the leases until the scheduler takes them back (it
   releases them, or holds them for an operator, once it has the report), then stops.

A cancel of a running protocol escalates, each step given half of ``cancel_escalation_seconds``
(``CANCEL_ESCALATION_SECONDS``, default 10 s: a cancel ends the run within that bound, well
inside the scheduler's ``CANCEL_TIMEOUT_SECONDS``):

1. cooperative: ``RunCancelled`` at the protocol's next checkpoint (a protocol-function call);
2. its task is cancelled on its own loop (a protocol awaiting something without checkpoints);
3. the worker is abandoned: its view is fenced (no instrument command goes out any more) and the
   run ends ``requires_intervention`` (its leases are held for an operator).

Steps 1 and 2 end it ``cancelled``, unless step 2 interrupted an instrument command midway
(then ``requires_intervention``: that instrument's state is unknown). A worker whose loop stops
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
import contextvars
import inspect
import json
import logging
import os
import threading
import traceback
import typing
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pylabrobot.machines.machine import Machine
from pylabrobot.resources import TipRack

from praxis_contracts.base import Event
from praxis_contracts.common import ErrorInfo
from praxis_contracts.errors import ErrorCode, LeaseLost, PraxisError, Unavailable
from praxis_contracts.runs import (
    ControlRunExecution,
    EdgeRun,
    ExecuteRun,
    FunctionCallRecorded,
    RunBlocked,
    RunFinished,
    RunOutcome,
    RunPaused,
    RunPreparing,
    RunResumed,
    RunStarted,
)
from praxis_contracts.state import SnapshotInfo, SnapshotKind, WorkcellStateRestored
from praxis_orchestrator.cleanup import Cleanup, holds_tips, make_safe, tip_policy
from praxis_orchestrator.code import CodeCache
from praxis_orchestrator.isolation import RunThread
from praxis_orchestrator.keeper import ClaimedElsewhere, LeaseKeeper
from praxis_orchestrator.outbox import Outbox
from praxis_orchestrator.snapshots import StateRecorder
from praxis_orchestrator.workcell import WorkcellHost
from praxis_plr.guard import WorkcellView, current_view
from praxis_plr.types import unwrap_optional
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
from praxis_sdk.context import CallRecord, RunCancelled, RunContext, RunControl, current_run
from praxis_sdk.decorators import validate_parameters
from praxis_sdk.state import PraxisState

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
    """How a protocol function ended, as its worker reports it."""

    outcome: RunOutcome
    result: Any = None
    error: ErrorInfo | None = None


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
        self.preparation: asyncio.Task[PreparedCall] | None = None
        self.task: asyncio.Task[None] | None = None
        self.accepted = asyncio.Event()  # ready to start, or ended: its deliveries confirm now
        self.confirmed = asyncio.Event()  # a delivery of its command was acknowledged
        self.declined = False  # another process claimed it first: not this process's run
        self.slot = False  # it holds one of the ``max_concurrent_runs`` slots
        # Once the protocol function is called:
        self.worker: RunThread | None = None
        self.view: WorkcellView | None = None
        self.protocol_task: asyncio.Task[Ended] | None = None  # on the worker's loop
        self.ended: asyncio.Future[Ended] | None = None  # on the supervisor's loop
        self.escalation: asyncio.Task[None] | None = None  # a cancel under way
        self.given_up = False  # abandoned: the worker may still be running, fenced
        self.blocked_reported = False
        self.before: dict[str, Any] | None = None  # its assets' state when the protocol began
        self.held: set[str] | None = None  # names whose leases it still holds as it ends

    @property
    def run_id(self) -> uuid.UUID:
        return self.cmd.run_id

    @property
    def phase(self) -> Phase:
        if not self.started:
            return "preparing"
        return "paused" if self.control.blocked else "running"

    def report(self) -> EdgeRun:
        return EdgeRun(
            run_id=self.run_id,
            phase=self.phase,
            last_call=self.last_call,
            last_checkpoint_at=self.last_checkpoint_at,
        )


class EventSink:
    """Queues each protocol-function call record as an event, and notes the last call; a call
    that completed is a checkpoint (``on_completed``, on the worker's thread)."""

    def __init__(
        self,
        emit: Callable[[Event], int],
        run: ActiveRun,
        on_completed: Callable[[CallRecord], None] = lambda call: None,
    ) -> None:
        self.emit = emit
        self.run = run
        self.on_completed = on_completed

    async def record(self, call: CallRecord) -> None:
        if call.status == "running":
            self.run.last_call = call.function
        self.emit(FunctionCallRecorded(**call.__dict__))
        if call.status == "completed":
            self.on_completed(call)


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
    ) -> None:
        self.workcell = workcell
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
        self.runs: dict[uuid.UUID, ActiveRun] = {}
        self.done = RecentIds()  # runs that ended here: a redelivered command is dropped
        self.cancelled_early = RecentIds()  # cancels that overtook their ExecuteRun
        self._handlers: set[asyncio.Task[Any]] = set()  # tasks handling an ExecuteRun now

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
        # Called on the run's worker thread: the outbox is thread-safe, the beacon is not.
        async def paused() -> None:
            self._emit(RunPaused(run_id=cmd.run_id, at=now(), edge_instance=self.instance))
            self._on_supervisor(self.on_runs_changed)

        async def resumed() -> None:
            self._emit(RunResumed(run_id=cmd.run_id, at=now(), edge_instance=self.instance))
            self._on_supervisor(self.on_runs_changed)

        run = ActiveRun(cmd, RunControl(on_pause=paused, on_resume=resumed))
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
                preparing = self._emit(
                    RunPreparing(run_id=cmd.run_id, at=now(), edge_instance=self.instance)
                )
                if not await self._claim(run):
                    return
                call = await self._preparation(run, preparing)
                if call is not None:
                    await self._call(run, call)
            except asyncio.CancelledError:
                if not run.started:  # shutdown: the next process takes the command
                    run.abandoned = True
                    if run.keeper is not None and run.keeper.lost is None:
                        await run.keeper.stop()
                        await run.keeper.unclaim()
                raise
            finally:
                if run.keeper is not None:
                    await run.keeper.stop()
                self._unregister(run)

    async def _claim(self, run: ActiveRun) -> bool:
        """Listed in a stored heartbeat, then the leases claimed and kept from here on; False
        if the run ended here (a lease lost: failed) or is another process's (dropped)."""
        cmd = run.cmd
        await self.list_runs()
        keeper = LeaseKeeper(self.leases, cmd.run_id, cmd.bindings, self.instance)
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

    async def _prepare_and_confirm(self, run: ActiveRun, preparing: int) -> PreparedCall:
        call = await self._prepare(run)
        await self._slots.acquire()  # at most ``max_concurrent_runs`` protocols at once
        run.slot = True
        await self.outbox.delivered(preparing)  # the scheduler knows which process has it
        # Confirmed by the handlers of its deliveries: from here a crash redelivers nothing,
        # and the process that claimed the leases is the one that calls the protocol.
        run.accepted.set()
        await run.confirmed.wait()
        return call

    async def _prepare(self, run: ActiveRun) -> PreparedCall:
        cmd = run.cmd
        keeper = run.keeper
        assert keeper is not None
        live = await self.workcell.ensure(cmd.bindings)
        keeper.check_now()
        fn = await self.code.function(cmd.definition)
        kwargs: dict[str, Any] = validate_parameters(fn, cmd.parameters)
        view = live.view(cmd.run_id, [b.asset_name for b in cmd.bindings], keeper.check_now)
        for binding in cmd.bindings:
            kwargs[binding.requirement] = live.get(binding.asset_name)
        ctx = RunContext(
            run_id=cmd.run_id,
            state=PraxisState(cmd.initial_state),
            sink=EventSink(self._emit, run, lambda done: self._checkpoint_state(run, done)),
            control=run.control,
            on_checkpoint=_checkpoint(run, keeper),
        )
        for name, hint in typing.get_type_hints(fn).items():
            inner, _ = unwrap_optional(hint)
            if inner is PraxisState:
                kwargs[name] = ctx.state
            elif inner is RunContext:
                kwargs[name] = ctx
        for name, param in inspect.signature(fn).parameters.items():
            if name not in kwargs and param.default is inspect.Parameter.empty:
                kwargs[name] = None  # an optional asset left unbound
        return PreparedCall(fn, kwargs, ctx, keeper, view)

    # -- running it ---------------------------------------------------------------------------
    async def _call(self, run: ActiveRun, call: PreparedCall) -> None:
        cmd = run.cmd
        run.started = True
        self.on_runs_changed()
        worker = RunThread(f"run-{cmd.run_id}", tick=min(0.25, self.run_blocked_seconds / 4))
        run.worker, run.view = worker, call.view
        run.control.bind(worker.loop)
        ended = run.ended = asyncio.get_running_loop().create_future()
        worker.start()
        self._emit(RunStarted(run_id=cmd.run_id, at=now(), edge_instance=self.instance))
        run.before = self._record_state(run, "run_started")
        future = worker.submit(self._protocol(run, call, contextvars.copy_context()))
        future.add_done_callback(lambda done: self._on_supervisor(self._protocol_ended, run, done))
        stop_watching = self._watch(run)
        if run.control.cancelled:  # a cancel came while it was being confirmed
            self._escalate_cancel(run)
        try:
            end = await asyncio.shield(ended)
        except asyncio.CancelledError:
            await self._stop_on_shutdown(run)
            raise
        finally:
            stop_watching()
        cleanup: list[str] = []
        # What it still holds decides what clean-up, rollback and the last snapshot may touch:
        # a run fenced off a lease must leave that asset to whoever holds it now.
        run.held = await self._still_held(run)
        if end.outcome in ("failed", "cancelled"):
            end, cleanup = await self._make_safe(run, end)
        await self._finish(
            run,
            end.outcome,
            result=end.result,
            error=end.error,
            state=_state_of(call.ctx),
            cleanup=cleanup,
        )

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

    async def _protocol(
        self, run: ActiveRun, call: PreparedCall, context: contextvars.Context
    ) -> Ended:
        """The protocol function, on the run's worker loop, in a task of its own."""
        for var, value in context.items():  # log context, correlation id
            var.set(value)
        current_run.set(call.ctx)
        current_view.set(call.view)
        run.protocol_task = asyncio.current_task()
        try:
            result = await call.fn(**call.kwargs)
        except RunCancelled:
            return Ended("cancelled")
        except asyncio.CancelledError:  # a cancel's second step, or a shutdown
            if call.view.interrupted:
                message = "cancelled in the middle of an instrument command: its state is unknown"
                return Ended(
                    "requires_intervention", error=_ended_error("CommandInterrupted", message)
                )
            return Ended("cancelled")
        except Exception as exc:
            log.warning("run failed: %s: %s", type(exc).__name__, exc)
            return Ended(
                "failed", error=_error_info(exc, ErrorCode.PROTOCOL_ERROR, self.code.cache_dir)
            )
        return Ended("completed", result=_json_safe(result))

    def _protocol_ended(self, run: ActiveRun, done: Future[Ended]) -> None:
        """On the supervisor: the worker's task is over (also long after it was abandoned)."""
        assert run.worker is not None and run.ended is not None
        run.worker.stop()
        if run.ended.done():
            if run.given_up:
                log.info("abandoned run %s: its worker's protocol returned at last", run.run_id)
            return
        try:
            run.ended.set_result(done.result())
        except BaseException as exc:  # the wrapper itself failed, or was cancelled
            run.ended.set_result(Ended("failed", error=_error_info(exc, ErrorCode.INTERNAL)))

    def _on_supervisor(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` on the supervisor's loop (now, when already on it)."""
        if threading.get_ident() == self._thread:
            callback(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the process is stopping: loop closed
                self._loop.call_soon_threadsafe(callback, *args)

    def _watch(self, run: ActiveRun) -> Callable[[], None]:
        """The watchdog: ``RunBlocked`` once the worker's loop has not turned for
        ``run_blocked_seconds``, once per stall. Returns what stops it."""
        worker, limit = run.worker, self.run_blocked_seconds
        assert worker is not None
        loop = asyncio.get_running_loop()
        handle: list[asyncio.TimerHandle] = []

        def check() -> None:
            stalled = worker.stalled_for()
            if stalled < limit:
                run.blocked_reported = False
                delay = limit - stalled
            else:
                if not run.blocked_reported:
                    run.blocked_reported = True
                    log.warning("run %s has blocked its worker for %.1f s", run.run_id, stalled)
                    self._emit(
                        RunBlocked(
                            run_id=run.run_id,
                            at=now(),
                            edge_instance=self.instance,
                            blocked_seconds=round(stalled, 3),
                            last_call=run.last_call,
                        )
                    )
                delay = worker.tick
            handle[0] = loop.call_later(delay, check)

        handle.append(loop.call_later(limit, check))
        return lambda: handle[0].cancel()  # noqa: PLW0108 (the handle changes at every check)

    def _escalate_cancel(self, run: ActiveRun) -> None:
        if run.escalation is None and run.ended is not None and not run.ended.done():
            run.escalation = asyncio.create_task(self._escalation(run))

    async def _escalation(self, run: ActiveRun) -> None:
        """A cancel of a running protocol, step by step (see the module's docstring)."""
        assert run.ended is not None and run.worker is not None
        step = self.cancel_escalation_seconds / 2
        if await _within(run.ended, step):
            return
        log.warning("run %s did not stop at a checkpoint; cancelling its task", run.run_id)
        if run.protocol_task is not None:
            run.worker.call(run.protocol_task.cancel)
        if await _within(run.ended, step):
            return
        self._abandon(
            run, f"it did not stop within {self.cancel_escalation_seconds:g} s of a cancel"
        )

    def _abandon(self, run: ActiveRun, why: str) -> None:
        """Give the worker up: fence it and end the run for an operator."""
        assert run.view is not None and run.ended is not None
        run.view.abandon(why)
        run.given_up = True
        log.error("run %s abandoned: %s", run.run_id, why)
        if not run.ended.done():
            message = f"run abandoned: {why}; the instruments' state is unknown"
            run.ended.set_result(
                Ended("requires_intervention", error=_ended_error("RunAbandoned", message))
            )

    async def _stop_on_shutdown(self, run: ActiveRun) -> None:
        """The process is stopping while the protocol runs: cancel its task on its loop, wait
        a bounded time, abandon it if it does not stop."""
        assert run.ended is not None and run.worker is not None
        if run.protocol_task is not None:
            run.worker.call(run.protocol_task.cancel)
        if not await _within(run.ended, self.cancel_escalation_seconds / 2):
            self._abandon(run, "the orchestrator stopped while it ran")

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
        event = RunFinished(
            run_id=run.run_id,
            at=now(),
            edge_instance=self.instance,
            outcome=outcome,
            result=result,
            error=error,
            final_state=state,
            asset_states=self._final_asset_states(run, outcome),
            cleanup=cleanup or [],
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
            states = self.workcell.snapshot(
                [b.asset_name for b in bindings], sole_writer=sole_writer
            )
            if self.recorder is None:
                return states, None
            ids = {b.asset_name: b.asset_id for b in bindings}
            info = self.recorder.record(
                kind, states, ids, run_id=run.run_id, checkpoint=checkpoint, force=force
            )
        except Exception:
            log.exception("could not record the %s state of run %s", kind, run.run_id)
            return None, None
        return states, info

    def _checkpoint_state(self, run: ActiveRun, call: CallRecord) -> None:
        """On the run's worker thread, as a protocol-function call completes: its assets' state
        now (see ``praxis_orchestrator.snapshots`` for why here)."""
        if run.given_up:
            return  # abandoned and fenced: an operator decides what its assets hold
        if call.parent_call_id is None:
            return  # the run's own function: its end is the run's (``run_finished``)
        self._record_state(
            run, "checkpoint", checkpoint=f"{call.function}#{call.sequence}", sole_writer=True
        )

    def _final_asset_states(self, run: ActiveRun, outcome: RunOutcome) -> dict[str, Any]:
        """The state of the run's assets as it ends (rolled back first if it asked for that),
        recorded; a reference to the snapshot instead when too large for the event."""
        if not run.started:
            return self._asset_states(run)
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
            return {}
        if len(json.dumps(states, separators=(",", ":"))) <= self.asset_states_inline_bytes:
            return states
        if info is None:
            log.error("run %s: its assets' state is too large to report", run.run_id)
            return {}
        return {
            "snapshot_id": str(info.snapshot_id),
            "object_name": info.object_name,
            "size_bytes": info.size_bytes,
        }

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
        if cmd.action == "pause":
            control.pause()
        elif cmd.action == "cancel":
            control.cancel()
            if run.preparation is not None:
                run.preparation.cancel()  # a layout fetch or code load may hang: abort it
            self._escalate_cancel(run)  # a running protocol that does not stop is made to
        else:
            was_waiting = control.blocked
            control.resume()
            if not was_waiting:  # paused before any checkpoint was reached: nothing waited
                self._emit(RunResumed(run_id=cmd.run_id, at=now(), edge_instance=self.instance))

    async def resync_leases(self) -> None:
        """NATS came back: every keeper re-creates its watchers (see ``LeaseKeeper.resync``)."""
        for run in list(self.runs.values()):
            if run.keeper is not None:
                await run.keeper.resync()

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
    def __init__(
        self,
        fn: Callable[..., Any],
        kwargs: dict[str, Any],
        ctx: RunContext,
        keeper: LeaseKeeper,
        view: WorkcellView,
    ) -> None:
        self.fn = fn
        self.kwargs = kwargs
        self.keeper = keeper
        self.ctx = ctx
        self.view = view


def _checkpoint(run: ActiveRun, keeper: LeaseKeeper) -> Callable[[], Awaitable[None]]:
    """The run's check at every protocol-function boundary: noted for the heartbeat, fenced."""

    async def checkpoint() -> None:
        run.last_checkpoint_at = now()
        await keeper.check()

    return checkpoint


async def _nothing() -> None:
    return None


async def _within(future: asyncio.Future[Any], seconds: float) -> bool:
    """Wait up to ``seconds`` for ``future`` (never cancelling it); whether it is done."""
    await asyncio.wait({future}, timeout=seconds)
    return future.done()


def _state_of(ctx: RunContext) -> dict[str, Any]:
    """The run's state; an abandoned worker may still be changing it."""
    try:
        return ctx.state.to_dict()
    except Exception:
        log.exception("could not read the state of run %s", ctx.run_id)
        return {}


def _ended_error(kind: str, message: str) -> ErrorInfo:
    return ErrorInfo(type=kind, message=message, code="requires_intervention")


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _error_info(
    exc: BaseException, fallback: ErrorCode, protocol_root: Path | None = None
) -> ErrorInfo:
    """A run's error: its own message and a code (the exception's, else ``fallback``), and the
    traceback of the protocol's own frames only, paths relative to its source tree (never the
    orchestrator's or a library's files: run records are read over the API)."""
    code = exc.code.value if isinstance(exc, PraxisError) else fallback.value
    message = exc.message if isinstance(exc, PraxisError) else str(exc)
    return ErrorInfo(
        type=type(exc).__name__,
        message=message or type(exc).__name__,
        code=code,
        traceback=_protocol_traceback(exc, protocol_root) if protocol_root else None,
    )


def _protocol_traceback(exc: BaseException, root: Path) -> str | None:
    """``Traceback`` lines for the frames in the protocol's source tree
    (``<source>/<commit>/<path>`` under the code cache, shown as ``<path>``), then the exception
    line; None if none."""
    base = str(root.resolve()) + os.sep
    lines = []
    for frame in traceback.extract_tb(exc.__traceback__):
        filename = str(Path(frame.filename).resolve())
        if not filename.startswith(base):
            continue
        shown = filename[len(base) :].split(os.sep, 2)[-1]  # <source id>/<commit>/<path>
        lines.append(f'  File "{shown}", line {frame.lineno}, in {frame.name}\n')
        if frame.line:
            lines.append(f"    {frame.line}\n")
    if not lines:
        return None
    last = traceback.format_exception_only(type(exc), exc)[-1]
    return ("Traceback (protocol frames):\n" + "".join(lines) + last)[-4000:]


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))
