"""Runs protocols on this workcell: prepare, claim, confirm, call, report.

The orchestrator never touches the database: it learns what to run from ``ExecuteRun`` and reports
through events. Each run is a task on the one event loop that owns the live PyLabRobot objects.

A run's life, and why in this order:

1. It is registered as active (the heartbeat lists it as ``preparing``) and ``RunPreparing``,
   naming this process (``edge_instance``), is queued.
2. It is prepared in a task of its own, so that a cancel can abort a layout fetch or a code load
   that hangs: live objects, fence check, code, parameters.
3. ``RunPreparing`` has been published (the scheduler knows which process has the run before
   the command is gone), and the ``ExecuteRun`` is acknowledged, waiting until the server
   recorded the ack. From then on a crash cannot hand the command to another process, which
   would drive the instruments again; a crash before it redelivers the command, and the next
   process simply prepares again.
4. The keeper starts and claims the leases (renews each once at its token): of two processes
   handed the same run, only one gets past this.
5. ``RunStarted``, and the protocol function is called.
6. The keeper stops, then ``RunFinished`` (the scheduler releases the leases when it sees it).

Events go through the ``Outbox``: a protocol never waits for NATS, and never fails for its sake.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import traceback
import typing
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from praxis_contracts.base import Event
from praxis_contracts.common import ErrorInfo
from praxis_contracts.errors import LeaseLost, PraxisError, Unavailable
from praxis_contracts.runs import (
    ControlRunExecution,
    EdgeRun,
    ExecuteRun,
    FunctionCallRecorded,
    RunFinished,
    RunOutcome,
    RunPaused,
    RunPreparing,
    RunResumed,
    RunStarted,
)
from praxis_orchestrator.code import CodeCache
from praxis_orchestrator.keeper import LeaseKeeper
from praxis_orchestrator.outbox import Outbox
from praxis_orchestrator.workcell import WorkcellHost
from praxis_plr.types import unwrap_optional
from praxis_runtime.bus import INFRA_RETRY_CAP, acknowledge, is_infrastructure, retry_delay
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
        self.accepted = asyncio.Event()  # its command needs no handler any more

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
    """Queues each protocol-function call record as an event, and notes the last call."""

    def __init__(self, emit: Callable[[Event], int], run: ActiveRun) -> None:
        self.emit = emit
        self.run = run

    async def record(self, call: CallRecord) -> None:
        if call.status == "running":
            self.run.last_call = call.function
        self.emit(FunctionCallRecorded(**call.__dict__))


class Executor:
    def __init__(
        self,
        workcell: WorkcellHost,
        code: CodeCache,
        leases: LeaseStore,
        outbox: Outbox,
        instance: str,
    ) -> None:
        self.workcell = workcell
        self.code = code
        self.leases = leases
        self.outbox = outbox
        self.instance = instance
        self.on_runs_changed: Callable[[], None] = lambda: None  # the heartbeat beats at once
        self.runs: dict[uuid.UUID, ActiveRun] = {}
        self.done = RecentIds()  # runs that ended here: a redelivered command is dropped
        self.cancelled_early = RecentIds()  # cancels that overtook their ExecuteRun
        self._handlers: set[asyncio.Task[Any]] = set()  # tasks handling an ExecuteRun now

    def edge_runs(self) -> list[EdgeRun]:
        """What the heartbeat reports: every run this process has, in any phase."""
        return [run.report() for run in self.runs.values()]

    # -- accepting a run ----------------------------------------------------------------------
    async def accept(self, cmd: ExecuteRun) -> None:
        """Take the run; returns once the protocol function has been called (or the run ended
        before that). A redelivery of a run this process has waits for the first delivery to
        get that far; a redelivery of a run that ended here is dropped."""
        run = self.runs.get(cmd.run_id)
        if run is not None:
            log.info("run %s is already being prepared here; redelivery waits", cmd.run_id)
        elif cmd.run_id in self.done:
            log.info("run %s already executed here; ignoring redelivery", cmd.run_id)
            return
        else:
            run = self._register(cmd)
            run.task = asyncio.create_task(self._lifecycle(run))
        self._track_handler()
        await run.accepted.wait()
        if run.abandoned:
            # Not acknowledged, not started: the command is redelivered (to the next process).
            raise Unavailable(f"the orchestrator stopped before run {cmd.run_id} started")

    def _track_handler(self) -> None:
        handler = asyncio.current_task()
        if handler is not None and handler not in self._handlers:
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)

    def _register(self, cmd: ExecuteRun) -> ActiveRun:
        async def paused() -> None:
            self._emit(RunPaused(run_id=cmd.run_id, at=now(), edge_instance=self.instance))
            self.on_runs_changed()

        async def resumed() -> None:
            self._emit(RunResumed(run_id=cmd.run_id, at=now(), edge_instance=self.instance))
            self.on_runs_changed()

        run = ActiveRun(cmd, RunControl(on_pause=paused, on_resume=resumed))
        self.runs[cmd.run_id] = run
        self.on_runs_changed()
        return run

    def _unregister(self, run: ActiveRun) -> None:
        self.runs.pop(run.run_id, None)
        if not run.abandoned:
            self.done.add(run.run_id)
        run.accepted.set()
        self.on_runs_changed()

    async def _lifecycle(self, run: ActiveRun) -> None:
        cmd = run.cmd
        with log_context(run_id=cmd.run_id):
            try:
                if cmd.run_id in self.cancelled_early:
                    await self._finish(run, "cancelled", state=cmd.initial_state)
                    return
                preparing = self._emit(
                    RunPreparing(run_id=cmd.run_id, at=now(), edge_instance=self.instance)
                )
                call = await self._preparation(run, preparing)
                if call is not None:
                    await self._call(run, call)
            except asyncio.CancelledError:
                run.abandoned = not run.started  # shutdown: the next process prepares again
                raise
            finally:
                if run.keeper is not None:
                    await run.keeper.stop()
                self._unregister(run)

    async def _preparation(self, run: ActiveRun, preparing: int) -> PreparedCall | None:
        """Prepare and confirm the run in a task a cancel can abort; None if the run ended
        there (failed, or cancelled by an operator)."""
        run.preparation = asyncio.create_task(self._prepare_and_confirm(run, preparing))
        try:
            return await run.preparation
        except asyncio.CancelledError:
            if _being_cancelled():
                raise  # the process is stopping, this is no operator's cancel
            await self._finish(run, "cancelled", state=run.cmd.initial_state)
        except Exception as exc:
            log.warning("run could not start: %s: %s", type(exc).__name__, exc)
            await self._finish(run, "failed", error=_error_info(exc), state={})
        finally:
            run.preparation = None
        return None

    async def _prepare_and_confirm(self, run: ActiveRun, preparing: int) -> PreparedCall:
        call = await self._prepare(run)
        await self.outbox.delivered(preparing)  # the scheduler knows which process has it
        await self._acknowledge()
        # Only now are the leases renewed: a command redelivered after a crash before the ack
        # finds the tokens it carries and prepares again. The claim is one renewal of each
        # lease at its token, so of two processes handed the same run (a redelivery while the
        # first was still preparing) only one gets past it.
        run.keeper = call.keeper
        call.keeper.start()
        await call.keeper.claim()
        return call

    async def _acknowledge(self) -> None:
        """Confirm the ExecuteRun and wait until the server recorded it; retried while NATS is
        away (a second ack of an acknowledged message is answered too, so retrying is safe)."""
        attempt = 0
        while True:
            try:
                await acknowledge()
                return
            except Exception as exc:
                if not is_infrastructure(exc):
                    raise
                attempt += 1
                log.warning("acknowledging the command failed (attempt %d): %r", attempt, exc)
                await asyncio.sleep(retry_delay(attempt, INFRA_RETRY_CAP))

    async def _prepare(self, run: ActiveRun) -> PreparedCall:
        cmd = run.cmd
        live = await self.workcell.ensure(cmd.bindings)
        keeper = LeaseKeeper(self.leases, cmd.run_id, cmd.bindings, await self.check_fence(cmd))
        fn = await self.code.function(cmd.definition)
        kwargs: dict[str, Any] = validate_parameters(fn, cmd.parameters)
        for binding in cmd.bindings:
            kwargs[binding.requirement] = live.get(binding.asset_name)
        ctx = RunContext(
            run_id=cmd.run_id,
            state=PraxisState(cmd.initial_state),
            sink=EventSink(self._emit, run),
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
        return PreparedCall(fn, kwargs, ctx, keeper)

    async def check_fence(self, cmd: ExecuteRun) -> int:
        """Refuse to drive hardware unless every lease is still this run's, at its token.

        Returns the shortest lease TTL (the renewal heartbeat follows it)."""
        ttls = []
        for binding in cmd.bindings:
            state = await self.leases.read(binding.lease_key)
            if (
                state.holder is None
                or state.holder.run_id != cmd.run_id
                or state.revision != binding.token
            ):
                raise LeaseLost(
                    f"lease on {binding.asset_name} is no longer held at token {binding.token}",
                    asset=binding.asset_name,
                )
            ttls.append(state.holder.ttl_seconds)
        return min(ttls, default=0)

    # -- running it ---------------------------------------------------------------------------
    async def _call(self, run: ActiveRun, call: PreparedCall) -> None:
        cmd = run.cmd
        run.started = True
        self.on_runs_changed()
        token = current_run.set(call.ctx)
        try:
            self._emit(RunStarted(run_id=cmd.run_id, at=now(), edge_instance=self.instance))
            coroutine = call.fn(**call.kwargs)
            run.accepted.set()
            result = await coroutine
        except RunCancelled:
            await self._finish(run, "cancelled", state=call.ctx.state.to_dict())
        except Exception as exc:
            log.warning("run failed: %s: %s", type(exc).__name__, exc)
            await self._finish(
                run, "failed", error=_error_info(exc), state=call.ctx.state.to_dict()
            )
        else:
            await self._finish(
                run, "completed", result=_json_safe(result), state=call.ctx.state.to_dict()
            )
        finally:
            current_run.reset(token)

    async def _finish(
        self,
        run: ActiveRun,
        outcome: RunOutcome,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        state: dict[str, Any],
    ) -> None:
        # The keeper stops before the run is reported finished: from then on the scheduler
        # releases the leases, and that is no lease lost.
        if run.keeper is not None:
            await run.keeper.stop()
        event = RunFinished(
            run_id=run.run_id,
            at=now(),
            edge_instance=self.instance,
            outcome=outcome,
            result=result,
            error=error,
            final_state=state,
            asset_states=self._asset_states(run),
        )
        # Through the same queue as the run's other events, so it is published after them. The
        # id is this process's: a second process handed the same run reports separately (the
        # scheduler heeds the one executing it), and is not de-duplicated against it.
        self.outbox.emit(event, msg_id=f"finished:{run.run_id}:{self.instance}")

    def _asset_states(self, run: ActiveRun) -> dict[str, Any]:
        try:
            return self.workcell.snapshot([b.asset_name for b in run.cmd.bindings])
        except Exception:
            # The run's outcome matters more than its assets' states: report it regardless.
            log.exception("could not snapshot the assets of run %s", run.run_id)
            return {}

    def _emit(self, event: Event) -> int:
        return self.outbox.emit(event)

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
    ) -> None:
        self.fn = fn
        self.kwargs = kwargs
        self.keeper = keeper
        self.ctx = ctx


def _checkpoint(run: ActiveRun, keeper: LeaseKeeper) -> Callable[[], Awaitable[None]]:
    """The run's check at every protocol-function boundary: noted for the heartbeat, fenced."""

    async def checkpoint() -> None:
        run.last_checkpoint_at = now()
        await keeper.check()

    return checkpoint


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _error_info(exc: BaseException) -> ErrorInfo:
    code = exc.code.value if isinstance(exc, PraxisError) else None
    message = exc.message if isinstance(exc, PraxisError) else str(exc)
    return ErrorInfo(
        type=type(exc).__name__,
        message=message or type(exc).__name__,
        code=code,
        traceback="".join(traceback.format_exception(exc))[-4000:],
    )


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=repr))
