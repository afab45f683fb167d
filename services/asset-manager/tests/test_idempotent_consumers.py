"""Every asset-manager consumer handles the same message twice as if once.

JetStream delivers at least once: a redelivery after a lost ack, or the same command published
twice (a different ``Nats-Msg-Id``, or none, so the stream keeps both). Here each command is
published twice without a message id, so both copies reach the asset-manager, usually handled
at the same time; the lease bucket's own history shows what was written.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.js.errors import NotFoundError
from pylabrobot.resources import Plate

from praxis_contracts.assets import (
    AssetDraft,
    AssetsHeld,
    AssetsReleased,
    AssetsReserved,
    AssetStatus,
    HoldAssets,
    RegisterWorkcell,
    ReleaseAssets,
    ReservationWaiting,
    ReserveAssets,
    WorkcellLayout,
)
from praxis_contracts.inventory import AssetStatusChanged, ListAssetStatusHistory
from praxis_contracts.protocols import AssetRequirementSpec
from praxis_contracts.runs import RunStarted
from praxis_contracts.topology import ASSET_LEASES, COMMANDS, EVENTS
from praxis_devstack.pytest_plugin import drained
from praxis_plr.types import fqn
from praxis_runtime.bus import Bus
from praxis_runtime.leases import LeaseStore, decode_holder, is_tombstone, lease_key

pytestmark = pytest.mark.integration

PLATE = fqn(Plate)
STREAM = f"KV_{ASSET_LEASES.bucket}"


@pytest.fixture
async def plates(am: Bus) -> WorkcellLayout:
    """A fresh workcell of three plates."""
    drafts = [
        AssetDraft(kind="resource", name=f"plate_{i}", fqn=PLATE, definition={}) for i in range(3)
    ]
    name = f"twice-{uuid.uuid4().hex[:8]}"
    return await am.request(RegisterWorkcell(name=name, assets=drafts), timeout=30)


def reserve(run_id: uuid.UUID, layout: WorkcellLayout) -> ReserveAssets:
    """Every plate of ``layout``, one requirement each."""
    requirements = [
        AssetRequirementSpec(name=a.name, type_fqn=PLATE, kind="resource") for a in layout.assets
    ]
    return ReserveAssets(
        run_id=run_id,
        requirements=requirements,
        pins={a.name: a.name for a in layout.assets},
        workcell=layout.workcell.name,
    )


def keys_of(layout: WorkcellLayout) -> set[str]:
    return {lease_key(layout.workcell.name, a.accession_id) for a in layout.assets}


async def last_seq(am: Bus) -> int:
    return int((await am.js.stream_info(STREAM)).state.last_seq)


async def writes_since(am: Bus, since: int, keys: set[str]) -> list[tuple[str, int, Any]]:
    """What the bucket stored for ``keys`` after ``since``: (key, revision, holder or None)."""
    found = []
    for seq in range(since + 1, await last_seq(am) + 1):
        try:
            msg = await am.js.get_msg(STREAM, seq=seq)
        except NotFoundError:
            continue
        key = (msg.subject or "").removeprefix(f"$KV.{ASSET_LEASES.bucket}.")
        if key in keys:
            live = not is_tombstone(msg.headers) and msg.data
            found.append((key, seq, decode_holder(msg.data) if live else None))
    return found


async def twice(am: Bus, message: Any) -> None:
    """Publish the same message twice, without a message id: the stream keeps both copies."""
    await am.publish(message)
    await am.publish(message)


async def granted(am: Bus, tap: Any, layout: WorkcellLayout) -> tuple[uuid.UUID, AssetsReserved]:
    run_id = uuid.uuid4()
    grants = await tap(AssetsReserved, str(run_id))
    await am.publish(reserve(run_id, layout))
    return run_id, await grants.next()


async def test_reserve_delivered_twice_grants_once_and_re_announces_the_grant(
    am: Bus, tap: Any, leases: LeaseStore, plates: WorkcellLayout
) -> None:
    run_id = uuid.uuid4()
    grants, releases = (
        await tap(AssetsReserved, str(run_id)),
        await tap(AssetsReleased, str(run_id)),
    )
    start = await last_seq(am)

    await twice(am, reserve(run_id, plates))

    first, second = await grants.next(), await grants.next()
    assert second == first  # the same bindings and tokens, announced again
    assert len(first.bindings) == 3
    writes = await writes_since(am, start, keys_of(plates))
    assert sorted((key, seq) for key, seq, _ in writes) == sorted(
        (b.lease_key, b.token) for b in first.bindings
    ), "one lease per asset, no second lease and no release"
    assert all(holder is not None and holder.run_id == run_id for _, _, holder in writes)
    for binding in first.bindings:
        assert (await leases.read(binding.lease_key)).revision == binding.token
    await releases.assert_silent(0)
    await grants.assert_silent(0)


async def test_reserve_delivered_twice_while_it_must_wait_waits_once(
    am: Bus, tap: Any, plates: WorkcellLayout
) -> None:
    holder, _ = await granted(am, tap, plates)
    run_id = uuid.uuid4()
    waiting = await tap(ReservationWaiting, str(run_id))
    grants = await tap(AssetsReserved, str(run_id))

    await twice(am, reserve(run_id, plates))

    assert (await waiting.next()).blocked_by == [holder]
    await waiting.assert_silent()  # the second copy finds the run already waiting
    await am.publish(ReleaseAssets(run_id=holder))
    assert len((await grants.next()).bindings) == 3
    await grants.assert_silent()


async def test_a_release_right_behind_the_reservation_leaves_nothing_held(
    am: Bus, tap: Any, leases: LeaseStore, plates: WorkcellLayout
) -> None:
    """The two commands of one run reach different consumers and may be handled together; the
    release must not run while the grant is half done and miss the leases it is writing."""
    for _ in range(5):
        run_id = uuid.uuid4()
        releases = await tap(AssetsReleased, str(run_id))
        grants = await tap(AssetsReserved, str(run_id))

        await am.publish(reserve(run_id, plates))
        await am.publish(ReleaseAssets(run_id=run_id))
        await drained(am.js, COMMANDS.name, "asset-manager-reserve", "asset-manager-release")

        if grants.drained():  # granted before the release was handled: released then
            await releases.next()
        for key in keys_of(plates):
            state = await leases.read(key)
            assert state.holder is None, f"run {run_id} was released but holds {key}"


async def test_release_delivered_twice_releases_once(
    am: Bus, tap: Any, leases: LeaseStore, plates: WorkcellLayout
) -> None:
    run_id, grant = await granted(am, tap, plates)
    releases = await tap(AssetsReleased, str(run_id))
    start = await last_seq(am)

    await twice(am, ReleaseAssets(run_id=run_id, reason="done"))

    event = await releases.next()
    assert sorted(event.asset_ids) == sorted(b.asset_id for b in grant.bindings)
    await releases.assert_silent()
    writes = await writes_since(am, start, keys_of(plates))
    assert sorted(key for key, _, holder in writes if holder is None) == sorted(keys_of(plates))
    assert len(writes) == 3, "one tombstone per lease, nothing else"
    for key in keys_of(plates):
        assert (await leases.read(key)).holder is None


async def test_hold_delivered_twice_holds_once(
    am: Bus, tap: Any, leases: LeaseStore, plates: WorkcellLayout
) -> None:
    run_id, grant = await granted(am, tap, plates)
    held = await tap(AssetsHeld, str(run_id))
    start = await last_seq(am)

    await twice(am, HoldAssets(run_id=run_id, reason="edge lost"))

    first, again = await held.next(), await held.next()  # announced, then re-announced
    assert sorted(first.asset_ids) == sorted(b.asset_id for b in grant.bindings)
    assert again.asset_ids == first.asset_ids
    writes = await writes_since(am, start, keys_of(plates))
    assert sorted(key for key, _, _ in writes) == sorted(keys_of(plates)), "each lease held once"
    for key, seq, holder in writes:
        assert holder is not None and holder.held and holder.run_id == run_id
        assert (await leases.read(key)).revision == seq
    subject = AssetsHeld.subscription_subject(str(run_id))
    stored = (await am.js.stream_info(EVENTS.name, subjects_filter=subject)).state.subjects
    assert stored == {subject: 1}, "the message id keeps one AssetsHeld in the stream"


async def test_run_started_delivered_twice_marks_the_assets_in_use_once(
    am: Bus, tap: Any, plates: WorkcellLayout
) -> None:
    run_id, grant = await granted(am, tap, plates)
    asset = grant.bindings[0].asset_id
    in_use = await tap(
        AssetStatusChanged, str(asset), where=lambda e: e.status == AssetStatus.IN_USE
    )

    # Another workcell's orchestrator names the run (under its own key): nothing is marked.
    await twice(
        am,
        RunStarted(run_id=run_id, at=datetime.now(UTC), workcell="elsewhere", edge_instance="e"),
    )
    await in_use.assert_silent(1.0)
    started = RunStarted(
        run_id=run_id, at=datetime.now(UTC), workcell=plates.workcell.name, edge_instance="e"
    )
    await twice(am, started)

    event = await in_use.next()
    assert (event.run_id, event.previous) == (run_id, AssetStatus.RESERVED)
    await in_use.assert_silent(1.0)
    history = await am.request(
        ListAssetStatusHistory(accession_id=asset, status=AssetStatus.IN_USE)
    )
    assert [entry.run_id for entry in history.items] == [run_id]


async def test_reserve_redelivered_after_the_release_does_not_lease_again(
    am: Bus, tap: Any, leases: LeaseStore, plates: WorkcellLayout
) -> None:
    run_id, _ = await granted(am, tap, plates)
    releases = await tap(AssetsReleased, str(run_id))
    await am.publish(ReleaseAssets(run_id=run_id))
    await releases.next()
    grants = await tap(AssetsReserved, str(run_id))
    waiting = await tap(ReservationWaiting, str(run_id))
    start = await last_seq(am)

    await twice(am, reserve(run_id, plates))

    await grants.assert_silent()
    await waiting.assert_silent(0)
    assert await writes_since(am, start, keys_of(plates)) == []
    for key in keys_of(plates):
        assert (await leases.read(key)).holder is None
