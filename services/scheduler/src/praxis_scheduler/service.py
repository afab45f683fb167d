"""Scheduler service layer: owns the run record; every change is one transaction."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from praxis_contracts.assets import AssetBinding, AssetsReserved, ReleaseAssets, ReserveAssets
from praxis_contracts.base import Command, Event
from praxis_contracts.common import ErrorInfo, RunStatus
from praxis_contracts.errors import InvalidTransition, NotFound
from praxis_contracts.protocols import ProtocolDefinition, ResolvedProtocol
from praxis_contracts.runs import (
    ControlRun,
    ControlRunExecution,
    ExecuteRun,
    ListRuns,
    RunAction,
    RunFinished,
    RunPage,
    RunStatusChanged,
    RunView,
    SubmitRun,
)
from praxis_runtime.db import Database
from praxis_runtime.query import apply_filters, fetch_page, where_all
from praxis_scheduler.domain import can_transition
from praxis_scheduler.orm import RunRow, StatusHistoryRow

log = logging.getLogger(__name__)


@dataclass
class Outbox:
    """Messages to publish once the transaction that produced them has committed."""

    messages: list[tuple[Command | Event, str | None]] = field(default_factory=list)

    def add(self, message: Command | Event, msg_id: str | None = None) -> None:
        self.messages.append((message, msg_id))


class RunService:
    def __init__(
        self, db: Database, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.db = db
        self.clock = clock

    async def create(self, cmd: SubmitRun, resolved: ResolvedProtocol, outbox: Outbox) -> RunView:
        definition = resolved.definition
        now = self.clock()
        row = RunRow(
            accession_id=uuid.uuid4(),
            protocol_name=definition.spec.name,
            protocol_version=definition.spec.version,
            definition_id=definition.accession_id,
            source_commit=definition.commit,
            definition=definition.model_dump(mode="json"),
            status=RunStatus.QUEUED,
            parameters=resolved.parameters,
            initial_state=cmd.initial_state,
            workcell=cmd.workcell,
            pins=cmd.assets,
            asset_properties=cmd.asset_properties,
            priority=cmd.priority,
            bindings=[],
            created_at=now,
            updated_at=now,
        )
        async with self.db.transaction() as session:
            session.add(row)
            self._history(session, row, RunStatus.QUEUED, None, "submitted", outbox)
        outbox.add(self._reserve_command(row), f"reserve:{row.accession_id}")
        return run_view(row)

    async def on_reserved(self, event: AssetsReserved, outbox: Outbox) -> None:
        async with self.db.transaction() as session:
            row = await self._locked(session, event.run_id)
            if not self._advance(session, row, RunStatus.PENDING, "assets reserved", outbox):
                outbox.add(ReleaseAssets(run_id=row.accession_id, reason=f"run is {row.status}"))
                return
            row.workcell_id = event.workcell_id
            row.workcell_name = event.workcell_name
            row.bindings = [b.model_dump(mode="json") for b in event.bindings]
            outbox.add(self._execute_command(row), f"execute:{row.accession_id}")

    async def on_progress(
        self, run_id: uuid.UUID, status: RunStatus, at: datetime, outbox: Outbox
    ) -> None:
        async with self.db.transaction() as session:
            row = await self._locked(session, run_id)
            if status == RunStatus.RUNNING and row.started_at is None:
                row.started_at = at
            self._advance(session, row, status, "reported by orchestrator", outbox)

    async def on_failed_before_start(
        self, run_id: uuid.UUID, error: ErrorInfo, outbox: Outbox
    ) -> None:
        async with self.db.transaction() as session:
            row = await self._locked(session, run_id)
            if self._advance(session, row, RunStatus.FAILED, error.message, outbox):
                row.error = error.model_dump(mode="json")
                row.finished_at = self.clock()

    async def on_finished(self, event: RunFinished, outbox: Outbox) -> None:
        status = RunStatus(event.outcome)
        async with self.db.transaction() as session:
            row = await self._locked(session, event.run_id)
            if not self._advance(
                session, row, status, event.error.message if event.error else "", outbox
            ):
                return
            row.result = event.result
            row.error = event.error.model_dump(mode="json") if event.error else None
            row.final_state = event.final_state
            row.asset_states = event.asset_states
            row.finished_at = event.at
        outbox.add(
            ReleaseAssets(run_id=event.run_id, reason=f"run {status}"), f"release:{event.run_id}"
        )

    async def control(self, cmd: ControlRun, outbox: Outbox) -> RunView:
        """Validate an operator action against the run's state and pass it to the edge."""
        async with self.db.transaction() as session:
            row = await self._locked(session, cmd.run_id)
            current = RunStatus(row.status)
            target = _control_target(cmd.action, current)
            reason = cmd.reason or f"{cmd.action} requested"
            self._advance(session, row, target, reason, outbox)
            if target == RunStatus.CANCELLED:  # never dispatched: withdraw the reservation
                row.finished_at = self.clock()
                outbox.add(ReleaseAssets(run_id=row.accession_id, reason="cancelled"))
            elif row.workcell_name is not None:
                outbox.add(
                    ControlRunExecution(
                        run_id=row.accession_id, workcell_name=row.workcell_name, action=cmd.action
                    )
                )
            return run_view(row)

    async def recover(self, outbox: Outbox) -> int:
        """Re-drive runs a crash may have stranded between commit and publish (idempotent)."""
        async with self.db.transaction() as session:
            rows = (
                await session.scalars(
                    select(RunRow).where(RunRow.status.in_([RunStatus.QUEUED, RunStatus.PENDING]))
                )
            ).all()
        for row in rows:
            if row.status == RunStatus.QUEUED:
                outbox.add(self._reserve_command(row), f"reserve:{row.accession_id}")
            else:
                outbox.add(self._execute_command(row), f"execute:{row.accession_id}")
        return len(rows)

    # -- queries ------------------------------------------------------------------------------
    async def get(self, run_id: uuid.UUID) -> RunView:
        async with self.db.transaction() as session:
            row = await session.get(RunRow, run_id)
            if row is None:
                raise NotFound(f"protocol run {run_id} not found", run_id=str(run_id))
            return run_view(row)

    async def list(self, query: ListRuns) -> RunPage:
        stmt = where_all(
            select(RunRow),
            RunRow.status.in_([s.value for s in query.status]) if query.status else None,
            RunRow.protocol_name == query.protocol_name if query.protocol_name else None,
        )
        stmt = apply_filters(
            stmt,
            query.filters,
            created_at=RunRow.created_at,
            sortable=_SORTABLE,
            relations={
                "protocol_run_accession_id": RunRow.accession_id,
                "workcell_accession_id": RunRow.workcell_id,
            },
        )
        async with self.db.transaction() as session:
            rows, total = await fetch_page(session, stmt, query.filters)
            items = [run_view(r) for r in rows]
        f = query.filters
        return RunPage(items=items, total=total, limit=f.limit, offset=f.offset)

    # -- helpers ------------------------------------------------------------------------------
    async def _locked(self, session: AsyncSession, run_id: uuid.UUID) -> RunRow:
        row = await session.get(RunRow, run_id, with_for_update=True)
        if row is None:
            raise NotFound(f"protocol run {run_id} not found", run_id=str(run_id))
        return row

    def _advance(
        self, session: AsyncSession, row: RunRow, status: RunStatus, reason: str, outbox: Outbox
    ) -> bool:
        current = RunStatus(row.status)
        if not can_transition(current, status):
            log.info("run %s: ignoring %s -> %s", row.accession_id, current, status)
            return False
        self._history(session, row, status, current, reason, outbox)
        row.status = status
        row.updated_at = self.clock()
        return True

    def _history(
        self,
        session: AsyncSession,
        row: RunRow,
        status: RunStatus,
        previous: RunStatus | None,
        reason: str,
        outbox: Outbox,
    ) -> None:
        at = self.clock()
        session.add(
            StatusHistoryRow(
                run_id=row.accession_id, status=status, previous=previous, reason=reason, at=at
            )
        )
        outbox.add(
            RunStatusChanged(
                run_id=row.accession_id, status=status, previous=previous, reason=reason, at=at
            )
        )

    def _reserve_command(self, row: RunRow) -> ReserveAssets:
        definition = ProtocolDefinition.model_validate(row.definition)
        return ReserveAssets(
            run_id=row.accession_id,
            requirements=definition.spec.assets,
            workcell=row.workcell,
            pins=row.pins,
            properties=row.asset_properties,
            priority=row.priority,
        )

    def _execute_command(self, row: RunRow) -> ExecuteRun:
        assert row.workcell_id is not None and row.workcell_name is not None
        return ExecuteRun(
            run_id=row.accession_id,
            workcell_id=row.workcell_id,
            workcell_name=row.workcell_name,
            definition=ProtocolDefinition.model_validate(row.definition),
            parameters=row.parameters,
            bindings=[AssetBinding.model_validate(b) for b in row.bindings],
            initial_state=row.initial_state,
        )


