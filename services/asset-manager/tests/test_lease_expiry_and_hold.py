"""Lease expiry is observed for every key, and leases can be held without expiry.

Against the real nats-server: a lease key with earlier revisions (a lease, its release tombstone,
then a new lease with a TTL) expires without an expiry marker (the older tombstone is left as the
key's last message), so the bucket's watcher alone never learns of it. The asset-manager keeps a
deadline per live lease and looks at the key when it passes.

``HoldAssets`` rewrites a run's leases without a TTL: they outlive their TTL, the old holder's
token no longer renews them, and a release or force-release still ends them.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pylabrobot.resources import Plate

from praxis_contracts.assets import (
    AssetDraft,
    AssetsHeld,
    AssetsReleased,
    AssetsReserved,
    ForceReleaseLease,
    HoldAssets,
    Lease,
    LeaseExpired,
    ListLeases,
    RegisterWorkcell,
    ReleaseAssets,
    ReservationWaiting,
    ReserveAssets,
    WorkcellLayout,
)
from praxis_contracts.errors import LeaseLost, NotFound
from praxis_contracts.protocols import AssetRequirementSpec
from praxis_plr.types import fqn
from praxis_runtime.bus import Bus
from praxis_runtime.leases import EXPECTED_LAST_SUBJECT_SEQ, LeaseStore, lease_key

pytestmark = pytest.mark.integration

PLATE = fqn(Plate)
EXPIRY_TIMEOUT = 10.0
"""A 1-2 s lease must be reported expired well within this (generous for a loaded machine)."""


WORKCELL_OF: dict[uuid.UUID, str] = {}


def key_of(plate: uuid.UUID) -> str:
    """The plate's lease key (``asset.<workcell>.<id>``)."""
    return lease_key(WORKCELL_OF[plate], plate)


@pytest.fixture
async def plate_id(am: Bus) -> uuid.UUID:
    """A plate in a fresh workcell: a lease key nobody has written yet."""
    drafts = [AssetDraft(kind="resource", name="plate", fqn=PLATE, definition={})]
    name = f"expiry-{uuid.uuid4().hex[:8]}"
    request = RegisterWorkcell(name=name, assets=drafts)
    layout: WorkcellLayout = await am.request(request, timeout=30)
    WORKCELL_OF[layout.assets[0].accession_id] = name
    return layout.assets[0].accession_id


def reserve(run_id: uuid.UUID, plate: uuid.UUID, **fields: Any) -> ReserveAssets:
    requirement = AssetRequirementSpec(name="plate", type_fqn=PLATE, kind="resource")
    return ReserveAssets(
        run_id=run_id, requirements=[requirement], pins={"plate": str(plate)}, **fields
    )


async def lease_of(am: Bus, tap: Any, plate: uuid.UUID, **fields: Any) -> tuple[uuid.UUID, int]:
    """Lease ``plate`` to a new run; its id and fencing token."""
    run_id = uuid.uuid4()
    granted = await tap(AssetsReserved, str(run_id))
    await am.publish(reserve(run_id, plate, **fields))
    (binding,) = (await granted.next()).bindings
    return run_id, binding.token


async def released(am: Bus, tap: Any, run_id: uuid.UUID) -> AssetsReleased:
    done = await tap(AssetsReleased, str(run_id))
    await am.publish(ReleaseAssets(run_id=run_id))
    return await done.next()


async def give_key_history(am: Bus, tap: Any, plate: uuid.UUID) -> None:
    """A lease and its release tombstone: the key's later expiries get no marker."""
    run_id, _ = await lease_of(am, tap, plate)
    await released(am, tap, run_id)


async def live_runs(am: Bus, plate: uuid.UUID) -> list[uuid.UUID]:
    return [lease.run_id for lease in await leases_of(am, plate)]


async def leases_of(am: Bus, plate: uuid.UUID) -> list[Lease]:
    return [lease for lease in (await am.request(ListLeases())).items if lease.asset_id == plate]


# -- task 1: expiry of every key ----------------------------------------------------------------


async def test_expiry_of_a_key_with_history_is_observed_and_wakes_the_waiter(
    am: Bus, tap: Any, leases: LeaseStore, plate_id: uuid.UUID
) -> None:
    await give_key_history(am, tap, plate_id)
    expired = await tap(LeaseExpired, str(plate_id))
    short, token = await lease_of(am, tap, plate_id, ttl_seconds=2)  # never renewed
    waiter = uuid.uuid4()
    waiting = await tap(ReservationWaiting, str(waiter))
    granted = await tap(AssetsReserved, str(waiter))
    await am.publish(reserve(waiter, plate_id))
    assert (await waiting.next()).blocked_by == [short]
    assert await live_runs(am, plate_id) == [short]

    event = await expired.next(EXPIRY_TIMEOUT)

    assert (event.run_id, event.asset_id, event.token) == (short, plate_id, token)
    assert event.lease_key == key_of(plate_id)
    (binding,) = (await granted.next(EXPIRY_TIMEOUT)).bindings
    assert binding.token > token
    assert await live_runs(am, plate_id) == [waiter]
    assert await leases.release(key_of(plate_id), token) is None  # its token is stale
    await expired.assert_silent(1.5)  # reported once


