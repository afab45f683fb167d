"""Recovery at start-up and while serving: lost edges, overdue cancels, stranded runs.

Every decision lands in the run's status history with its reason (the service layer writes it).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.js.kv import KeyValue

from praxis_contracts.common import RunStatus
from praxis_contracts.runs import EdgeHeartbeat
from praxis_scheduler.domain import EXECUTING
from praxis_scheduler.edges import EdgeBook, EdgeMonitor, Lost
from praxis_scheduler.service import RunService

log = logging.getLogger(__name__)


class CancelWatch:
    """A cancel the edge must confirm within ``seconds``; a timer per canceling run."""

    def __init__(self, runs: RunService, edges: EdgeBook, seconds: float) -> None:
        self.runs = runs
        self.edges = edges
        self.seconds = seconds
        self._timers: dict[uuid.UUID, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def arm(self, run_id: uuid.UUID, after: float | None = None) -> None:
        if (old := self._timers.pop(run_id, None)) is not None:
            old.cancel()
        delay = self.seconds if after is None else max(0.0, after)
        self._timers[run_id] = asyncio.get_running_loop().call_later(delay, self._due, run_id)

    def _due(self, run_id: uuid.UUID) -> None:
        self._timers.pop(run_id, None)
        task = asyncio.ensure_future(self._overdue(run_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _overdue(self, run_id: uuid.UUID) -> None:
        try:
            await self.runs.cancel_overdue(run_id, self.edges, self.seconds)
        except Exception:
            log.exception("run %s: overdue cancel not recorded; retrying", run_id)
            self.arm(run_id, after=1.0)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Recovery:
    """Wires the edge monitor to the service layer and reconciles runs at start-up."""

    def __init__(
        self,
        runs: RunService,
        book: EdgeBook,
        bucket: Callable[[], Awaitable[KeyValue]],
        cancels: CancelWatch,
    ) -> None:
        self.runs = runs
        self.monitor = EdgeMonitor(book, bucket, self.on_lost, self.on_new)
        self.cancels = cancels

    async def on_lost(self, lost: Lost) -> None:
        marked = await self.runs.edge_lost(lost)
        if marked:
            log.warning("edge %s gone: %d runs need an operator", lost.instance, len(marked))

    async def on_new(self, heartbeat: EdgeHeartbeat) -> None:
        book = self.monitor.book
        lost = Lost(None, heartbeat.workcell, book.replaced(heartbeat.workcell, heartbeat.instance))
        marked = await self.runs.edge_replaced(
            heartbeat.workcell, book.live_on(heartbeat.workcell), lost
        )
        if marked:
            log.warning("%s restarted: %d runs need an operator", heartbeat.workcell, len(marked))

    async def reconcile(self) -> None:
        """After the edges' heartbeats have been read: every run an edge should have but no
        live edge has gets the grace period to show up; cancels get their remaining time;
        queued runs ask for their assets again."""
        now = datetime.now(UTC)
        for run in await self.runs.active():
            if run.status in EXECUTING and not self.monitor.book.is_live(run.edge_instance):
                self.monitor.suspect(run.edge_instance)
            if run.status == RunStatus.CANCELING:
                waited = (now - run.updated_at).total_seconds()
                self.cancels.arm(run.accession_id, after=self.cancels.seconds - waited)
        count = await self.runs.redrive()
        if count:
            log.info("asked again for the assets of %d queued runs", count)
