"""The lease mirror: newer revisions win, and a run that holds nothing is forgotten; expiry
deadlines follow the leases it shows."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from praxis_asset_manager.lease_index import EXPIRY_MARGIN, RECHECK_FIRST, Deadlines, LeaseIndex
from praxis_runtime.leases import HELD, Holder, KeyState, decode_holder, lease_key


def holder(run_id: uuid.UUID, asset_id: uuid.UUID) -> Holder:
    now = datetime.now(UTC)
    return Holder(run_id, asset_id, "plate", None, now, now, 60)


def test_newer_revisions_win_and_released_runs_are_forgotten() -> None:
    index = LeaseIndex()
    run, asset = uuid.uuid4(), uuid.uuid4()
    key = lease_key("wc", asset)

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
    change = index.apply(lease_key("wc", asset), KeyState(3, None))
    assert change is not None and change.asset_id == asset
    assert index.apply("not-a-lease", KeyState(9, None)) is None


def test_an_unmarked_expiry_frees_the_key_and_keeps_the_revision() -> None:
    index = LeaseIndex()
    run, asset = uuid.uuid4(), uuid.uuid4()
    key = lease_key("wc", asset)
    index.apply(key, KeyState(7, holder(run, asset)))

    assert index.expire(key, 6) is None  # not the lease the mirror shows
    change = index.expire(key, 7)

    assert change is not None and change.current == KeyState(7, None)
    assert change.previous is not None and change.previous.holder is not None
    assert index.holder(asset) is None and index.held_by(run) == {}
    assert index.expire(key, 7) is None  # once
    assert index.apply(key, KeyState(7, holder(run, asset))) is None  # a late echo stays old
    assert index.apply(key, KeyState(9, holder(uuid.uuid4(), asset))) is not None


def test_a_held_holder_has_no_deadline_and_round_trips() -> None:
    held = replace(holder(uuid.uuid4(), uuid.uuid4()), ttl_seconds=HELD)
    assert held.held and held.expires_at is None
    assert decode_holder(held.encode()) == held
    live = holder(uuid.uuid4(), uuid.uuid4())
    assert not live.held and live.expires_at == live.renewed_at + timedelta(seconds=60)


async def test_deadlines_fire_once_per_lease_and_follow_its_changes() -> None:
    fired: list[tuple[str, int, int]] = []
    due = asyncio.Event()

    def passed(key: str, state: KeyState, attempt: int) -> None:
        fired.append((key, state.revision, attempt))
        due.set()

    deadlines = Deadlines(passed)
    run, asset = uuid.uuid4(), uuid.uuid4()
    key = lease_key("wc", asset)
    due_now = replace(holder(run, asset), renewed_at=datetime.now(UTC) - timedelta(seconds=60))

    deadlines.track(key, KeyState(3, due_now))
    deadlines.track(key, KeyState(4, due_now))  # a renewal replaces the timer
    await asyncio.wait_for(due.wait(), EXPIRY_MARGIN + 5)
    assert fired == [(key, 4, 0)] and len(deadlines) == 0
    due.clear()

    deadlines.recheck(key, KeyState(4, due_now), 1)
    deadlines.track(key, KeyState(5, None))  # released: no timer
    deadlines.track(lease_key("wc", uuid.uuid4()), KeyState(6, replace(due_now, ttl_seconds=HELD)))
    assert len(deadlines) == 0
    deadlines.track(key, KeyState(7, holder(run, asset)))  # a minute away
    assert len(deadlines) == 1
    deadlines.close()
    deadlines.track(key, KeyState(8, due_now))
    with contextlib.suppress(TimeoutError):  # a bounded negative check: nothing fires
        await asyncio.wait_for(due.wait(), RECHECK_FIRST + 0.1)
    assert fired == [(key, 4, 0)] and len(deadlines) == 0
