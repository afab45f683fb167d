"""Runs one protocol on this workcell: fence, load, inject, call, report.

The orchestrator never touches the database: it learns what to run from ``ExecuteRun`` and reports
through events. Each run is a task on the one event loop that owns the live PyLabRobot objects.
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
from typing import Any

from praxis_contracts.base import Event
from praxis_contracts.common import ErrorInfo
from praxis_contracts.errors import LeaseLost, PraxisError
from praxis_contracts.runs import (
    ControlRunExecution,
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
from praxis_orchestrator.workcell import WorkcellHost
from praxis_plr.types import unwrap_optional
from praxis_runtime.leases import LeaseStore
from praxis_runtime.logging import log_context
from praxis_runtime.recent import RecentIds
from praxis_sdk.context import CallRecord, RunCancelled, RunContext, RunControl, current_run
from praxis_sdk.decorators import validate_parameters
from praxis_sdk.state import PraxisState

log = logging.getLogger(__name__)

Publish = Callable[..., Awaitable[object]]


def now() -> datetime:
    return datetime.now(UTC)


class EventSink:
    """Publishes each protocol-function call record as an event."""

    def __init__(self, publish: Publish) -> None:
        self.publish = publish

    async def record(self, call: CallRecord) -> None:
        await self.publish(FunctionCallRecorded(**call.__dict__))


class Executor:
    def __init__(
        self, workcell: WorkcellHost, code: CodeCache, leases: LeaseStore, publish: Publish
    ) -> None:
        self.workcell = workcell
        self.code = code
        self.leases = leases
        self.publish = publish
        self.active: dict[uuid.UUID, tuple[asyncio.Task[None], RunContext]] = {}
        self.seen = RecentIds()  # redelivered ExecuteRun commands are ignored
        self.cancelled_early = RecentIds()  # cancels that overtook their ExecuteRun

    async def accept(self, cmd: ExecuteRun) -> None:
        """Prepare the run and start it; returns once the protocol function has been called."""
        if cmd.run_id in self.seen:
            log.info("run %s already accepted; ignoring redelivery", cmd.run_id)
            return
        self.seen.add(cmd.run_id)
        with log_context(run_id=cmd.run_id):
            if cmd.run_id in self.cancelled_early:
                await self._finish(cmd, "cancelled", state=cmd.initial_state)
                return
            await self._emit(RunPreparing(run_id=cmd.run_id, at=now()))
            try:
                call = await self._prepare(cmd)
            except Exception as exc:
                await self._finish(cmd, "failed", error=_error_info(exc), state={})
                return
            started = asyncio.Event()
            ctx = call.ctx
            task = asyncio.create_task(self._run(cmd, call, started))
            self.active[cmd.run_id] = (task, ctx)
            task.add_done_callback(lambda _: self.active.pop(cmd.run_id, None))
            await started.wait()

    async def _prepare(self, cmd: ExecuteRun) -> PreparedCall:
        live = await self.workcell.ensure([b.asset_name for b in cmd.bindings])
        keeper = LeaseKeeper(self.leases, cmd.run_id, cmd.bindings, await self.check_fence(cmd))
        fn = await self.code.function(cmd.definition)
        kwargs: dict[str, Any] = validate_parameters(fn, cmd.parameters)
        for binding in cmd.bindings:
            kwargs[binding.requirement] = live.get(binding.asset_name)
        ctx = RunContext(
            run_id=cmd.run_id,
            state=PraxisState(cmd.initial_state),
            sink=EventSink(self._emit),
            control=RunControl(
                on_pause=lambda: self._emit(RunPaused(run_id=cmd.run_id, at=now())),
                on_resume=lambda: self._emit(RunResumed(run_id=cmd.run_id, at=now())),
            ),
            on_checkpoint=keeper.check,
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

    async def _run(self, cmd: ExecuteRun, call: PreparedCall, started: asyncio.Event) -> None:
        with log_context(run_id=cmd.run_id):
            token = current_run.set(call.ctx)
            call.keeper.start()
            try:
                await self._emit(RunStarted(run_id=cmd.run_id, at=now()))
                coroutine = call.fn(**call.kwargs)
                started.set()
                result = await coroutine
            # The keeper stops before the run is reported finished: from then on the scheduler
            # releases the leases, and that is no lease lost.
            except RunCancelled:
                await call.keeper.stop()
                await self._finish(cmd, "cancelled", state=call.ctx.state.to_dict())
            except Exception as exc:
                log.warning("run failed: %s: %s", type(exc).__name__, exc)
                await call.keeper.stop()
                await self._finish(
                    cmd, "failed", error=_error_info(exc), state=call.ctx.state.to_dict()
                )
            else:
                await call.keeper.stop()
                await self._finish(
                    cmd, "completed", result=_json_safe(result), state=call.ctx.state.to_dict()
                )
            finally:
                started.set()
                current_run.reset(token)
                await call.keeper.stop()  # again, for a failure before the run began

    async def _finish(
        self,
        cmd: ExecuteRun,
        outcome: RunOutcome,
        *,
        result: Any = None,
        error: ErrorInfo | None = None,
        state: dict[str, Any],
    ) -> None:
        names = [b.asset_name for b in cmd.bindings]
        event = RunFinished(
            run_id=cmd.run_id,
            at=now(),
            outcome=outcome,
            result=result,
            error=error,
            final_state=state,
            asset_states=self.workcell.snapshot(names),
        )
        await self.publish(event, msg_id=f"finished:{cmd.run_id}")

    async def _emit(self, event: Event) -> None:
        await self.publish(event)

    async def control(self, cmd: ControlRunExecution) -> None:
        """Apply an operator action; a cancel may arrive before the run itself."""
        active = self.active.get(cmd.run_id)
        if active is None:
            if cmd.action == "cancel" and cmd.run_id not in self.seen:
                self.cancelled_early.add(cmd.run_id)
            log.info("run %s is not executing here; %s noted", cmd.run_id, cmd.action)
            return
        control = active[1].control
        if cmd.action == "pause":
            control.pause()
        elif cmd.action == "cancel":
            control.cancel()
        else:
            was_waiting = control.blocked
            control.resume()
            if not was_waiting:  # paused before any checkpoint was reached: nothing waited
                await self._emit(RunResumed(run_id=cmd.run_id, at=now()))

    async def drain(self, timeout: float) -> None:
        """On shutdown: let running protocols finish, cancel what is left after ``timeout``."""
        tasks = [task for task, _ in self.active.values()]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


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
