"""Keeps a run's leases alive while it executes, and fences the run when one is lost.

The holder renews each lease at a third of its TTL (a compare-and-set on its current token, which
moves the token forward). If a renewal fails, because the lease expired, was force-released or
was taken over, the run is fenced: its next protocol-function call raises ``LeaseLost`` before
touching an instrument, and nothing it does can disturb the successor, whose token differs.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from praxis_contracts.assets import AssetBinding
from praxis_contracts.errors import LeaseLost
from praxis_runtime.leases import LeaseStore

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
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.tokens:
            self._task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def stop(self) -> None:
        """Stop renewing; a renewal under way completes, so the tokens stay current."""
        self._stopping.set()
        if self._task is not None:
            await self._task

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
                self.lost = self.lost or result
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
        log.warning("run %s lost a lease: %s", self.run_id, self.lost.message)
