"""Fencing: a holder whose lease expired can neither renew, release nor act, and its successor
is never disturbed. Real nats-server; the expiry is the server's own TTL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from praxis_contracts.assets import AssetBinding
from praxis_contracts.errors import LeaseLost
from praxis_contracts.topology import ASSET_LEASES
from praxis_devstack.servers import NatsServer
from praxis_orchestrator.keeper import ClaimedElsewhere, LeaseKeeper
from praxis_runtime.bus import Bus
from praxis_runtime.leases import EXPECTED_LAST_SUBJECT_SEQ, Claim, LeaseStore, lease_key

pytestmark = pytest.mark.integration

EDGE = "edge-under-test"
WC = "wc-fencing"


@pytest.fixture
async def leases(nats_url: str) -> AsyncIterator[LeaseStore]:
    bus = Bus(nats_url, "fencing-test")
    await bus.connect()
    yield LeaseStore(bus.publisher, ASSET_LEASES.bucket)
    await bus.stop()


async def expiry_of(leases: LeaseStore, key: str) -> None:
    """Wait for the server to expire ``key`` (pushed to a watcher as a PURGE marker)."""
    kv = await leases.js.key_value(ASSET_LEASES.bucket)
    watcher = await kv.watch(key)
    try:
        async with asyncio.timeout(15):
            async for entry in watcher:
                if entry is not None and entry.operation == "PURGE":
                    return
    finally:
        await watcher.stop()


def binding(asset_id: uuid.UUID, token: int) -> AssetBinding:
    return AssetBinding(
        requirement="plate",
        asset_id=asset_id,
        asset_name="plate",
        kind="resource",
        fqn="pylabrobot.resources.plate.Plate",
        lease_key=lease_key(WC, asset_id),
        token=token,
    )


async def test_an_expired_holder_is_fenced_and_cannot_disturb_its_successor(
    leases: LeaseStore,
) -> None:
    asset, stale_run, successor = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    key = lease_key(WC, asset)
    granted = await leases.acquire_all(
        stale_run, [Claim(asset, "plate")], ttl_seconds=1, workcell=WC
    )
    keeper = LeaseKeeper(leases, stale_run, [binding(asset, granted[asset].revision)], EDGE, 1)
    await keeper.renew()  # the holder may renew while the lease is live: the token moves on
    assert keeper.tokens[key] > granted[asset].revision
    await keeper.check()

    await expiry_of(leases, key)
    taken = await leases.acquire_all(
        successor, [Claim(asset, "plate")], ttl_seconds=30, workcell=WC
    )
    before = await leases.read(key)
    assert before.holder is not None and before.holder.run_id == successor

    await keeper.renew()  # the stale holder's heartbeat fails...
    with pytest.raises(LeaseLost):
        await keeper.check()  # ...and fences it before its next protocol-function call
    with pytest.raises(LeaseLost):
        await leases.renew(key, keeper.tokens[key], stale_run)
    assert await leases.release(key, keeper.tokens[key]) is None
    assert await leases.release(key, granted[asset].revision) is None
    assert await leases.release_holder(key, stale_run) is None

    after = await leases.read(key)
    assert (after.revision, after.holder) == (before.revision, before.holder)
    assert after.revision == taken[asset].revision
    assert await leases.release(key, after.revision) is not None  # the successor still can


async def test_a_live_holder_keeps_its_lease_by_renewing(leases: LeaseStore) -> None:
    asset, run = uuid.uuid4(), uuid.uuid4()
    granted = await leases.acquire_all(run, [Claim(asset, "plate")], ttl_seconds=1, workcell=WC)
    keeper = LeaseKeeper(leases, run, [binding(asset, granted[asset].revision)], EDGE, 1)
    kv = await leases.js.key_value(ASSET_LEASES.bucket)
    watcher = await kv.watch(lease_key(WC, asset))
    keeper.start()
    try:
        renewals = 0
        async with asyncio.timeout(15):
            async for entry in watcher:  # ~3 s of pushed renewals, never an expiry
                if entry is None:
                    continue
                assert entry.operation != "PURGE", "the lease expired although renewed"
                renewals += 1
                if renewals == 10:
                    break
    finally:
        await keeper.stop()
        await watcher.stop()
    await keeper.check()
    state = await leases.read(lease_key(WC, asset))
    assert state.holder is not None and state.holder.run_id == run
    assert state.revision == keeper.tokens[lease_key(WC, asset)]


async def test_a_force_release_fences_the_holder_at_once(leases: LeaseStore) -> None:
    asset, run = uuid.uuid4(), uuid.uuid4()
    granted = await leases.acquire_all(run, [Claim(asset, "plate")], ttl_seconds=3600, workcell=WC)
    # A one-hour lease renews every twenty minutes: only the push can fence this run in time.
    keeper = LeaseKeeper(leases, run, [binding(asset, granted[asset].revision)], EDGE, 3600)
    keeper.start()
    try:
        await keeper.renew()  # the run's own writes never fence it
        await keeper.check()
        released = await leases.force_release(lease_key(WC, asset), "the operator needs the plate")
        assert released is not None
        async with asyncio.timeout(5):
            await keeper.fenced.wait()
        with pytest.raises(LeaseLost, match="released or expired"):
            await keeper.check()
    finally:
        await keeper.stop()


async def test_a_lease_lost_before_the_keeper_starts_fences_at_once(leases: LeaseStore) -> None:
    asset, run, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    granted = await leases.acquire_all(run, [Claim(asset, "plate")], ttl_seconds=3600, workcell=WC)
    keeper = LeaseKeeper(leases, run, [binding(asset, granted[asset].revision)], EDGE, 3600)
    await leases.force_release(lease_key(WC, asset), "reassigned")
    await leases.acquire_all(other, [Claim(asset, "plate")], ttl_seconds=3600, workcell=WC)
    keeper.start()
    try:
        async with asyncio.timeout(5):
            await keeper.fenced.wait()
        with pytest.raises(LeaseLost, match="taken by another run"):
            await keeper.check()
    finally:
        await keeper.stop()
        await leases.release_holder(lease_key(WC, asset), other)


async def hold(leases: LeaseStore, key: str, **changes: Any) -> int:
    """Rewrite the lease at its current revision with ``changes`` to its holder and no TTL, as
    the asset-manager does to hold a run's leases for an operator (``ttl_seconds=0``)."""
    state = await leases.read(key)
    assert state.holder is not None
    held = replace(state.holder, **changes)
    expected = {EXPECTED_LAST_SUBJECT_SEQ: str(state.revision)}
    return await leases.publisher.publish(leases.subject(key), held.encode(), expected)


