"""The lease mirror: newer revisions win, and a run that holds nothing is forgotten."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from praxis_asset_manager.lease_index import LeaseIndex
from praxis_runtime.leases import Holder, KeyState, lease_key


def holder(run_id: uuid.UUID, asset_id: uuid.UUID) -> Holder:
    now = datetime.now(UTC)
    return Holder(run_id, asset_id, "plate", None, now, now, 60)


def test_newer_revisions_win_and_released_runs_are_forgotten() -> None:
    index = LeaseIndex()
    run, asset = uuid.uuid4(), uuid.uuid4()
    key = lease_key(asset)

    change = index.apply(key, KeyState(5, holder(run, asset)))
    assert change is not None and change.asset_id == asset and change.previous is None
    assert index.apply(key, KeyState(4, None)) is None  # older than what we know
    assert index.apply(key, KeyState(5, None)) is None  # the echo of what we know
    assert set(index.held_by(run)) == {key}

    change = index.apply(key, KeyState(6, None))  # released
    assert change is not None and change.asset_id == asset
    assert change.previous is not None and change.previous.holder is not None
    assert index.held_by(run) == {} and index.holder(asset) is None
    assert run not in index._by_run  # no memory per finished run


def test_a_tombstone_for_an_unknown_key_names_its_asset() -> None:
    index = LeaseIndex()
    asset = uuid.uuid4()
    change = index.apply(lease_key(asset), KeyState(3, None))
    assert change is not None and change.asset_id == asset
    assert index.apply("not-a-lease", KeyState(9, None)) is None
