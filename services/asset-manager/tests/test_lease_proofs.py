"""Proofs for leased, all-or-nothing reservations against the real nats-server.

- Many requesters over overlapping asset sets: from the lease bucket's own history, no asset
  ever has two live holders, and every request is granted or times out.
- Waiters are served by priority, then submission order; a waiter can time out and then holds
  nothing; expiry and force-release are observable events.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from nats.js.errors import NotFoundError
from pylabrobot.resources import Plate

from praxis_contracts.assets import (
    AssetDraft,
    AssetsReserved,
    ForceReleaseLease,
    LeaseExpired,
    LeaseForceReleased,
    ListLeases,
    RegisterWorkcell,
    ReleaseAssets,
    ReservationFailed,
    ReserveAssets,
    WorkcellLayout,
)
from praxis_contracts.protocols import AssetRequirementSpec
from praxis_contracts.topology import ASSET_LEASES
from praxis_devstack.bench_reservations import Events
from praxis_plr.types import fqn
from praxis_runtime.bus import Bus
from praxis_runtime.leases import LeaseStore, decode_holder, is_tombstone, lease_key

pytestmark = pytest.mark.integration

PLATE = fqn(Plate)
STREAM = f"KV_{ASSET_LEASES.bucket}"


async def plates_workcell(client: Bus, count: int) -> WorkcellLayout:
    drafts = [
        AssetDraft(kind="resource", name=f"plate_{i}", fqn=PLATE, definition={})
        for i in range(count)
    ]
    name = f"proof-{uuid.uuid4().hex[:8]}"
    return await client.request(RegisterWorkcell(name=name, assets=drafts), timeout=30)


def wanting(names: list[str]) -> tuple[list[AssetRequirementSpec], dict[str, str]]:
    requirements = [
        AssetRequirementSpec(name=f"r{i}", type_fqn=PLATE, kind="resource")
        for i in range(len(names))
    ]
    return requirements, {f"r{i}": name for i, name in enumerate(names)}


@dataclass
class Outcome:
    run_id: uuid.UUID
    wanted: list[str]
    granted: AssetsReserved | None = None
    failed: ReservationFailed | None = None
    released: bool = False


async def first_of(*futures: asyncio.Future[Any], timeout: float = 30) -> None:
    done, _ = await asyncio.wait(futures, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    assert done, "neither granted nor failed in time"


async def history(client: Bus, since: int, keys: set[str]) -> list[tuple[str, int, Any]]:
    """Every message the bucket kept for ``keys`` after sequence ``since``: (key, seq, holder)."""
    last = (await client.js.stream_info(STREAM)).state.last_seq
    found = []
    for seq in range(since + 1, last + 1):
        try:
            msg = await client.js.get_msg(STREAM, seq=seq)
        except NotFoundError:
            continue
        key = (msg.subject or "").removeprefix(f"$KV.{ASSET_LEASES.bucket}.")
        if key in keys:
            live = not is_tombstone(msg.headers) and msg.data
            found.append((key, seq, decode_holder(msg.data) if live else None))
    return found


async def test_no_asset_ever_has_two_live_holders(asset_manager: Any, client: Bus) -> None:
    layout = await plates_workcell(client, 8)
    names = [a.name for a in layout.assets]
    keys = {lease_key(layout.workcell.name, a.accession_id) for a in layout.assets}
    start = (await client.js.stream_info(STREAM)).state.last_seq
    events = Events()
    await events.subscribe(client)
    rng = random.Random(7)
    outcomes = [Outcome(uuid.uuid4(), rng.sample(names, rng.randint(1, 3))) for _ in range(48)]

    async def requester(outcome: Outcome, index: int) -> None:
        requirements, pins = wanting(outcome.wanted)
        granted = events.future("granted", outcome.run_id)
        failed = events.future("failed", outcome.run_id)
        await client.publish(
            ReserveAssets(
                run_id=outcome.run_id,
                requirements=requirements,
                pins=pins,
                workcell=layout.workcell.name,
                priority=index % 3,
                wait_timeout_seconds=0.05 if index % 8 == 0 else 20,
            )
        )
        await first_of(granted, failed)
        if granted.done():
            outcome.granted = granted.result()
            released = events.future("released", outcome.run_id)
            await client.publish(ReleaseAssets(run_id=outcome.run_id, reason="done"))
            done, _ = await asyncio.wait({released}, timeout=10)
            outcome.released = bool(done)
        else:
            outcome.failed = failed.result()

    await asyncio.gather(*(requester(o, i) for i, o in enumerate(outcomes)))

    # The bucket's history: at no point does a key pass from one live holder to another.
    holders: dict[str, uuid.UUID | None] = {}
    writes = await history(client, start, keys)
    for key, seq, holder in writes:
        current = holders.get(key)
        if holder is not None and current is not None:
            assert current == holder.run_id, f"{key}@{seq}: {holder.run_id} while {current} holds"
        holders[key] = holder.run_id if holder is not None else None
    assert not any(holders.values()), "every lease was released"

    # Every request was granted in full (and released), or timed out holding nothing.
    for outcome in outcomes:
        if outcome.granted is not None:
            bound = sorted(b.asset_name for b in outcome.granted.bindings)
            assert bound == sorted(outcome.wanted)
            assert outcome.released
        else:
            assert outcome.failed is not None and outcome.failed.error.code == "timeout"
    assert sum(o.granted is not None for o in outcomes) >= 40
    assert len(writes) >= 2 * sum(len(o.wanted) for o in outcomes if o.granted)
    live = (await client.request(ListLeases())).items
    assert not [lease for lease in live if lease.lease_key in keys]


async def test_waiters_are_served_by_priority_then_submission_order(
    asset_manager: Any, client: Bus
) -> None:
    layout = await plates_workcell(client, 1)
    events = Events()
    await events.subscribe(client)
    requirements, pins = wanting(["plate_0"])
    holder, low, high, high_later = (uuid.uuid4() for _ in range(4))
    await client.publish(
        ReserveAssets(
            run_id=holder, requirements=requirements, pins=pins, workcell=layout.workcell.name
        )
    )
    await asyncio.wait_for(events.future("granted", holder), 15)
    for run_id, priority in ((low, 0), (high, 5), (high_later, 5)):
        await client.publish(
            ReserveAssets(
                run_id=run_id,
                requirements=requirements,
                pins=pins,
                workcell=layout.workcell.name,
                priority=priority,
            )
        )
        waiting = await asyncio.wait_for(events.future("waiting", run_id), 15)
        assert holder in waiting.blocked_by

    order = []
    for previous in (holder, high, high_later):
        await client.publish(ReleaseAssets(run_id=previous))
        order.append(
            await asyncio.wait_for(_first_granted(events, [low, high, high_later], order), 15)
        )
    assert order == [high, high_later, low]


async def _first_granted(events: Events, runs: list[uuid.UUID], seen: list[uuid.UUID]) -> uuid.UUID:
    pending = {events.future("granted", r): r for r in runs if r not in seen}
    done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    return pending[done.pop()]


async def test_a_waiter_that_times_out_holds_nothing(asset_manager: Any, client: Bus) -> None:
    layout = await plates_workcell(client, 2)
    leases = LeaseStore(client.publisher, ASSET_LEASES.bucket)
    events = Events()
    await events.subscribe(client)
    holder, waiter = uuid.uuid4(), uuid.uuid4()
    name = layout.workcell.name
    one, pins_one = wanting(["plate_0"])
    await client.publish(
        ReserveAssets(run_id=holder, requirements=one, pins=pins_one, workcell=name)
    )
    await asyncio.wait_for(events.future("granted", holder), 15)

    both, pins_both = wanting(["plate_1", "plate_0"])
    await client.publish(
        ReserveAssets(
            run_id=waiter,
            requirements=both,
            pins=pins_both,
            workcell=name,
            wait_timeout_seconds=0.3,
        )
    )
    failed = await asyncio.wait_for(events.future("failed", waiter), 15)
    assert failed.error.code == "timeout"
    for asset in layout.assets:
        state = await leases.read(lease_key(name, asset.accession_id))
        assert state.holder is None or state.holder.run_id != waiter


async def test_expiry_and_force_release_are_events(asset_manager: Any, client: Bus) -> None:
    layout = await plates_workcell(client, 2)
    leases = LeaseStore(client.publisher, ASSET_LEASES.bucket)
    events = Events()
    await events.subscribe(client)
    expired_q: asyncio.Queue[LeaseExpired] = asyncio.Queue()
    forced_q: asyncio.Queue[LeaseForceReleased] = asyncio.Queue()

    async def on_expired(msg: Any) -> None:
        expired_q.put_nowait(LeaseExpired.model_validate_json(msg.data))

    async def on_forced(msg: Any) -> None:
        forced_q.put_nowait(LeaseForceReleased.model_validate_json(msg.data))

    plate_0, plate_1 = layout.assets[0].accession_id, layout.assets[1].accession_id
    await client.nc.subscribe(LeaseExpired.subscription_subject(str(plate_0)), cb=on_expired)
    await client.nc.subscribe(LeaseForceReleased.subscription_subject(str(plate_1)), cb=on_forced)
    await client.nc.flush()
    name = layout.workcell.name

    short, successor, forced = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    req, pins = wanting(["plate_0"])
    await client.publish(
        ReserveAssets(run_id=short, requirements=req, pins=pins, workcell=name, ttl_seconds=1)
    )
    await asyncio.wait_for(events.future("granted", short), 15)
    await client.publish(
        ReserveAssets(run_id=successor, requirements=req, pins=pins, workcell=name)
    )
    expired = await asyncio.wait_for(expired_q.get(), 15)  # pushed when the server expires it
    assert (expired.run_id, expired.asset_id) == (short, plate_0)
    granted = await asyncio.wait_for(events.future("granted", successor), 15)
    assert granted.bindings[0].token > expired.token

    req1, pins1 = wanting(["plate_1"])
    await client.publish(ReserveAssets(run_id=forced, requirements=req1, pins=pins1, workcell=name))
    held = await asyncio.wait_for(events.future("granted", forced), 15)
    lease = await client.request(ForceReleaseLease(asset_id=plate_1, reason="stuck gripper"))
    assert (lease.run_id, lease.token) == (forced, held.bindings[0].token)
    audit = await asyncio.wait_for(forced_q.get(), 15)
    assert (audit.run_id, audit.reason) == (forced, "stuck gripper")
    assert (await leases.read(lease_key(name, plate_1))).holder is None
    message = json.dumps(audit.model_dump(mode="json"))
    assert "stuck gripper" in message