async def test_a_hold_for_intervention_fences_the_holder(leases: LeaseStore) -> None:
    asset, run = uuid.uuid4(), uuid.uuid4()
    granted = await leases.acquire_all(run, [Claim(asset, "plate")], ttl_seconds=3600, workcell=WC)
    keeper = LeaseKeeper(leases, run, [binding(asset, granted[asset].revision)], EDGE, 3600)
    keeper.start()
    try:
        await keeper.renew()
        await hold(leases, lease_key(WC, asset), ttl_seconds=0)  # same run, no expiry
        async with asyncio.timeout(5):
            await keeper.fenced.wait()
        with pytest.raises(LeaseLost, match="held for intervention"):
            await keeper.check()
        assert not await keeper.renew()  # and it does not write over the hold
        state = await leases.read(lease_key(WC, asset))
        assert state.holder is not None and state.holder.ttl_seconds == 0
    finally:
        await keeper.stop()
        await leases.release_holder(lease_key(WC, asset), run)


async def test_a_revision_the_keeper_did_not_write_fences_it(leases: LeaseStore) -> None:
    """Another process renewing the same run's lease (a command prepared twice) moves the token
    as this keeper's own renewals do; only the value tells them apart."""
    asset, run = uuid.uuid4(), uuid.uuid4()
    granted = await leases.acquire_all(run, [Claim(asset, "plate")], ttl_seconds=3600, workcell=WC)
    keeper = LeaseKeeper(leases, run, [binding(asset, granted[asset].revision)], EDGE, 3600)
    keeper.start()
    try:
        await hold(leases, lease_key(WC, asset), renewed_at=datetime.now(UTC))  # ttl unchanged
        async with asyncio.timeout(5):
            await keeper.fenced.wait()
        with pytest.raises(LeaseLost, match="rewritten by another writer"):
            await keeper.check()
    finally:
        await keeper.stop()
        await leases.release_holder(lease_key(WC, asset), run)


async def test_the_keepers_own_renewals_never_fence_it(leases: LeaseStore) -> None:
    """Back-to-back renewals with the watcher on: its echo of a renewal often arrives before
    the publish's ack, and must be recognised as the keeper's own."""
    asset, run = uuid.uuid4(), uuid.uuid4()
    key = lease_key(WC, asset)
    granted = await leases.acquire_all(run, [Claim(asset, "plate")], ttl_seconds=3600, workcell=WC)
    keeper = LeaseKeeper(leases, run, [binding(asset, granted[asset].revision)], EDGE, 3600)
    keeper.start()
    try:
        for _ in range(40):
            assert await keeper.renew()
        await keeper.check()
        state = await leases.read(key)
        assert state.holder is not None and state.holder.run_id == run
        assert state.revision == keeper.tokens[key] > granted[asset].revision
    finally:
        await keeper.stop()
    await keeper.check()
    assert await leases.release(key, keeper.tokens[key]) is not None  # its token is current


