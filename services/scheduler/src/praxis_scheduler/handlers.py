"""Scheduler handlers: typed message in, one service-layer call, typed reply out.

What a change publishes is emitted inside its unit of work and published by the outbox relay.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from praxis_contracts.assets import (
    AssetsReserved,
    LeaseExpired,
    ReservationFailed,
    ReservationWaiting,
)
from praxis_contracts.common import ErrorInfo, RunStatus
from praxis_contracts.protocols import ResolveProtocol
from praxis_contracts.runs import (
    ControlRun,
    EdgeList,
    FunctionCallPage,
    FunctionCallRecorded,
    GetRun,
    ListEdges,
    ListRunCalls,
    ListRunLogs,
    ListRuns,
    RunFinished,
    RunHandedBack,
    RunLogged,
    RunLogPage,
    RunPage,
    RunPaused,
    RunPreparing,
    RunResumed,
    RunStarted,
    RunView,
    SubmitRun,
)
from praxis_runtime.bus import Bus, Handlers
from praxis_scheduler.admission import admit
from praxis_scheduler.calls import CallLog, RunLogs
from praxis_scheduler.edges import EdgeBook
from praxis_scheduler.queries import RunQueries
from praxis_scheduler.recovery import CancelWatch
from praxis_scheduler.service import RunService

WORKERS = 8


@dataclass(frozen=True)
class Deps:
    runs: RunService
    queries: RunQueries
    calls: CallLog
    logs: RunLogs
    bus: Bus
    edges: EdgeBook
    cancels: CancelWatch


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
    await admit(cmd, resolved, deps.bus)  # refused now rather than failed once created
    return await deps.runs.create(cmd, resolved)


@handlers.rpc(GetRun)
async def get_run(query: GetRun, deps: Deps) -> RunView:
    return await deps.runs.get(query.run_id)


@handlers.rpc(ListEdges)
async def list_edges(query: ListEdges, deps: Deps) -> EdgeList:
    return EdgeList(items=deps.edges.edges(query.workcell))


@handlers.rpc(ListRuns)
async def list_runs(query: ListRuns, deps: Deps) -> RunPage:
    return await deps.queries.list(query)


@handlers.rpc(ControlRun)
async def control_run(cmd: ControlRun, deps: Deps) -> RunView:
    if cmd.action == "retry":
        return await retry(cmd, deps)
    run = await deps.runs.control(cmd, deps.edges)
    if run.status == RunStatus.CANCELING:
        deps.cancels.arm(run.accession_id)
    return run


async def retry(cmd: ControlRun, deps: Deps) -> RunView:
    original, again = await deps.runs.retry_source(cmd.run_id)
    again = again.model_copy(update={"actor": cmd.actor})  # the retry is its asker's run
    if original.retried_by is not None:
        return await deps.runs.get(original.retried_by)  # asked twice: the same retry
    resolved = await deps.bus.request(
        ResolveProtocol(definition_id=again.definition_id, parameters=again.parameters)
    )
    await admit(again, resolved, deps.bus)  # e.g. a pinned asset deleted since
    return await deps.runs.create(again, resolved, retry_of=original.accession_id)


@handlers.rpc(ListRunCalls)
async def list_calls(query: ListRunCalls, deps: Deps) -> FunctionCallPage:
    await deps.runs.get(query.run_id)  # not_found for an unknown run
    return await deps.calls.list(query)


@handlers.rpc(ListRunLogs)
async def list_logs(query: ListRunLogs, deps: Deps) -> RunLogPage:
    await deps.runs.get(query.run_id)  # not_found for an unknown run
    return await deps.logs.list(query)


@handlers.consume(AssetsReserved, durable="scheduler-reserved", max_workers=WORKERS)
async def assets_reserved(event: AssetsReserved, deps: Deps) -> None:
    await deps.runs.on_reserved(event)


@handlers.consume(ReservationFailed, durable="scheduler-reservation-failed", max_workers=WORKERS)
async def reservation_failed(event: ReservationFailed, deps: Deps) -> None:
    error = ErrorInfo(
        type="ReservationFailed",
        message=event.error.message,
        code=event.error.code,
        details=event.error.details,
    )
    await deps.runs.on_failed_before_start(event.run_id, error)


@handlers.consume(ReservationWaiting, durable="scheduler-reservation-waiting", max_workers=WORKERS)
async def reservation_waiting(event: ReservationWaiting, deps: Deps) -> None:
    await deps.runs.on_waiting(event)


@handlers.consume(RunHandedBack, durable="scheduler-run-handed-back", max_workers=WORKERS)
async def run_handed_back(event: RunHandedBack, deps: Deps) -> None:
    await deps.runs.on_handed_back(event)


@handlers.consume(LeaseExpired, durable="scheduler-lease-expired", max_workers=WORKERS)
async def lease_expired(event: LeaseExpired, deps: Deps) -> None:
    await deps.runs.lease_lapsed(event)


@handlers.consume(FunctionCallRecorded, durable="scheduler-calls", max_workers=WORKERS)
async def call_recorded(event: FunctionCallRecorded, deps: Deps) -> None:
    refused = await deps.calls.record(event)
    if refused is not None:
        await deps.runs.refuse_report(
            event, "FunctionCallRecorded", f"{event.call_id}:{event.status}"
        )


@handlers.consume(RunLogged, durable="scheduler-run-logged", max_workers=WORKERS)
async def run_logged(event: RunLogged, deps: Deps) -> None:
    refused = await deps.logs.record(event)
    if refused is not None:
        await deps.runs.refuse_report(
            event, "RunLogged", f"lines {event.lines[0].seq}-{event.lines[-1].seq}"
        )


@handlers.consume(RunFinished, durable="scheduler-run-finished", max_workers=WORKERS)
async def run_finished(event: RunFinished, deps: Deps) -> None:
    await deps.runs.on_finished(event)


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
        await deps.runs.on_progress(
            event.run_id, status, event.at, event.workcell, event.edge_instance
        )

    return on_progress


for _event_type, _status in PROGRESS.items():
    _action = _event_type.subject.rsplit(".", 1)[1]
    handlers.consume(_event_type, durable=f"scheduler-run-{_action}", max_workers=WORKERS)(
        _progress(_status)
    )
