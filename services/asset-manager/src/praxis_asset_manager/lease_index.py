"""What the asset-manager knows of the lease bucket: a mirror fed by the bucket's watcher.

The bucket stays the source of truth. The mirror saves a read before each compare-and-set (a
stale entry only costs one re-read) and tells which assets are busy when planning a grant.

The watcher does not show every expiry: when a lease key has earlier revisions (a release
tombstone before the current lease), nats-server expires the lease's message without writing an
expiry marker, since the key still has a last message (the older tombstone). ``Deadlines`` keeps a
timer per live lease at the moment its TTL runs out, so the owner can look at the key then.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from praxis_runtime.leases import Holder, KeyState, asset_of

EXPIRY_MARGIN = 0.25
"""Seconds after a lease's deadline before its key is read: the server stores a write a moment
after its writer read the clock (README, Design measurements)."""

RECHECK_FIRST, RECHECK_MAX = 0.5, 10.0
"""A key still live past its deadline (the server's clock is behind the writer's) is read again
after 0.5 s, then 1 s, 2 s ... at most 10 s apart."""


@dataclass(frozen=True)
class Change:
    """What one watcher entry changed."""

    asset_id: uuid.UUID
    previous: KeyState | None
    current: KeyState


class LeaseIndex:
    def __init__(self) -> None:
        self.states: dict[str, KeyState] = {}
        self.keys: dict[uuid.UUID, str] = {}  # asset -> its lease key (``asset.<wc>.<id>``)
        self._by_run: dict[uuid.UUID, set[str]] = {}

    def apply(self, key: str, state: KeyState) -> Change | None:
        """Record a key's state unless we already know a newer one; returns what changed."""
        previous = self.states.get(key)
        if previous is not None and previous.revision >= state.revision:
            return None
        return self._set(key, previous, state)

    def expire(self, key: str, revision: int) -> Change | None:
        """The lease at ``revision`` left the bucket without a marker: the key is free.

        The revision stays the lease's although the bucket's last message for the key is now
        an older one: the watcher's late echo of that lease is then still recognised as old, and
        a compare-and-set on the mirror's revision costs one re-read. None unless the mirror
        shows that very lease."""
        previous = self.states.get(key)
        if previous is None or previous.revision != revision or previous.holder is None:
            return None
        return self._set(key, previous, KeyState(revision, None))

    def _set(self, key: str, previous: KeyState | None, state: KeyState) -> Change | None:
        known = state.holder or (previous.holder if previous else None)
        asset_id = known.asset_id if known else asset_of(key)
        if asset_id is None:
            return None
        self.keys[asset_id] = key
        if previous is not None and previous.holder is not None:
            run_id = previous.holder.run_id
            keys = self._by_run.get(run_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_run[run_id]  # a run that holds nothing is forgotten
        if state.holder is not None:
            self._by_run.setdefault(state.holder.run_id, set()).add(key)
        self.states[key] = state
        return Change(asset_id, previous, state)

    def key_of(self, asset_id: uuid.UUID) -> str | None:
        """The asset's lease key, once any of its leases was seen."""
        return self.keys.get(asset_id)

    def holder(self, asset_id: uuid.UUID) -> Holder | None:
        key = self.keys.get(asset_id)
        state = self.states.get(key) if key else None
        return state.holder if state else None

    def held_by(self, run_id: uuid.UUID) -> dict[str, KeyState]:
        keys = self._by_run.get(run_id, set())
        return {k: self.states[k] for k in keys if self.states[k].holder is not None}

    def live(self) -> dict[uuid.UUID, Holder]:
        return {s.holder.asset_id: s.holder for s in self.states.values() if s.holder is not None}


Due = Callable[[str, KeyState, int], None]
"""Called with a key, the lease state whose deadline passed, and how many re-checks preceded."""


class Deadlines:
    """One timer per live lease, due when its TTL has run out by our clock (plus a margin).

    No polling: a timer exists only for a lease that should expire, is moved by every renewal
    the mirror sees, and is dropped when the key is freed or the lease is held for an
    intervention (it has no TTL). ``due`` decides, from the bucket, what a passed deadline means.
    """

    def __init__(self, due: Due) -> None:
        self._due = due
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._closed = False

    def __len__(self) -> int:
        return len(self._timers)

    def track(self, key: str, state: KeyState) -> None:
        """Arm the key's timer for ``state`` (replacing any other); none for a free or held key."""
        self.cancel(key)
        deadline = state.holder.expires_at if state.holder else None
        if deadline is not None:
            delay = (deadline - datetime.now(UTC)).total_seconds() + EXPIRY_MARGIN
            self._arm(key, state, delay, 0)

    def recheck(self, key: str, state: KeyState, attempt: int) -> None:
        """Look at the key again later: the ``attempt``-th re-check, backing off."""
        self.cancel(key)
        self._arm(key, state, min(RECHECK_MAX, RECHECK_FIRST * 2.0 ** (attempt - 1)), attempt)

    def cancel(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def close(self) -> None:
        """Cancel every timer and arm no more (the service is stopping)."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _arm(self, key: str, state: KeyState, delay: float, attempt: int) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(max(0.0, delay), self._fire, key, state, attempt)

    def _fire(self, key: str, state: KeyState, attempt: int) -> None:
        self._timers.pop(key, None)
        self._due(key, state, attempt)
