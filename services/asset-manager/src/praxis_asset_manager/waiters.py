"""Reservation requests that wait: ordered by priority, then submission order.

A waiter may be granted only when no waiter ahead of it wants any of the assets it wants, so a
large request is never starved by a stream of small ones that overlap it.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from praxis_contracts.assets import ReserveAssets, WaitReason


@dataclass
class Waiter:
    cmd: ReserveAssets
    since: datetime
    seq: int
    wanted: frozenset[uuid.UUID]
    timer: asyncio.TimerHandle | None = field(default=None, compare=False)
    reason: WaitReason | None = field(default=None, compare=False)
    """What the last ``ReservationWaiting`` said (one per change of reason)."""

    @property
    def order(self) -> tuple[int, int]:
        return (-self.cmd.priority, self.seq)


class WaitQueue:
    def __init__(self) -> None:
        self._waiters: dict[uuid.UUID, Waiter] = {}
        self._by_asset: dict[uuid.UUID, set[uuid.UUID]] = {}
        self._seq = itertools.count()

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._waiters

    def __len__(self) -> int:
        return len(self._waiters)

    def add(self, cmd: ReserveAssets, since: datetime, wanted: Iterable[uuid.UUID]) -> Waiter:
        waiter = Waiter(cmd, since, next(self._seq), frozenset(wanted))
        self._waiters[cmd.run_id] = waiter
        for asset_id in waiter.wanted:
            self._by_asset.setdefault(asset_id, set()).add(cmd.run_id)
        return waiter

    def remove(self, run_id: uuid.UUID) -> Waiter | None:
        waiter = self._waiters.pop(run_id, None)
        if waiter is None:
            return None
        if waiter.timer is not None:
            waiter.timer.cancel()
        for asset_id in waiter.wanted:
            self._by_asset.get(asset_id, set()).discard(run_id)
        return waiter

    def get(self, run_id: uuid.UUID) -> Waiter | None:
        return self._waiters.get(run_id)

    def wanting(self, assets: Iterable[uuid.UUID]) -> list[Waiter]:
        """Waiters that want any of ``assets``, in service order."""
        if not self._waiters:
            return []
        runs = set().union(*(self._by_asset.get(a, set()) for a in assets))
        return sorted((self._waiters[r] for r in runs), key=lambda w: w.order)

    def ahead_of(self, order: tuple[int, int], wanted: frozenset[uuid.UUID]) -> list[uuid.UUID]:
        """Runs waiting ahead of ``order`` for any of ``wanted``."""
        return [w.cmd.run_id for w in self.wanting(wanted) if w.order < order]

    def all(self) -> list[Waiter]:
        return sorted(self._waiters.values(), key=lambda w: w.order)
