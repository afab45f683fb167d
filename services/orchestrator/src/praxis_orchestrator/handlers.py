"""Orchestrator handlers."""

from __future__ import annotations

from praxis_contracts.runs import ControlRunExecution, ExecuteRun
from praxis_contracts.state import WorkcellStateRestored
from praxis_orchestrator.executor import Executor
from praxis_runtime.bus import Handlers

ACCEPTING = 256
"""``ExecuteRun`` deliveries handled at once: every run the scheduler dispatches here is accepted
at once (listed, its leases claimed and renewed), then waits for one of the executor's
``MAX_CONCURRENT_RUNS`` slots; a delivery left unhandled would let its leases run out."""


def handlers_for(workcell: str) -> Handlers[Executor]:
    """Handlers bound to this orchestrator's workcell (its commands carry the name as key)."""
    group: Handlers[Executor] = Handlers()

    @group.consume(
        ExecuteRun, durable=f"orchestrator-{workcell}", key=workcell, max_workers=ACCEPTING
    )
    async def execute(cmd: ExecuteRun, executor: Executor) -> None:
        await executor.accept(cmd)

    @group.consume(ControlRunExecution, durable=f"orchestrator-control-{workcell}", key=workcell)
    async def control(cmd: ControlRunExecution, executor: Executor) -> None:
        await executor.control(cmd)

    @group.consume(WorkcellStateRestored, durable=f"orchestrator-state-{workcell}", key=workcell)
    async def restored(event: WorkcellStateRestored, executor: Executor) -> None:
        await executor.apply_restored(event)

    return group
