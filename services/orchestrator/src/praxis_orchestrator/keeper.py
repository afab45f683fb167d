"""Keeps a run's leases alive while it executes, and fences the run when one is lost.

The holder renews each lease at a third of its TTL (a compare-and-set on its current token, which
moves the token forward). It also watches its keys: the bucket pushes every change, so a lease
that expires, is force-released or is taken over is noticed at once, not at the next renewal
(with the default one-hour TTL that would be twenty minutes of driving an instrument that is no
longer the run's). Either way the run is fenced: its next protocol-function call raises
``LeaseLost`` before touching an instrument, and nothing it does can disturb the successor,
whose token differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from nats.js.kv import KeyValue

from praxis_contracts.assets import AssetBinding
from praxis_contracts.errors import LeaseLost
from praxis_runtime.leases import LeaseStore, state_of

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        leases: LeaseStore,
        run_id: uuid.UUID,
        bindings: list[AssetBinding],
        ttl_seconds: int,
    ) -> None:
        self.leases = leases
        self.run_id = run_id
        self.tokens = {b.lease_key: b.token for b in bindings}
        self.interval = max(0.2, ttl_seconds / 3)
        self.lost: LeaseLost | None = None
        self.fenced = asyncio.Event()  # set when a lease is lost
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watching: list[asyncio.Task[None]] = []
        self._watchers: list[KeyValue.KeyWatcher] = []

    def start(self) -> None:
        if self.tokens:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._heartbeat())
            self._watching = [loop.create_task(self._watch(key)) for key in self.tokens]

    async def stop(self) -> None:
        """Stop renewing and watching; a renewal under way completes, so the tokens stay
        current."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        for watcher in self._watchers:
            # Stopping ends the watcher's iterator; a cancellation alone can be swallowed by
            # CPython 3.11's wait_for inside nats-py.
            with contextlib.suppress(Exception):
                await watcher.stop()
        for task in self._watching:
            task.cancel()
        await asyncio.gather(*self._watching, return_exceptions=True)

    def _lose(self, lost: LeaseLost) -> None:
        if self.lost is None:
            self.lost = lost
            self.fenced.set()
            log.warning("run %s lost a lease: %s", self.run_id, lost.message)

    async def _watch(self, key: str) -> None:
        """The push side of the fence: any state of the key that is not this run's lease."""
        watcher = await self.leases.watch(key)
        self._watchers.append(watcher)
        if self._stopping.is_set():
            await watcher.stop()
            return
        async for entry in watcher:
            if entry is None:  # the current state came first; from here on, changes
                continue
            state = state_of(entry)
            if state.holder is not None and state.holder.run_id == self.run_id:
                continue  # the grant itself, or one of our renewals
            gone = "taken by another run" if state.holder else "released or expired"
            self._lose(LeaseLost(f"lease {key} was {gone} (revision {state.revision})", key=key))
            return

    async def check(self) -> None:
        """The fence: raise before the protocol acts again if any lease was lost."""
        if self.lost is not None:
            raise self.lost

    async def renew(self) -> None:
        """Renew every lease once; a failure fences the run."""
        keys = list(self.tokens)
        results = await asyncio.gather(
            *(self.leases.renew(k, self.tokens[k], self.run_id) for k in keys),
            return_exceptions=True,
        )
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, LeaseLost):
                self._lose(result)
            elif isinstance(result, BaseException):
                log.warning("renewing %s failed, will retry: %s", key, result)
            else:
                self.tokens[key] = result

    async def _heartbeat(self) -> None:
        while self.lost is None:
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval)
                return  # stopped
            except TimeoutError:
                await self.renew()
