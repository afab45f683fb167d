"""Edge liveness: which orchestrator processes are alive, and what to do when one is gone.

Each orchestrator writes its ``EdgeHeartbeat`` to its own key of the edges bucket with a TTL, a
few times per TTL. ``EdgeBook`` is the pure core: from the heartbeats and the clock it knows
which processes are live and when each one counts as gone (its last beat + its TTL + the grace
period, or the moment its key left the bucket + the grace period). ``EdgeMonitor`` is the shell:
it watches the bucket (pushed changes, no polling), keeps one timer per process at its deadline,
and reports a process that passed it. A process that beats again before its deadline was never
gone (a network blip); a new process of a workcell tells that the old one's runs are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from praxis_contracts.runs import EdgeHeartbeat, EdgeRun, EdgeView
from praxis_runtime.retry import until_done

log = logging.getLogger(__name__)

CONFIRM_RETRY_SECONDS = 1.0
"""When a lost-looking edge's key cannot be read (NATS down), ask again this much later."""

UNKNOWN = ""
"""The book's name for "no edge was ever recorded" (runs from before edges reported)."""


@dataclass(frozen=True)
class Lost:
    """An edge process that is gone, with what it last said about its runs."""

    instance: str | None
    workcell: str | None
    reason: str
    runs: dict[str, EdgeRun] = field(default_factory=dict)


@dataclass
class _Edge:
    instance: str
    heartbeat: EdgeHeartbeat | None
    present: bool  # its key is in the bucket
    deadline: float


class EdgeBook:
    """Live edge processes and their deadlines; times are a monotonic clock's seconds."""

    def __init__(self, grace_seconds: float) -> None:
        self.grace = grace_seconds
        self._edges: dict[str, _Edge] = {}

    def beat(self, heartbeat: EdgeHeartbeat, now: float) -> bool:
        """Record a heartbeat; True if this process was not known before."""
        new = heartbeat.instance not in self._edges
        self._edges[heartbeat.instance] = _Edge(
            heartbeat.instance, heartbeat, True, now + heartbeat.ttl_seconds + self.grace
        )
        return new

    def left(self, instance: str, now: float) -> None:
        """The process's key left the bucket (expired, or deleted at a clean stop)."""
        edge = self._edges.get(instance)
        if edge is None:
            return
        edge.present = False
        edge.deadline = min(edge.deadline, now + self.grace)

    def suspect(self, instance: str | None, now: float) -> None:
        """A run names a process that is not live: it is gone unless it beats within the
        grace period (used at start-up for runs whose edge did not show up)."""
        key = instance or UNKNOWN
        if key not in self._edges:
            self._edges[key] = _Edge(key, None, False, now + self.grace)

    def is_live(self, instance: str | None) -> bool:
        edge = self._edges.get(instance or UNKNOWN)
        return edge is not None and edge.present

    def has_run(self, instance: str | None, run_id: str) -> bool:
        edge = self._edges.get(instance or UNKNOWN)
        if edge is None or not edge.present or edge.heartbeat is None:
            return False
        return any(str(run.run_id) == run_id for run in edge.heartbeat.runs)

    def live_on(self, workcell: str) -> set[str]:
        return {
            e.instance
            for e in self._edges.values()
            if e.present and e.heartbeat is not None and e.heartbeat.workcell == workcell
        }

    def edges(self, workcell: str | None = None) -> list[EdgeView]:
        """The processes known with a heartbeat (live, or gone within their grace period),
        by workcell then start."""
        found = [
            EdgeView(
                workcell=e.heartbeat.workcell,
                instance=e.instance,
                version=e.heartbeat.version,
                started_at=e.heartbeat.started_at,
                last_beat_at=e.heartbeat.at,
                ttl_seconds=e.heartbeat.ttl_seconds,
                live=e.present,
                accepting=e.heartbeat.accepting and e.present,
                runs=e.heartbeat.runs,
            )
            for e in self._edges.values()
            if e.heartbeat is not None and workcell in (None, e.heartbeat.workcell)
        ]
        return sorted(found, key=lambda v: (v.workcell, v.started_at))

    def heartbeat(self, instance: str) -> EdgeHeartbeat | None:
        edge = self._edges.get(instance)
        return None if edge is None else edge.heartbeat

    def outage_over(self, now: float) -> list[str]:
        """NATS is back after this process lost it: no edge could beat, nor could we see its
        beats, meanwhile. Every edge gets a full period again, counted from now (its TTL, then
        the grace period), so an outage never passes for the death of every edge. The
        processes whose deadline moved."""
        moved = []
        for edge in self._edges.values():
            ttl = edge.heartbeat.ttl_seconds if edge.heartbeat is not None else 0
            if edge.deadline < now + ttl + self.grace:
                edge.deadline = now + ttl + self.grace
                moved.append(edge.instance)
        return moved

    def extend(self, instance: str, deadline: float) -> None:
        if (edge := self._edges.get(instance)) is not None:
            edge.deadline = max(edge.deadline, deadline)

    def deadline(self, instance: str) -> float | None:
        edge = self._edges.get(instance)
        return None if edge is None else edge.deadline

    def expire(self, instance: str, now: float) -> Lost | None:
        """The process, if it is past its deadline: it is forgotten and reported once."""
        edge = self._edges.get(instance)
        if edge is None or now < edge.deadline:
            return None
        del self._edges[instance]
        return _lost(edge, f"no heartbeat for {self.grace:.0f} s after its last one expired")

    def replaced(self, workcell: str, by: str) -> str:
        return f"the orchestrator of {workcell} restarted (now {by}) without the run"