_CONTROL_FROM = {
    "pause": {RunStatus.RUNNING, RunStatus.RESUMING},
    "resume": {RunStatus.PAUSED, RunStatus.PAUSING},
    "cancel": {
        RunStatus.QUEUED,
        RunStatus.PENDING,
        RunStatus.PREPARING,
        RunStatus.RUNNING,
        RunStatus.PAUSING,
        RunStatus.PAUSED,
        RunStatus.RESUMING,
        RunStatus.REQUIRES_INTERVENTION,
    },
}


def _control_target(action: RunAction, current: RunStatus) -> RunStatus:
    if current not in _CONTROL_FROM[action]:
        raise InvalidTransition(f"cannot {action} a run that is {current}", status=current.value)
    if action == "pause":
        return RunStatus.PAUSING
    if action == "resume":
        return RunStatus.RESUMING
    return RunStatus.CANCELLED if current == RunStatus.QUEUED else RunStatus.CANCELING


_SORTABLE: dict[str, Any] = {
    "created_at": RunRow.created_at,
    "updated_at": RunRow.updated_at,
    "status": RunRow.status,
    "protocol_name": RunRow.protocol_name,
    "priority": RunRow.priority,
}


def run_view(row: RunRow) -> RunView:
    return RunView(
        accession_id=row.accession_id,
        protocol_name=row.protocol_name,
        protocol_version=row.protocol_version,
        definition_id=row.definition_id,
        source_commit=row.source_commit,
        status=RunStatus(row.status),
        parameters=row.parameters,
        workcell=row.workcell,
        workcell_id=row.workcell_id,
        workcell_name=row.workcell_name,
        bindings=[AssetBinding.model_validate(b) for b in row.bindings],
        priority=row.priority,
        result=row.result,
        error=ErrorInfo.model_validate(row.error) if row.error else None,
        final_state=row.final_state,
        asset_states=row.asset_states,
        created_at=row.created_at,
        updated_at=row.updated_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )
