"""Scheduler handlers: each calls the service layer, then publishes what it committed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from praxis_contracts.assets import AssetsReserved, ReservationFailed
from praxis_contracts.common import ErrorInfo, RunStatus
from praxis_contracts.protocols import ResolveProtocol
from praxis_contracts.runs import (
    ControlRun,
    FunctionCallPage,
    FunctionCallRecorded,
    GetRun,
    ListRunCalls,
    ListRuns,
    RunFinished,
    RunPage,
    RunPaused,
    RunPreparing,
    RunResumed,
    RunStarted,
    RunView,
    SubmitRun,
)
from praxis_runtime.bus import Bus, Handlers
from praxis_scheduler.calls import CallLog
from praxis_scheduler.service import Outbox, RunService

WORKERS = 8


@dataclass(frozen=True)
class Deps:
    runs: RunService
    calls: CallLog
    bus: Bus

    async def flush(self, outbox: Outbox) -> None:
        """Publish what the committed transaction produced, in order (live streams rely on it)."""
        for message, msg_id in outbox.messages:
            await self.bus.publish(message, msg_id=msg_id)


handlers: Handlers[Deps] = Handlers()


@handlers.rpc(SubmitRun)
async def submit_run(cmd: SubmitRun, deps: Deps) -> RunView:
    resolved = await deps.bus.request(
        ResolveProtocol(
            protocol_name=cmd.protocol_name,
            version=cmd.version,
            definition_id=cmd.definition_id,
            parameters=cmd.parameters,
        )
    )
    outbox = Outbox()
    run = await deps.runs.create(cmd, resolved, outbox)
    await deps.flush(outbox)
    return run


@handlers.rpc(GetRun)
async def get_run(query: GetRun, deps: Deps) -> RunView:
    return await deps.runs.get(query.run_id)


@handlers.rpc(ListRuns)
async def list_runs(query: ListRuns, deps: Deps) -> RunPage:
    return await deps.runs.list(query)


@handlers.rpc(ControlRun)
async def control_run(cmd: ControlRun, deps: Deps) -> RunView:
    outbox = Outbox()
    run = await deps.runs.control(cmd, outbox)
    await deps.flush(outbox)
    return run


@handlers.rpc(ListRunCalls)
async def list_calls(query: ListRunCalls, deps: Deps) -> FunctionCallPage:
    await deps.runs.get(query.run_id)  # not_found for an unknown run
    return await deps.calls.list(query)


@handlers.consume(AssetsReserved, durable="scheduler-reserved", max_workers=WORKERS)
async def assets_reserved(event: AssetsReserved, deps: Deps) -> None:
    outbox = Outbox()
    await deps.runs.on_reserved(event, outbox)
    await deps.flush(outbox)


@handlers.consume(ReservationFailed, durable="scheduler-reservation-failed", max_workers=WORKERS)
async def reservation_failed(event: ReservationFailed, deps: Deps) -> None:
    outbox = Outbox()
    error = ErrorInfo(type="ReservationFailed", message=event.error.message, code=event.error.code)
    await deps.runs.on_failed_before_start(event.run_id, error, outbox)
    await deps.flush(outbox)


@handlers.consume(FunctionCallRecorded, durable="scheduler-calls", max_workers=WORKERS)
async def call_recorded(event: FunctionCallRecorded, deps: Deps) -> None:
    await deps.calls.record(event)


@handlers.consume(RunFinished, durable="scheduler-run-finished", max_workers=WORKERS)
async def run_finished(event: RunFinished, deps: Deps) -> None:
    outbox = Outbox()
    await deps.runs.on_finished(event, outbox)
    await deps.flush(outbox)


PROGRESS: dict[type[RunPreparing | RunStarted | RunPaused | RunResumed], RunStatus] = {
    RunPreparing: RunStatus.PREPARING,
    RunStarted: RunStatus.RUNNING,
    RunPaused: RunStatus.PAUSED,
    RunResumed: RunStatus.RUNNING,
}
"""What each orchestrator progress event means for the run's recorded status."""


def _progress(status: RunStatus) -> Any:
    async def on_progress(
        event: RunPreparing | RunStarted | RunPaused | RunResumed, deps: Deps
    ) -> None:
        outbox = Outbox()
        await deps.runs.on_progress(event.run_id, status, event.at, outbox)
        await deps.flush(outbox)

    return on_progress


for _event_type, _status in PROGRESS.items():
    _action = _event_type.subject.rsplit(".", 1)[1]
    handlers.consume(_event_type, durable=f"scheduler-run-{_action}", max_workers=WORKERS)(
        _progress(_status)
    )