async def test_expiry_is_reported_once_when_the_server_writes_a_marker(
    am: Bus, tap: Any, plate_id: uuid.UUID
) -> None:
    """A key with no earlier revision does get a marker: the deadline must not report it again."""
    expired = await tap(LeaseExpired, str(plate_id))
    run_id, token = await lease_of(am, tap, plate_id, ttl_seconds=1)

    event = await expired.next(EXPIRY_TIMEOUT)

    assert (event.run_id, event.token) == (run_id, token)
    await expired.assert_silent(2.5)
    assert await live_runs(am, plate_id) == []


async def test_a_lease_is_not_reported_expired_while_the_server_keeps_it(
    am: Bus, tap: Any, leases: LeaseStore, client: Bus, plate_id: uuid.UUID
) -> None:
    """The holder's clock says the lease ran out long ago; the server's does not yet. The
    asset-manager believes the bucket: it reports the expiry only once the key is gone."""
    await give_key_history(am, tap, plate_id)
    run_id, token = await lease_of(am, tap, plate_id, ttl_seconds=60)
    key = key_of(plate_id)
    state = await leases.read(key)
    assert state.holder is not None and state.revision == token
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    skewed = replace(state.holder, renewed_at=long_ago, ttl_seconds=3)
    expired = await tap(LeaseExpired, str(plate_id))
    renewed = await client.publisher.publish(
        leases.subject(key), skewed.encode(), {EXPECTED_LAST_SUBJECT_SEQ: str(token)}, ttl=3
    )

    await expired.assert_silent(1.5)  # due by the holder's clock, but the server still has it
    assert await live_runs(am, plate_id) == [run_id]
    event = await expired.next(EXPIRY_TIMEOUT)
    assert (event.run_id, event.token) == (run_id, renewed)
    assert await live_runs(am, plate_id) == []
    await expired.assert_silent(1.0)


async def test_force_release_after_an_unmarked_expiry_is_not_found(
    am: Bus, tap: Any, plate_id: uuid.UUID
) -> None:
    await give_key_history(am, tap, plate_id)
    expired = await tap(LeaseExpired, str(plate_id))
    await lease_of(am, tap, plate_id, ttl_seconds=1)
    await expired.next(EXPIRY_TIMEOUT)

    assert await live_runs(am, plate_id) == []
    with pytest.raises(NotFound):
        await am.request(ForceReleaseLease(asset_id=plate_id, reason="stale"))


# -- task 2: HoldAssets -------------------------------------------------------------------------


async def test_held_leases_outlive_their_ttl_and_fence_the_old_holder(
    am: Bus, tap: Any, leases: LeaseStore, plate_id: uuid.UUID
) -> None:
    await give_key_history(am, tap, plate_id)  # so no expiry marker could save the day either
    run_id, token = await lease_of(am, tap, plate_id, ttl_seconds=2)
    held, expired = await tap(AssetsHeld, str(run_id)), await tap(LeaseExpired, str(plate_id))
    key = key_of(plate_id)

    await am.publish(HoldAssets(run_id=run_id, reason="edge lost"))

    event = await held.next()
    assert (event.asset_ids, event.reason) == ([plate_id], "edge lost")
    state = await leases.read(key)
    assert state.holder is not None and state.holder.run_id == run_id
    assert state.holder.held and state.revision > token  # the token moved
    with pytest.raises(LeaseLost):  # the edge that comes back cannot renew
        await leases.renew(key, token, run_id)
    with pytest.raises(LeaseLost):  # nor can anyone keep the hold alive as a lease
        await leases.renew(key, state.revision, run_id)
    await expired.assert_silent(3.5)  # well past the 2 s TTL
    assert (await leases.read(key)) == state
    (lease,) = await leases_of(am, plate_id)
    assert (lease.run_id, lease.token, lease.held_for_intervention) == (
        run_id,
        state.revision,
        True,
    )
    assert (lease.expires_at, lease.seconds_left) == (None, None)

    waiter = uuid.uuid4()
    granted = await tap(AssetsReserved, str(waiter))
    await am.publish(reserve(waiter, plate_id))
    await granted.assert_silent()
    assert (await released(am, tap, run_id)).asset_ids == [plate_id]
    (binding,) = (await granted.next()).bindings
    assert binding.token > state.revision
    now_held = await leases.read(key)
    assert now_held.holder is not None and now_held.holder.run_id == waiter
    await expired.assert_silent(0)


