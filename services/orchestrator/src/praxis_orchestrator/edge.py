"""This orchestrator process's heartbeat in the edges bucket.

One key per process start (``edge.<workcell>.<instance>``), written with a per-message TTL at
every beat. The scheduler watches the bucket: a key that expires says the process died, and what
it lists says which runs it still executes. Beats go out every third of the TTL, and at once when
the set of runs (or a run's phase) changes, so a run is listed before its command is
acknowledged. A beat that fails (NATS away) is logged and the next one tries again: the heartbeat
never stops the process. On a graceful stop the key is deleted.

A beat that succeeds after failures, or after the client reconnected in between, is also the
moment to tell the lease keepers to re-create their watchers (``on_recovered``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from praxis_contracts.runs import EdgeHeartbeat, EdgeRun, edge_key
from praxis_contracts.topology import EDGES
from praxis_runtime.bus import INFRA_RETRY_CAP, retry_delay
from praxis_runtime.publisher import Outgoing, Publisher

log = logging.getLogger(__name__)

Recovered = Callable[[], Awaitable[None]]

STOP_ACCEPTING_SECONDS = 10.0
"""How long a stopping process tries to store the beat that says it takes no new run."""

COALESCE_SECONDS = 0.05
"""After a change of runs, how long the beacon gathers further changes into the same beat
(thirty-two runs in flight changed it 80 times a second, each a KV write and a parse at the
scheduler)."""


class EdgeBeacon:
    def __init__(
        self,
        publisher: Publisher,
        *,
        workcell: str,
        instance: str,
        version: str,
        ttl_seconds: int,
        runs: Callable[[], list[EdgeRun]],
        on_recovered: Recovered | None = None,
    ) -> None:
        self.publisher = publisher
        self.workcell = workcell
        self.instance = instance
        self.version = version
        self.ttl_seconds = ttl_seconds
        self.interval = ttl_seconds / 3
        self.runs = runs
        self.on_recovered = on_recovered
        self.started_at = datetime.now(UTC)
        self.accepting = True  # False once stopping: runs are no longer placed here
        self.beats = 0  # beats the server stored
        self.failures = 0  # consecutive beats that failed
        self._reconnects = self._reconnect_count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def key(self) -> str:
        return edge_key(self.workcell, self.instance)

    @property
    def subject(self) -> str:
        return f"$KV.{EDGES.bucket}.{self.key}"

    async def start(self) -> None:
        """The first beat (before the process takes commands), then one every interval."""
        await self.beat()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def poke(self) -> None:
        """Beat now: the runs changed."""
        self._wake.set()

    async def sync(self) -> None:
        """Beat now and return once a beat listing the current runs is stored, retrying while
        NATS is away: a run is listed before this process claims its leases."""
        attempt = 0
        while not await self.beat():
            attempt += 1
            await asyncio.sleep(retry_delay(attempt, INFRA_RETRY_CAP))

    async def stop_accepting(self) -> None:
        """Say (in a stored beat) that this process takes no new run: the asset-manager places
        none here from now on; runs for the workcell wait for its next orchestrator."""
        self.accepting = False
        try:  # NATS away: runs still placed here meanwhile are kept, then handed back
            await asyncio.wait_for(self.sync(), STOP_ACCEPTING_SECONDS)
        except TimeoutError:
            log.warning("heartbeat %s: could not say it takes no new run", self.key)

    async def stop(self) -> None:
        """Stop beating and delete the key (graceful stop: the process is not lost)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        # A tombstone with the same TTL, so stopped instances do not pile up in the bucket.
        tombstone = Outgoing(self.subject, b"", {"KV-Operation": "DEL"}, self.ttl_seconds)
        result = await self._publish(tombstone)
        if isinstance(result, Exception):
            log.warning("could not delete heartbeat %s (it expires): %s", self.key, result)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            else:
                # Runs come and go in bursts under load: one beat tells of a burst's changes.
                await asyncio.sleep(COALESCE_SECONDS)
            self._wake.clear()
            await self.beat()

    async def beat(self) -> bool:
        """Write the heartbeat once; whether the server stored it. Never raises."""
        heartbeat = EdgeHeartbeat(
            workcell=self.workcell,
            instance=self.instance,
            version=self.version,
            started_at=self.started_at,
            at=datetime.now(UTC),
            ttl_seconds=self.ttl_seconds,
            runs=self.runs(),
            accepting=self.accepting,
        )
        message = Outgoing(
            self.subject, heartbeat.model_dump_json().encode(), None, self.ttl_seconds
        )
        result = await self._publish(message)
        if isinstance(result, Exception):
            self.failures += 1
            if self.failures == 1 or self.failures % 10 == 0:
                log.warning(
                    "heartbeat %s failed (%d in a row): %r", self.key, self.failures, result
                )
            return False
        self.beats += 1
        reconnects = self._reconnect_count()
        recovered = self.failures > 0 or reconnects != self._reconnects
        self.failures, self._reconnects = 0, reconnects
        if recovered:
            log.info("heartbeat %s: NATS is back", self.key)
            await self._recovered()
        return True

    async def _publish(self, message: Outgoing) -> int | Exception:
        try:
            (result,) = await self.publisher.publish_all([message], timeout=self._timeout)
        except Exception as exc:  # e.g. the connection is closed
            return exc
        return result

    async def _recovered(self) -> None:
        if self.on_recovered is None:
            return
        try:
            await self.on_recovered()
        except Exception:
            log.exception("re-synchronising after NATS came back failed")

    @property
    def _timeout(self) -> float:
        """A beat that takes longer than an interval is late anyway: the next one follows."""
        return max(0.5, min(self.interval, self.publisher.timeout))

    def _reconnect_count(self) -> int:
        stats = getattr(self.publisher.nc, "stats", None) or {}
        return int(stats.get("reconnects", 0))