def _lost(edge: _Edge, reason: str) -> Lost:
    heartbeat = edge.heartbeat
    return Lost(
        instance=edge.instance or None,
        workcell=heartbeat.workcell if heartbeat else None,
        reason=reason,
        runs={str(r.run_id): r for r in heartbeat.runs} if heartbeat else {},
    )


OnLost = Callable[[Lost], Awaitable[None]]
OnNew = Callable[[EdgeHeartbeat], Awaitable[None]]


class EdgeMonitor:
    """Watches the edges bucket; reports each process that is gone past its grace period."""

    def __init__(
        self,
        book: EdgeBook,
        bucket: Callable[[], Awaitable[KeyValue]],
        on_lost: OnLost,
        on_new: OnNew,
    ) -> None:
        self.book = book
        self._bucket = bucket
        self._on_lost = on_lost
        self._on_new = on_new
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def start(self) -> None:
        """Watch the bucket; returns once the current heartbeats have been read."""
        kv = await self._bucket()
        self._watcher = await kv.watchall()
        self._task = asyncio.create_task(self._watch(self._watcher), name="edge-monitor")
        await self.ready.wait()

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._task, *self._tasks] if t], return_exceptions=True)

    def nats_back(self) -> None:
        """The connection is back after a loss (``Bus.on_reconnected``): see
        ``EdgeBook.outage_over``."""
        for instance in self.book.outage_over(self.now()):
            self._arm(instance)

    def suspect(self, instance: str | None) -> None:
        """See ``EdgeBook.suspect``; arms the process's timer."""
        self.book.suspect(instance, self.now())
        self._arm(instance or UNKNOWN)

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the current heartbeats have all been read
                self.ready.set()
                continue
            try:
                self._observe(entry)
            except Exception:
                log.exception("edge heartbeat %s not understood", entry.key)

    def _observe(self, entry: KeyValue.Entry) -> None:
        instance = entry.key.rsplit(".", 1)[-1]
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.book.left(instance, self.now())
            self._arm(instance)
            return
        heartbeat = EdgeHeartbeat.model_validate_json(entry.value)
        if self.book.beat(heartbeat, self.now()):
            log.info("edge %s of %s is up", heartbeat.instance, heartbeat.workcell)
            self._spawn(self._on_new(heartbeat))
        self._arm(instance)

    def _arm(self, instance: str) -> None:
        deadline = self.book.deadline(instance)
        if (old := self._timers.pop(instance, None)) is not None:
            old.cancel()
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timers[instance] = loop.call_at(deadline, self._due, instance)

    def _due(self, instance: str) -> None:
        self._timers.pop(instance, None)
        self._spawn(self._confirm(instance))

    async def _confirm(self, instance: str) -> None:
        """Past its deadline: read the process's key itself before declaring it gone. After a
        NATS restart the watcher can lag behind the bucket by seconds, and a live edge must
        never be taken for a dead one; nor is a failed read evidence of death."""
        heartbeat = self.book.heartbeat(instance)
        if heartbeat is not None:
            try:
                current = await self._read(heartbeat.key)
            except Exception as exc:
                log.warning("edge %s: cannot read its heartbeat (%s); asking again", instance, exc)
                self.book.extend(instance, self.now() + CONFIRM_RETRY_SECONDS)
                self._arm(instance)
                return
            if current is not None and current.instance == instance:
                self.book.beat(current, self.now())  # alive: the watcher had not told us yet
                self._arm(instance)
                return
        lost = self.book.expire(instance, self.now())
        if lost is not None:
            log.warning("edge %s of %s is gone: %s", instance, lost.workcell, lost.reason)
            await self._report(lost)

    async def _read(self, key: str) -> EdgeHeartbeat | None:
        """The key's last message, unless it is a tombstone or an expiry marker."""
        kv = await self._bucket()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            return None
        return EdgeHeartbeat.model_validate_json(entry.value)

    async def _report(self, lost: Lost) -> None:
        """Report until it is recorded: a database outage delays it, never loses it."""
        await until_done(lambda: self._on_lost(lost), f"recording lost edge {lost.instance}")

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