async def test_a_held_lease_can_be_force_released(
    am: Bus, tap: Any, leases: LeaseStore, plate_id: uuid.UUID
) -> None:
    run_id, _ = await lease_of(am, tap, plate_id, ttl_seconds=30)
    held = await tap(AssetsHeld, str(run_id))
    await am.publish(HoldAssets(run_id=run_id))
    await held.next()
    token = (await leases.read(key_of(plate_id))).revision

    lease = await am.request(ForceReleaseLease(asset_id=plate_id, reason="operator took it"))

    assert (lease.run_id, lease.token, lease.held_for_intervention) == (run_id, token, True)
    assert (await leases.read(key_of(plate_id))).holder is None
    assert await live_runs(am, plate_id) == []


async def test_holding_a_run_that_holds_nothing_is_acknowledged(am: Bus, tap: Any) -> None:
    run_id = uuid.uuid4()
    held = await tap(AssetsHeld, str(run_id))

    await am.publish(HoldAssets(run_id=run_id))

    await held.assert_silent()
    info = await am.js.consumer_info("PRAXIS_COMMANDS", "asset-manager-hold")
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)


# -- a claimed lease that runs out is held, never freed -----------------------------------------


async def claim(client: Bus, leases: LeaseStore, plate: uuid.UUID, edge: str) -> int:
    """Stamp ``edge`` into the plate's lease at its token, as an orchestrator accepting the run
    does with its first renewal (same TTL); the new token."""
    key = key_of(plate)
    state = await leases.read(key)
    assert state.holder is not None
    stamped = replace(state.holder, renewed_at=datetime.now(UTC), edge=edge)
    expected = {EXPECTED_LAST_SUBJECT_SEQ: str(state.revision)}
    return await client.publisher.publish(
        leases.subject(key), stamped.encode(), expected, ttl=state.holder.ttl_seconds
    )


@pytest.mark.parametrize("history", [False, True], ids=["expiry-marker", "deadline"])
async def test_a_claimed_lease_that_runs_out_is_held_and_never_granted_on(
    am: Bus, tap: Any, leases: LeaseStore, client: Bus, plate_id: uuid.UUID, history: bool
) -> None:
    """The edge accepted the run, then stopped renewing (killed): its lease runs out long
    before the edge could be declared lost. The asset may be mid-transfer: it is held for an
    operator (both ways an expiry is learnt), and a run queued for it is not started."""
    if history:
        await give_key_history(am, tap, plate_id)  # no expiry marker: the deadline finds it
    run_id, _ = await lease_of(am, tap, plate_id, ttl_seconds=2)
    claimed = await claim(client, leases, plate_id, "edge-killed")
    waiter = uuid.uuid4()
    waiting, granted = await tap(ReservationWaiting, str(waiter)), await tap(AssetsReserved)
    expired = await tap(LeaseExpired, str(plate_id))
    await am.publish(reserve(waiter, plate_id))
    assert (await waiting.next()).blocked_by == [run_id]

    event = await expired.next(EXPIRY_TIMEOUT)

    assert (event.run_id, event.token, event.held) == (run_id, claimed, True)
    assert event.edge_instance == "edge-killed"
    state = await leases.read(key_of(plate_id))
    assert state.holder is not None and state.holder.run_id == run_id
    assert state.holder.held and state.revision > claimed  # the token moved: the edge is fenced
    (lease,) = await leases_of(am, plate_id)
    assert (lease.run_id, lease.held_for_intervention) == (run_id, True)
    await granted.assert_silent(2.5)  # well past the lease's TTL: nobody got the plate
    await expired.assert_silent(0)  # reported once

    # The operator resolves the run: its leases go, and the queued run gets the plate.
    assert (await released(am, tap, run_id)).asset_ids == [plate_id]
    (binding,) = (await granted.next()).bindings
    assert (await leases.read(key_of(plate_id))).holder.run_id == waiter  # type: ignore[union-attr]
    assert binding.token > state.revision
    await released(am, tap, waiter)


async def test_an_unclaimed_lease_that_runs_out_frees_its_asset(
    am: Bus, tap: Any, plate_id: uuid.UUID
) -> None:
    """Granted but never accepted by an edge: nothing happened to the asset, it is free."""
    expired = await tap(LeaseExpired, str(plate_id))
    run_id, _ = await lease_of(am, tap, plate_id, ttl_seconds=1)
    event = await expired.next(EXPIRY_TIMEOUT)
    assert (event.run_id, event.held) == (run_id, False)
    assert await live_runs(am, plate_id) == []
