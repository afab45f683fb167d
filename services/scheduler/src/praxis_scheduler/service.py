"""Scheduler service layer: owns the run record; every change is one unit of work.

Each method opens a unit of work, changes the run through the pure rules of ``domain``, and emits
what the change causes (status events, commands); the outbox publishes them after the commit.
Every event handler is idempotent: a message delivered twice, or late, changes nothing the
second time.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from praxis_contracts.assets import (
    AssetBinding,
    AssetsReserved,
    HoldAssets,
    LeaseExpired,
    ReleaseAssets,
    ReservationWaiting,
    ReserveAssets,
)
from praxis_contracts.common import ErrorInfo, RunStatus
from praxis_contracts.errors import InvalidRequest, InvalidTransition, NotFound
from praxis_contracts.protocols import ProtocolDefinition, ResolvedProtocol
from praxis_contracts.runs import (
    ControlRun,
    ControlRunExecution,
    ExecuteRun,
    ExecutionAction,
    FunctionCallRecorded,
    RunEventRefused,
    RunFinished,
    RunHandedBack,
    RunLogged,
    RunStatusChanged,
    RunView,
    SubmitRun,
)
from praxis_contracts.state import OnFailure
from praxis_scheduler.domain import (
    EXECUTING,
    RESERVED_REASON,
    SUBMITTED_REASON,
    allowed,
    can_transition,
    cancel_target,
    finished_reason,
    refusal,
)
from praxis_scheduler.edges import Lost
from praxis_scheduler.orm import RunRow, StatusHistoryRow
from praxis_scheduler.repository import SchedulerUnitOfWork

log = logging.getLogger(__name__)

S = RunStatus


class Edges(Protocol):
    """What the scheduler knows of the edges (``edges.EdgeBook``)."""

    def is_live(self, instance: str | None) -> bool: ...


class Statements(Protocol):
    """The usual changes of a run in one statement each (``statements.RunStatements``); each
    returns False where the general path must decide."""

    async def reserve(self, event: AssetsReserved, now: datetime) -> bool: ...

    async def create(
        self, row: RunRow, reason: str, actor: str | None, now: datetime, reserve: ReserveAssets
    ) -> None: ...

    async def advance(
        self,
        run_id: uuid.UUID,
        status: RunStatus,
        at: datetime,
        workcell: str,
        edge: str,
        now: datetime,
    ) -> bool: ...

    async def finish(self, event: RunFinished, now: datetime) -> bool: ...


class RunService:
    def __init__(
        self,
        uow: Callable[[], SchedulerUnitOfWork],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        statements: Statements | None = None,
    ) -> None:
        self.uow = uow
        self.clock = clock
        self.statements = statements
        """Makes a submission, a grant, a progress report or a run's end in one statement where
        it can decide; what it leaves (a refusal, a repeated grant, a retry) goes through the
        unit of work (None: the unit of work for everything)."""

    # -- submission ---------------------------------------------------------------------------
    async def create(
        self, cmd: SubmitRun, resolved: ResolvedProtocol, *, retry_of: uuid.UUID | None = None
    ) -> RunView:
        definition = resolved.definition
        now = self.clock()
        if cmd.deadline is not None and cmd.deadline <= now:
            raise InvalidRequest(
                f"deadline {cmd.deadline.isoformat()} has passed", field="deadline"
            )
        row = RunRow(
            accession_id=uuid.uuid4(),
            protocol_name=definition.spec.name,
            protocol_version=definition.spec.version,
            definition_id=definition.accession_id,
            source_commit=definition.commit,
            definition=definition.model_dump(mode="json"),
            status=S.QUEUED,
            parameters=resolved.parameters,
            initial_state=cmd.initial_state,
            workcell=cmd.workcell,
            pins=cmd.assets,
            asset_properties=cmd.asset_properties,
            priority=cmd.priority,
            on_failure=cmd.on_failure,
            mode=cmd.mode,
            not_before=cmd.not_before,
            deadline=cmd.deadline,
            bindings=[],
            retry_of=retry_of,
            submitted_by=cmd.actor,
            created_at=now,
            updated_at=now,
        )
        reserve = _reserve_command(row)
        if retry_of is None and self.statements is not None:
            await self.statements.create(row, SUBMITTED_REASON, cmd.actor, now, reserve)
            return run_view(row)
        async with self.uow() as uow:
            uow.runs.add(row)
            reason = f"retry of run {retry_of}" if retry_of else SUBMITTED_REASON
            self._history(uow, row, S.QUEUED, None, reason, cmd.actor)
            if retry_of is not None:
                original = await uow.runs.get(retry_of, lock=True)
                if original is not None:
                    original.retried_by = row.accession_id
            uow.emit(reserve, msg_id=f"reserve:{row.accession_id}")
        return run_view(row)

    # -- events -------------------------------------------------------------------------------
    async def on_reserved(self, event: AssetsReserved) -> None:
        """A grant. Repeated for a run that already has it: nothing to do. For a run that has
        ended: given back. For a run this scheduler does not know (another client's hold):
        not ours to touch."""
        if self.statements is not None and await self.statements.reserve(event, self.clock()):
            return
        async with self.uow() as uow:
            row = await uow.runs.get(event.run_id, lock=True)
            if row is None:
                log.info("grant for run %s, which is not ours: left alone", event.run_id)
                return
            status = S(row.status)
            if status.is_terminal:
                uow.emit(ReleaseAssets(run_id=row.accession_id, reason=f"run is {status}"))
                return
            if status != S.QUEUED:
                if _assets(row.bindings) != {b.asset_id for b in event.bindings}:
                    log.warning("run %s: a second, different grant ignored", row.accession_id)
                return  # the same grant again (a redelivery or a re-announcement)
            self._advance(uow, row, S.PENDING, RESERVED_REASON)
            row.waiting_for = row.waiting_since = None
            row.workcell_id = event.workcell_id
            row.workcell_name = event.workcell_name
            row.bindings = [b.model_dump(mode="json") for b in event.bindings]
            uow.emit(_execute_command(row), msg_id=f"execute:{row.accession_id}")

    async def on_waiting(self, event: ReservationWaiting) -> None:
        """Why a queued run is not placed yet, kept on the run (shown in its view). A late
        copy after the grant changes nothing: only a queued run waits."""
        async with self.uow() as uow:
            row = await uow.runs.get(event.run_id, lock=True)
            if row is None or row.status != S.QUEUED or row.waiting_for == event.reason:
                return
            row.waiting_for = str(event.reason)
            row.waiting_since = self.clock()
            row.updated_at = row.waiting_since

    async def on_handed_back(self, event: RunHandedBack) -> None:
        """The edge process stopping (an upgrade) gave back a run it never started: the run is
        no longer that process's, so the process's end does not take the run down with it; the
        workcell's next orchestrator takes its command."""
        async with self.uow() as uow:
            row = await uow.runs.get(event.run_id, lock=True)
            if row is None or S(row.status) not in (S.PENDING, S.PREPARING):
                return
            if row.edge_instance not in (None, event.edge_instance):
                return  # another process took it over already
            if not self._believed(
                uow, row, "RunHandedBack", event.workcell, event.edge_instance, seen=str(event.at)
            ):
                return
            row.edge_instance = None
            row.updated_at = self.clock()
            log.info(
                "run %s handed back by %s: %s", row.accession_id, event.edge_instance, event.reason
            )

    async def on_progress(
        self, run_id: uuid.UUID, status: RunStatus, at: datetime, workcell: str, edge: str
    ) -> None:
        """The edge reports preparing, running, paused or resumed."""
        if self.statements is not None and await self.statements.advance(
            run_id, status, at, workcell, edge, self.clock()
        ):
            return
        async with self.uow() as uow:
            row = await uow.runs.get(run_id, lock=True)
            believed = row is not None and self._believed(
                uow, row, type_of(status), workcell, edge, status, seen=at.isoformat()
            )
            if row is None or not believed:
                return
            if row.status in (S.PENDING, S.PREPARING):
                # The process that prepares it, and finally the one that starts it (of two
                # handed the same command, only the lease claim's winner starts it).
                row.edge_instance = edge
            if status == S.RUNNING and row.started_at is None:
                row.started_at = at
            self._advance(uow, row, status, "reported by orchestrator")

    async def on_failed_before_start(self, run_id: uuid.UUID, error: ErrorInfo) -> None:
        async with self.uow() as uow:
            row = await uow.runs.get(run_id, lock=True)
            if row is None:
                return
            if self._advance(uow, row, S.FAILED, error.message):
                row.error = error.model_dump(mode="json")
                row.finished_at = self.clock()

    async def on_finished(self, event: RunFinished) -> None:
        status = S(event.outcome)
        if self.statements is not None and await self.statements.finish(event, self.clock()):
            return
        async with self.uow() as uow:
            row = await uow.runs.get(event.run_id, lock=True)
            if row is None or not self._believed(
                uow,
                row,
                "RunFinished",
                event.workcell,
                event.edge_instance,
                status,
                seen=event.at.isoformat(),
            ):
                return
            # What the edge did to leave the machines safe goes in the history too.
            reason = finished_reason(
                status, event.error.message if event.error else None, event.cleanup
            )
            if not self._advance(uow, row, status, reason):
                return
            row.result = event.result
            row.error = event.error.model_dump(mode="json") if event.error else None
            row.final_state = event.final_state
            row.asset_states = event.asset_states
            if status == S.REQUIRES_INTERVENTION:
                # The edge gave the run up with its instruments in an unknown state: the
                # leases are kept for an operator, as for a lost edge.
                uow.emit(
                    HoldAssets(run_id=event.run_id, reason=reason), msg_id=f"hold:{event.run_id}"
                )
                return
            row.finished_at = event.at
            uow.emit(
                ReleaseAssets(
                    run_id=event.run_id,
                    reason=f"run {status}",
                    workcell=event.workcell,
                    snapshot_id=event.snapshot_id,
                ),
                msg_id=f"release:{event.run_id}",
            )

    def _believed(
        self,
        uow: SchedulerUnitOfWork,
        row: RunRow,
        event: str,
        workcell: str,
        edge: str,
        reported: RunStatus | None = None,
        *,
        seen: str,
    ) -> bool:
        """Whether an event about the run comes from the edge running it (``domain.refusal``);
        one that does not is refused, and recorded as a security event, never applied (once
        per refused message: ``seen`` tells it from another, redeliveries are de-duplicated)."""
        why = refusal(S(row.status), row.workcell_name, row.edge_instance, workcell, edge, reported)
        if why is None:
            return True
        log.warning("run %s: %s refused: %s", row.accession_id, event, why)
        uow.emit(
            RunEventRefused(
                run_id=row.accession_id,
                event=event,
                workcell=workcell,
                edge_instance=edge,
                run_workcell=row.workcell_name,
                run_edge_instance=row.edge_instance,
                reason=why,
                at=self.clock(),
            ),
            msg_id=f"refused:{row.accession_id}:{event}:{workcell}:{edge}:{seen}"[:250],
        )
        return False

    async def refuse_report(
        self, event: FunctionCallRecorded | RunLogged, kind: str, seen: str
    ) -> None:
        """A call record or log batch the scheduler did not believe (see ``_believed``): the
        security event."""
        async with self.uow() as uow:
            row = await uow.runs.get(event.run_id)
            if row is not None:
                self._believed(uow, row, kind, event.workcell, event.edge_instance, seen=seen)

    # -- operators ----------------------------------------------------------------------------
    async def control(self, cmd: ControlRun, edges: Edges) -> RunView:
        """Validate an operator action against the run's state and carry it out."""
        async with self.uow() as uow:
            row = await uow.runs.get(cmd.run_id, lock=True)
            if row is None:
                raise NotFound(f"protocol run {cmd.run_id} not found", run_id=str(cmd.run_id))
            current = S(row.status)
            if not allowed(cmd.action, current):
                raise InvalidTransition(
                    f"cannot {cmd.action} a run that is {current}", status=current.value
                )
            reason = cmd.reason or f"{cmd.action} requested"
            actor = cmd.actor
            if cmd.action == "pause":
                self._advance(uow, row, S.PAUSING, reason, actor)
                self._forward(uow, row, "pause")
            elif cmd.action == "resume":
                self._advance(uow, row, S.RESUMING, reason, actor)
                self._forward(uow, row, "resume")
            elif cmd.action == "cancel":
                self._cancel(uow, row, reason, edges.is_live(row.edge_instance), actor)
            elif cmd.action == "resolve":
                assert cmd.outcome is not None
                why = f"resolved by an operator: {reason}"
                self._end(uow, row, S(cmd.outcome), why, actor)
            else:
                raise AssertionError("retry is not a change of this run")
            return run_view(row)

    def _cancel(
        self,
        uow: SchedulerUnitOfWork,
        row: RunRow,
        reason: str,
        edge_live: bool,
        actor: str | None = None,
    ) -> None:
        target = cancel_target(S(row.status), edge_live)
        if target == S.CANCELING:
            self._advance(uow, row, S.CANCELING, reason, actor)
            self._forward(uow, row, "cancel")
            return
        why = reason if S(row.status) == S.QUEUED else f"{reason} (no edge has the run)"
        self._forward(uow, row, "cancel")  # an edge that takes it later ends it at once
        self._end(uow, row, S.CANCELLED, why, actor)

    def _end(
        self,
        uow: SchedulerUnitOfWork,
        row: RunRow,
        status: RunStatus,
        reason: str,
        actor: str | None = None,
    ) -> None:
        """The scheduler ends the run itself; its leases (or waiting request) go."""
        if not self._advance(uow, row, status, reason, actor):
            return
        row.finished_at = self.clock()
        if status == S.FAILED and row.error is None:
            row.error = ErrorInfo(type="RunResolved", message=reason).model_dump(mode="json")
        uow.emit(
            ReleaseAssets(run_id=row.accession_id, reason=reason),
            msg_id=f"release:{row.accession_id}",
        )

    def _forward(self, uow: SchedulerUnitOfWork, row: RunRow, action: ExecutionAction) -> None:
        if row.workcell_name is not None:
            uow.emit(
                ControlRunExecution(
                    run_id=row.accession_id,
                    workcell_name=row.workcell_name,
                    action=action,
                )
            )

    async def retry_source(self, run_id: uuid.UUID) -> tuple[RunView, SubmitRun]:
        """What a retry of the run resubmits (same definition, parameters, pins, priority),
        or the retry itself if there is one already."""
        async with self.uow() as uow:
            row = await uow.runs.get(run_id)
            if row is None:
                raise NotFound(f"protocol run {run_id} not found", run_id=str(run_id))
            if not allowed("retry", S(row.status)):
                raise InvalidTransition(
                    f"cannot retry a run that is {row.status}", status=str(row.status)
                )
            view = run_view(row)
        cmd = SubmitRun(
            definition_id=row.definition_id,
            parameters=row.parameters,
            workcell=row.workcell,
            assets=row.pins,
            asset_properties=row.asset_properties,
            initial_state=row.initial_state,
            priority=row.priority,
            on_failure=_on_failure(row),
        )
        return view, cmd

    # -- recovery -----------------------------------------------------------------------------
    async def edge_lost(self, lost: Lost) -> list[uuid.UUID]:
        """Every run the edge process had that has not ended needs an operator: its
        instruments are in an unknown state. Its leases are kept (without expiry). That is
        each run recorded on it, and each run its last heartbeat listed (a run whose
        ``RunPreparing`` never arrived is still ``pending`` here)."""
        async with self.uow() as uow:
            rows = [
                r
                for r in await uow.runs.active()
                if r.edge_instance == lost.instance or str(r.accession_id) in lost.runs
            ]
        marked = []
        for row in rows:
            if await self.needs_operator(row.accession_id, lost):
                marked.append(row.accession_id)
        return marked

    async def edge_replaced(self, workcell: str, live: set[str], lost: Lost) -> list[uuid.UUID]:
        """A new process serves ``workcell``: the runs of its processes that are not live
        (``live``) are lost now, without waiting for their grace period."""
        async with self.uow() as uow:
            rows = [
                r
                for r in await uow.runs.active()
                if r.workcell_name == workcell
                and S(r.status) in EXECUTING
                and r.edge_instance is not None  # none: handed back, waiting for this edge
                and r.edge_instance not in live
            ]
        marked = []
        for row in rows:
            if await self.needs_operator(row.accession_id, lost, any_edge=True):
                marked.append(row.accession_id)
        return marked

    async def needs_operator(
        self, run_id: uuid.UUID, lost: Lost, *, any_edge: bool = False
    ) -> bool:
        async with self.uow() as uow:
            row = await uow.runs.get(run_id, lock=True)
            if row is None:
                return False
            listed = str(run_id) in lost.runs and row.edge_instance in (None, lost.instance)
            if S(row.status) not in EXECUTING and not (listed and row.status == S.PENDING):
                return False
            if not any_edge and row.edge_instance != lost.instance and not listed:
                return False
            seen = lost.runs.get(str(run_id))
            last_call = (seen.last_call if seen else None) or await uow.runs.last_call(run_id)
            reason = _intervention_reason(row, lost, last_call, seen.phase if seen else None)
            self._advance(uow, row, S.REQUIRES_INTERVENTION, reason)
            row.error = ErrorInfo(type="EdgeLost", message=reason, code="edge_lost").model_dump(
                mode="json"
            )
            uow.emit(HoldAssets(run_id=run_id, reason=reason), msg_id=f"hold:{run_id}")
            return True

    async def lease_lapsed(self, event: LeaseExpired) -> bool:
        """A lease its edge had claimed ran out: the edge stopped renewing, so the run's state
        is unknown. The asset-manager held the lease; the run needs an operator (every lease of
        it is held too). Whether the run was moved now (not if it had ended or was moved)."""
        if not event.held or event.run_id is None:
            return False  # an unclaimed lease freed its asset: no edge had the run
        async with self.uow() as uow:
            row = await uow.runs.get(event.run_id, lock=True)
            if row is None or S(row.status).is_terminal:
                return False
            if row.status == S.REQUIRES_INTERVENTION:
                return False
            edge = event.edge_instance or row.edge_instance or "unknown"
            reason = (
                f"lease {event.lease_key} ran out on edge {edge} while the run was {row.status} "
                "(the edge stopped renewing it); leases kept until an operator resolves the run"
            )
            self._advance(uow, row, S.REQUIRES_INTERVENTION, reason)
            row.error = ErrorInfo(
                type="LeaseLapsed", message=reason, code="lease_lapsed"
            ).model_dump(mode="json")
            uow.emit(HoldAssets(run_id=event.run_id, reason=reason), msg_id=f"hold:{event.run_id}")
            return True

    async def cancel_overdue(self, run_id: uuid.UUID, edges: Edges, seconds: float) -> None:
        """A cancel the edge has not confirmed in time: a run its edge still has is stuck
        there and needs an operator; one its edge does not have is cancelled here."""
        async with self.uow() as uow:
            row = await uow.runs.get(run_id, lock=True)
            if row is None or row.status != S.CANCELING:
                return
            if edges.is_live(row.edge_instance):
                reason = f"cancel not confirmed by the edge within {seconds:.0f} s"
                self._advance(uow, row, S.REQUIRES_INTERVENTION, reason)
                uow.emit(HoldAssets(run_id=run_id, reason=reason), msg_id=f"hold:{run_id}")
            else:
                self._end(uow, row, S.CANCELLED, "cancelled: the edge no longer has the run")

    async def active(self) -> list[RunView]:
        async with self.uow() as uow:
            return [run_view(r) for r in await uow.runs.active()]

    async def redrive(self) -> int:
        """At start-up: ask again for the assets of every queued run (idempotent at the
        asset-manager: a waiting request stays, a granted one is announced again), and keep
        holding the leases of every run that needs an operator."""
        count = 0
        async with self.uow() as uow:
            for row in await uow.runs.active():
                if row.status == S.QUEUED:
                    uow.emit(
                        _reserve_command(row),
                        msg_id=f"reserve:{row.accession_id}:{uuid.uuid4().hex[:8]}",
                    )
                    count += 1
                elif row.status == S.REQUIRES_INTERVENTION:
                    uow.emit(
                        HoldAssets(run_id=row.accession_id, reason="still requires intervention")
                    )
        return count

    # -- queries ------------------------------------------------------------------------------
    async def get(self, run_id: uuid.UUID) -> RunView:
        async with self.uow() as uow:
            row = await uow.runs.get(run_id)
            if row is None:
                raise NotFound(f"protocol run {run_id} not found", run_id=str(run_id))
            return run_view(row)

    # -- helpers ------------------------------------------------------------------------------
    def _advance(
        self,
        uow: SchedulerUnitOfWork,
        row: RunRow,
        status: RunStatus,
        reason: str,
        actor: str | None = None,
    ) -> bool:
        """Move the run to ``status`` if the state machine allows it; ``actor`` is the
        principal whose request caused it (None: the system or an edge)."""
        current = S(row.status)
        if not can_transition(current, status):
            log.info("run %s: ignoring %s -> %s", row.accession_id, current, status)
            return False
        self._history(uow, row, status, current, reason, actor)
        row.status = status
        row.updated_at = self.clock()
        return True

    def _history(
        self,
        uow: SchedulerUnitOfWork,
        row: RunRow,
        status: RunStatus,
        previous: RunStatus | None,
        reason: str,
        actor: str | None = None,
    ) -> None:
        at = self.clock()
        change = {"status": status, "previous": previous, "reason": reason, "at": at}
        uow.runs.record(StatusHistoryRow(run_id=row.accession_id, actor=actor, **change))
        uow.emit(RunStatusChanged(run_id=row.accession_id, actor=actor, **change))


_EVENT_OF = {
    S.PREPARING: "RunPreparing",
    S.RUNNING: "RunStarted",
    S.PAUSED: "RunPaused",
}


def type_of(status: RunStatus) -> str:
    """The edge event that reports ``status`` (for the security record)."""
    return _EVENT_OF.get(status, f"progress {status}")


def _assets(bindings: list[dict[str, object]]) -> set[uuid.UUID]:
    return {uuid.UUID(str(b["asset_id"])) for b in bindings}


def _intervention_reason(row: RunRow, lost: Lost, last_call: str | None, phase: str | None) -> str:
    edge = row.edge_instance or "unknown"
    parts = [f"edge {edge} lost: {lost.reason}", f"run was {row.status}"]
    if phase:
        parts.append(f"its edge last reported it {phase}")
    if last_call:
        parts.append(f"last call {last_call}")
    parts.append("leases kept until an operator resolves the run")
    return "; ".join(parts)


def _reserve_command(row: RunRow) -> ReserveAssets:
    definition = ProtocolDefinition.model_validate(row.definition)
    return ReserveAssets(
        run_id=row.accession_id,
        requirements=definition.spec.assets,
        workcell=row.workcell,
        pins=row.pins,
        properties=row.asset_properties,
        priority=row.priority,
        immediate=row.mode == "immediate",
        not_before=row.not_before,
        deadline=row.deadline,
    )


def _execute_command(row: RunRow) -> ExecuteRun:
    assert row.workcell_id is not None and row.workcell_name is not None
    return ExecuteRun(
        run_id=row.accession_id,
        workcell_id=row.workcell_id,
        workcell_name=row.workcell_name,
        definition=ProtocolDefinition.model_validate(row.definition),
        parameters=row.parameters,
        bindings=[AssetBinding.model_validate(b) for b in row.bindings],
        initial_state=row.initial_state,
        on_failure=_on_failure(row),
    )


def _on_failure(row: RunRow) -> OnFailure:
    return "rollback" if row.on_failure == "rollback" else "keep"


def run_view(row: RunRow) -> RunView:
    return RunView(
        accession_id=row.accession_id,
        protocol_name=row.protocol_name,
        protocol_version=row.protocol_version,
        definition_id=row.definition_id,
        source_commit=row.source_commit,
        status=S(row.status),
        parameters=row.parameters,
        workcell=row.workcell,
        workcell_id=row.workcell_id,
        workcell_name=row.workcell_name,
        bindings=[AssetBinding.model_validate(b) for b in row.bindings],
        priority=row.priority,
        on_failure=_on_failure(row),
        result=row.result,
        error=ErrorInfo.model_validate(row.error) if row.error else None,
        final_state=row.final_state,
        asset_states=row.asset_states,
        edge_instance=row.edge_instance,
        waiting_for=row.waiting_for,
        waiting_since=row.waiting_since,
        mode="immediate" if row.mode == "immediate" else "queued",
        not_before=row.not_before,
        deadline=row.deadline,
        retry_of=row.retry_of,
        retried_by=row.retried_by,
        submitted_by=row.submitted_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