async def test_renewals_failing_while_nats_is_down_are_retried_and_do_not_fence(
    own_nats: NatsServer, eventually: Any
) -> None:
    bus = Bus(own_nats.operator_url, "fencing-outage-test")
    await bus.connect()
    leases = LeaseStore(bus.publisher, ASSET_LEASES.bucket)
    asset, run = uuid.uuid4(), uuid.uuid4()
    key = lease_key(WC, asset)
    # 15 s lease, renewed every 5 s: it outlives the outage below plus the reconnect.
    granted = await leases.acquire_all(run, [Claim(asset, "plate")], ttl_seconds=15, workcell=WC)
    keeper = LeaseKeeper(leases, run, [binding(asset, granted[asset].revision)], EDGE, 15)
    kv = await bus.js.key_value(ASSET_LEASES.bucket)
    watcher = await kv.watch(key)
    keeper.start()
    try:
        async with asyncio.timeout(15):  # stop NATS right after a renewal: the longest margin
            async for entry in watcher:
                if entry is not None and entry.revision > granted[asset].revision:
                    break
        await watcher.stop()  # type: ignore[no-untyped-call]
        await asyncio.to_thread(own_nats.stop)
        await eventually(lambda: keeper.renewal_failures >= 1, "a renewal failed", 15)
        await keeper.check()  # NATS being away is no lost lease
        renewed = keeper.tokens[key]

        await asyncio.to_thread(own_nats.start)
        await eventually(lambda: keeper.tokens[key] > renewed, "renewed after the restart", 15)
        await keeper.check()
        state = await leases.read(key)
        assert state.holder is not None and state.revision == keeper.tokens[key]

        # The keeper still watches its key (re-created after the reconnect): a force-release
        # fences it at once, not at its next renewal.
        await leases.force_release(key, "operator")
        async with asyncio.timeout(5):
            await keeper.fenced.wait()
        with pytest.raises(LeaseLost, match="released or expired"):
            await keeper.check()
    finally:
        await keeper.stop()
        await bus.stop()


async def test_the_claim_stamps_the_edge_and_a_second_process_finds_it_taken(
    leases: LeaseStore,
) -> None:
    """Two processes handed the same command: the first claim wins, the second is told whose
    the run is; once the first withdraws its claim (it stops before starting), the second can
    claim it."""
    asset, run = uuid.uuid4(), uuid.uuid4()
    key = lease_key(WC, asset)
    granted = await leases.acquire_all(run, [Claim(asset, "plate")], ttl_seconds=3600, workcell=WC)
    first = LeaseKeeper(leases, run, [binding(asset, granted[asset].revision)], EDGE)
    second = LeaseKeeper(leases, run, [binding(asset, granted[asset].revision)], "edge-2")

    await first.claim()
    state = await leases.read(key)
    assert state.holder is not None and state.holder.edge == EDGE and state.holder.claimed
    assert state.revision == first.tokens[key] > granted[asset].revision
    assert first.ttl_seconds == 3600  # paced by the lease's own TTL
    await first.claim()  # claiming again (a lost ack) is no conflict with itself

    with pytest.raises(ClaimedElsewhere) as taken:
        await second.claim()
    assert taken.value.edge == EDGE

    await first.unclaim()
    unclaimed = await leases.read(key)
    assert unclaimed.holder is not None and unclaimed.holder.edge is None
    await second.claim()
    claimed = await leases.read(key)
    assert claimed.holder is not None and claimed.holder.edge == "edge-2"
    await leases.release(key, claimed.revision)


async def test_a_lease_held_or_gone_cannot_be_claimed(leases: LeaseStore) -> None:
    asset, run, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    key = lease_key(WC, asset)
    granted = await leases.acquire_all(run, [Claim(asset, "plate")], ttl_seconds=3600, workcell=WC)
    keeper = LeaseKeeper(leases, run, [binding(asset, granted[asset].revision)], EDGE)
    await hold(leases, key, ttl_seconds=0)
    with pytest.raises(LeaseLost, match="held for an intervention"):
        await keeper.claim()

    await leases.force_release(key, "operator")
    await leases.acquire_all(other, [Claim(asset, "plate")], ttl_seconds=3600, workcell=WC)
    with pytest.raises(LeaseLost, match="no longer held"):
        await keeper.claim()
    await leases.release_holder(key, other)
