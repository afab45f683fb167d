"""Where a run may be placed: workcells with a live orchestrator that accepts runs.

A grant on a workcell no orchestrator serves would hold its leases (an hour by default) while
its ``ExecuteRun`` waits in the stream for an edge that may never come. So a run is placed only
where an orchestrator beats in the edges bucket and accepts runs (``EdgeHeartbeat.accepting``:
False once it is stopping for an upgrade or a node drain); elsewhere it waits holding nothing
(``waiting_for_edge``) and is placed as soon as an edge of a workcell that can host it comes up.

``EdgeBook`` is the pure core (heartbeats in, the accepting workcells out, with each process's
deadline: its last beat's TTL, or at once when its key is deleted); ``EdgeWatch`` is the shell:
it watches the bucket (pushed changes, no polling) and keeps one timer per process at its
deadline, since the server's expiry of a key is not always pushed; at the deadline it reads the
key before it takes the process for gone (a NATS leader election delays beats, it ends no edge).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from praxis_contracts.runs import EdgeHeartbeat

log = logging.getLogger(__name__)

SLACK_SECONDS = 1.0
CONFIRM_RETRY_SECONDS = 1.0
"""Past its TTL a heartbeat key has expired on the server; the watcher may say so a moment late."""


@dataclass(frozen=True)
class _Beat:
    workcell: str
    accepting: bool
    deadline: float


class EdgeBook:
    """Live orchestrator processes by instance; times are a monotonic clock's seconds."""

    def __init__(self) -> None:
        self._edges: dict[str, _Beat] = {}

    def beat(self, heartbeat: EdgeHeartbeat, now: float) -> None:
        deadline = now + heartbeat.ttl_seconds + SLACK_SECONDS
        self._edges[heartbeat.instance] = _Beat(heartbeat.workcell, heartbeat.accepting, deadline)

    def gone(self, instance: str) -> None:
        self._edges.pop(instance, None)

    def expire(self, instance: str, now: float) -> bool:
        """Forget the process if its deadline passed without a beat; whether it was."""
        beat = self._edges.get(instance)
        if beat is None or now < beat.deadline:
            return False
        del self._edges[instance]
        return True

    def extend(self, instance: str, deadline: float) -> None:
        if (beat := self._edges.get(instance)) is not None:
            self._edges[instance] = replace(beat, deadline=max(beat.deadline, deadline))

    def deadline(self, instance: str) -> float | None:
        beat = self._edges.get(instance)
        return None if beat is None else beat.deadline

    def accepting(self) -> frozenset[str]:
        """Workcells with at least one live process that accepts runs."""
        return frozenset(b.workcell for b in self._edges.values() if b.accepting)

    def live(self) -> frozenset[str]:
        """Workcells with at least one live process (accepting or stopping)."""
        return frozenset(b.workcell for b in self._edges.values())


OnAccepting = Callable[[frozenset[str]], None]


class EdgeWatch:
    """Keeps an ``EdgeBook`` current from the edges bucket; ``on_accepting`` is called with the
    workcells that started accepting runs (to place the runs waiting for them)."""

    def __init__(self, on_accepting: OnAccepting) -> None:
        self.book = EdgeBook()
        self.on_accepting = on_accepting
        self.ready = asyncio.Event()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._task: asyncio.Task[None] | None = None
        self._watcher: Any = None
        self._kv: KeyValue | None = None
        self._keys: dict[str, str] = {}  # instance -> its heartbeat key
        self._confirming: set[asyncio.Task[None]] = set()

    def accepting(self, workcell: str) -> bool:
        return workcell in self.book.accepting()

    async def start(self, kv: KeyValue) -> None:
        """Watch the bucket; returns once the current heartbeats have been read."""
        self._kv = kv
        self._watcher = await kv.watchall()
        self._task = asyncio.create_task(self._watch(self._watcher), name="edge-watch")
        await self.ready.wait()

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()
        tasks = [t for t in [self._task, *self._confirming] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:  # the current heartbeats have all been read
                self.ready.set()
                continue
            try:
                self.observe(entry.key, entry.value, entry.operation)
            except Exception:
                log.exception("edge heartbeat %s not understood", entry.key)

    def observe(self, key: str, value: bytes | None, operation: str | None) -> None:
        before = self.book.accepting()
        instance = key.rsplit(".", 1)[-1]
        self._keys[instance] = key
        if operation in ("DEL", "PURGE") or not value:
            self.book.gone(instance)
        else:
            self.book.beat(EdgeHeartbeat.model_validate_json(value), self._now())
        self._arm(instance)
        self._changed(before)

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _arm(self, instance: str) -> None:
        if (old := self._timers.pop(instance, None)) is not None:
            old.cancel()
        deadline = self.book.deadline(instance)
        if deadline is not None:
            loop = asyncio.get_running_loop()
            self._timers[instance] = loop.call_at(deadline, self._due, instance)

    def _due(self, instance: str) -> None:
        self._timers.pop(instance, None)
        task = asyncio.ensure_future(self._confirm(instance))
        self._confirming.add(task)
        task.add_done_callback(self._confirming.discard)

    async def _confirm(self, instance: str) -> None:
        """Past its deadline without a beat we saw: read its key before taking the edge for
        gone. While a cluster elects a new leader (seconds) neither beats nor the watcher get
        through, and a live edge must not lose its runs' placement for that; an unreadable key
        is no evidence either (asked again a second later)."""
        key = self._keys.get(instance)
        if key is None or self._kv is None:
            return
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            entry = None
        except Exception as exc:
            log.info("edge %s: its heartbeat cannot be read (%s); asking again", instance, exc)
            self.book.extend(instance, self._now() + CONFIRM_RETRY_SECONDS)
            self._arm(instance)
            return
        if entry is not None and entry.value and entry.operation not in ("DEL", "PURGE"):
            before = self.book.accepting()
            self.book.beat(EdgeHeartbeat.model_validate_json(entry.value), self._now())
            self._arm(instance)
            self._changed(before)
            return
        if self.book.expire(instance, self._now()):
            self._keys.pop(instance, None)
            log.info("edge %s stopped beating: no new run is placed on it", instance)

    def _changed(self, before: frozenset[str]) -> None:
        started = self.book.accepting() - before
        if started and self.ready.is_set():
            log.info("orchestrators accept runs again on %s", ", ".join(sorted(started)))
            self.on_accepting(started)
