"""What the asset-manager knows of the lease bucket: a mirror fed by the bucket's watcher.

The bucket stays the source of truth. The mirror saves a read before each compare-and-set (a
stale entry only costs one re-read) and tells which assets are busy when planning a grant.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from praxis_runtime.leases import Holder, KeyState, asset_of, lease_key


@dataclass(frozen=True)
class Change:
    """What one watcher entry changed."""

    asset_id: uuid.UUID
    previous: KeyState | None
    current: KeyState


class LeaseIndex:
    def __init__(self) -> None:
        self.states: dict[str, KeyState] = {}
        self._by_run: dict[uuid.UUID, set[str]] = {}

    def apply(self, key: str, state: KeyState) -> Change | None:
        """Record a key's state unless we already know a newer one; returns what changed."""
        previous = self.states.get(key)
        if previous is not None and previous.revision >= state.revision:
            return None
        known = state.holder or (previous.holder if previous else None)
        asset_id = known.asset_id if known else asset_of(key)
        if asset_id is None:
            return None
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

    def holder(self, asset_id: uuid.UUID) -> Holder | None:
        state = self.states.get(lease_key(asset_id))
        return state.holder if state else None

    def held_by(self, run_id: uuid.UUID) -> dict[str, KeyState]:
        keys = self._by_run.get(run_id, set())
        return {k: self.states[k] for k in keys if self.states[k].holder is not None}

    def live(self) -> dict[uuid.UUID, Holder]:
        return {s.holder.asset_id: s.holder for s in self.states.values() if s.holder is not None}
