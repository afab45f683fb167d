"""Asset-manager against real NATS (requests, commands, events, the KV lease bucket) and Postgres.

One asset-manager runs for the module (its durable consumers have fixed names: never two at
once). Every test registers its own workcell, so lease keys (one per asset id) never collide with
another test's, and every run id is fresh.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.resources import Plate, TipRack, Trough

from praxis_contracts.assets import (
    AssetsReleased,
    AssetsReserved,
    GetWorkcellLayout,
    ListAssets,
    RegisterWorkcell,
    ReleaseAssets,
    ReservationFailed,
    ReservationWaiting,
    ReserveAssets,
    WaitReason,
    WorkcellLayout,
)
from praxis_contracts.errors import ErrorCode, NotFound, UnknownAssetType
from praxis_contracts.protocols import AssetRequirementSpec
from praxis_plr.layout import demo_workcell
from praxis_plr.types import fqn
from praxis_runtime.bus import Bus
from praxis_runtime.leases import LeaseStore, lease_key

pytestmark = pytest.mark.integration

PLATE = fqn(Plate)
STOP_TIMEOUT = 3.0
STOP_ATTEMPTS = 8


@pytest.fixture
async def workcell(am: Bus) -> WorkcellLayout:
    """A fresh demo workcell (new asset ids, so new lease keys) under a unique name."""
    name = f"wc-{uuid.uuid4().hex[:10]}"
    return await am.request(RegisterWorkcell(name=name, assets=demo_workcell()), timeout=30)


def plate(name: str = "plate") -> AssetRequirementSpec:
    return AssetRequirementSpec(name=name, type_fqn=PLATE, kind="resource")


def asset_id(layout: WorkcellLayout, name: str) -> uuid.UUID:
    (found,) = [a.accession_id for a in layout.assets if a.name == name]
    return found


@dataclass(frozen=True)
class Run:
    """A fresh run id with taps on its three reservation events."""

    id: uuid.UUID
    granted: Any
    failed: Any
    released: Any


@pytest.fixture
async def new_run(tap: Any) -> Any:
    async def make() -> Run:
        run_id = uuid.uuid4()
        key = str(run_id)
        return Run(
            run_id,
            await tap(AssetsReserved, key),
            await tap(ReservationFailed, key),
            await tap(AssetsReleased, key),
        )

    return make


async def reserve(
    am: Bus,
    run: Run,
    layout: WorkcellLayout,
    requirements: list[AssetRequirementSpec],
    **fields: Any,
) -> None:
    await am.publish(
        ReserveAssets(
            run_id=run.id, requirements=requirements, workcell=layout.workcell.name, **fields
        )
    )


async def settled(run: Run, timeout: float = 15.0) -> AssetsReserved | ReservationFailed:
    """The run's grant or its failure, whichever comes first."""
    waits = {
        asyncio.ensure_future(run.granted.next(timeout)),
        asyncio.ensure_future(run.failed.next(timeout)),
    }
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for waiting in pending:
        waiting.cancel()
    return done.pop().result()


async def granted(am: Bus, run: Run, layout: WorkcellLayout, pin: str) -> AssetsReserved:
    """Reserve the plate ``pin`` for ``run`` and wait for the grant."""
    await reserve(am, run, layout, [plate()], pins={"plate": pin})
    return await run.granted.next()


# -- inventory ----------------------------------------------------------------------------------


async def test_register_workcell_resolves_types_and_parents(workcell: WorkcellLayout) -> None:
    by_name = {a.name: a for a in workcell.assets}
    assert sorted(by_name) == sorted(d.name for d in demo_workcell())
    assert len(workcell.assets) == 6
    for asset in workcell.assets:
        assert asset.workcell_id == workcell.workcell.accession_id
        assert asset.type_mro[0] == asset.fqn
    assert PLATE in by_name["source_plate"].type_mro
    assert fqn(TipRack) in by_name["tip_rack"].type_mro
    assert fqn(LiquidHandler) in by_name["liquid_handler"].type_mro
    assert by_name["liquid_handler"].kind == "machine"
    assert by_name["liquid_handler"].parent_id is None
    assert by_name["deck"].parent_id == by_name["liquid_handler"].accession_id
    assert by_name["source_plate"].parent_id == by_name["deck"].accession_id
    assert by_name["source_plate"].slot == "plate_carrier-0"
    assert by_name["source_plate"].state is not None


async def test_unknown_asset_type_is_refused_and_nothing_is_created(am: Bus) -> None:
    name = f"wc-{uuid.uuid4().hex[:10]}"
    drafts = demo_workcell()
    bad = drafts[2].model_copy(update={"fqn": "pylabrobot.resources.NopeNope"})
    with pytest.raises(UnknownAssetType):
        await am.request(RegisterWorkcell(name=name, assets=[*drafts[:2], bad, *drafts[3:]]))
    with pytest.raises(NotFound):
        await am.request(GetWorkcellLayout(workcell=name))


async def test_list_assets_filters_by_kind_workcell_and_type(
    am: Bus, workcell: WorkcellLayout
) -> None:
    mine = {"workcell_accession_id": workcell.workcell.accession_id}

    labware = await am.request(ListAssets(kind="resource", filters=mine))
    plates = await am.request(ListAssets(fqn=PLATE, filters={**mine, "sort_by": "name"}))
    machines = await am.request(ListAssets(kind="machine", filters={**mine, "limit": 1}))

    assert labware.total == 3
    assert sorted(a.name for a in labware.items) == ["dest_plate", "source_plate", "tip_rack"]
    assert [a.name for a in plates.items] == ["dest_plate", "source_plate"]
    assert (machines.total, len(machines.items)) == (2, 1)


async def test_layout_by_name_and_by_id(am: Bus, workcell: WorkcellLayout) -> None:
    by_name = await am.request(GetWorkcellLayout(workcell=workcell.workcell.name))
    by_id = await am.request(GetWorkcellLayout(workcell=str(workcell.workcell.accession_id)))

    assert by_name.workcell == by_id.workcell == workcell.workcell
    assert {a.accession_id for a in by_name.assets} == {a.accession_id for a in workcell.assets}
    assert by_id.assets == by_name.assets
    with pytest.raises(NotFound):
        await am.request(GetWorkcellLayout(workcell=f"wc-{uuid.uuid4().hex[:10]}"))


# -- reservations -------------------------------------------------------------------------------


async def test_grant_binds_and_fences_with_the_kv_revision(
    am: Bus, workcell: WorkcellLayout, new_run: Any, leases: LeaseStore
) -> None:
    run = await new_run()

    reserved = await granted(am, run, workcell, "source_plate")

    assert (reserved.workcell_id, reserved.workcell_name) == (
        workcell.workcell.accession_id,
        workcell.workcell.name,
    )
    (binding,) = reserved.bindings
    plate_id = asset_id(workcell, "source_plate")
    assert (binding.requirement, binding.asset_name, binding.asset_id) == (
        "plate",
        "source_plate",
        plate_id,
    )
    assert (binding.kind, binding.fqn) == ("resource", PLATE)
    assert binding.lease_key == lease_key(workcell.workcell.name, plate_id)
    lease = await leases.read(binding.lease_key)
    assert lease.revision == binding.token
    assert lease.holder is not None
    assert (lease.holder.run_id, lease.holder.asset_id) == (run.id, plate_id)


async def test_waiter_is_granted_when_the_holder_releases(
    am: Bus, workcell: WorkcellLayout, new_run: Any, leases: LeaseStore, tap: Any
) -> None:
    first, second = await new_run(), await new_run()
    held = await granted(am, first, workcell, "source_plate")
    waiting = await tap(ReservationWaiting, str(second.id))

    await reserve(am, second, workcell, [plate()], pins={"plate": "source_plate"})
    assert (await waiting.next()).blocked_by == [first.id]
    await second.granted.assert_silent()
    await second.failed.assert_silent(0)

    await am.publish(ReleaseAssets(run_id=first.id, reason="done"))
    released = await first.released.next()
    assert (released.asset_ids, released.reason) == ([held.bindings[0].asset_id], "done")
    reserved = await second.granted.next()
    (binding,) = reserved.bindings
    assert binding.asset_name == "source_plate"
    assert binding.token > held.bindings[0].token
    lease = await leases.read(binding.lease_key)
    assert lease.holder is not None and lease.holder.run_id == second.id
    assert lease.revision == binding.token


async def test_waiter_is_woken_by_the_lease_watcher(
    am: Bus, workcell: WorkcellLayout, new_run: Any, leases: LeaseStore
) -> None:
    """A lease that disappears from the bucket (no ReleaseAssets at all) wakes the waiter."""
    first, second = await new_run(), await new_run()
    (held,) = (await granted(am, first, workcell, "dest_plate")).bindings
    await reserve(am, second, workcell, [plate()], pins={"plate": "dest_plate"})
    await second.granted.assert_silent()

    assert await leases.release(held.lease_key, held.token)

    (binding,) = (await second.granted.next()).bindings
    assert binding.asset_id == held.asset_id


async def test_expired_lease_wakes_the_waiter(
    am: Bus, workcell: WorkcellLayout, new_run: Any, leases: LeaseStore
) -> None:
    first, second = await new_run(), await new_run()
    await reserve(am, first, workcell, [plate()], pins={"plate": "source_plate"}, ttl_seconds=1)
    (held,) = (await first.granted.next()).bindings

    await reserve(am, second, workcell, [plate()], pins={"plate": "source_plate"})

    # The first lease expires on the server after 1 s; nobody releases it.
    (binding,) = (await second.granted.next(timeout=6)).bindings
    assert binding.asset_id == held.asset_id
    lease = await leases.read(binding.lease_key)
    assert lease.holder is not None and lease.holder.run_id == second.id


async def test_reservation_is_all_or_nothing(
    am: Bus, workcell: WorkcellLayout, new_run: Any, leases: LeaseStore
) -> None:
    holder, both, later = await new_run(), await new_run(), await new_run()
    await granted(am, holder, workcell, "source_plate")
    two_plates = [plate("first"), plate("second")]
    pins = {"first": "source_plate", "second": "dest_plate"}

    await reserve(am, both, workcell, two_plates, pins=pins)
    await both.granted.assert_silent()

    dest = await leases.read(lease_key(workcell.workcell.name, asset_id(workcell, "dest_plate")))
    assert dest.holder is None or dest.holder.run_id != both.id  # no hold-and-wait
    # A later run wanting only the free plate queues behind the earlier, bigger request.
    await reserve(am, later, workcell, [plate()], pins={"plate": "dest_plate"})
    await later.granted.assert_silent()

    await am.publish(ReleaseAssets(run_id=holder.id))
    reserved = await both.granted.next()
    assert {b.requirement: b.asset_name for b in reserved.bindings} == pins
    for binding in reserved.bindings:
        lease = await leases.read(binding.lease_key)
        assert lease.holder is not None and lease.holder.run_id == both.id
        assert lease.revision == binding.token
    await later.granted.assert_silent()
    await am.publish(ReleaseAssets(run_id=both.id))
    assert [b.asset_name for b in (await later.granted.next()).bindings] == ["dest_plate"]


async def test_a_run_needing_no_assets_is_granted_at_once(
    am: Bus, workcell: WorkcellLayout, new_run: Any
) -> None:
    run = await new_run()

    await reserve(am, run, workcell, [])

    reserved = await settled(run)
    assert isinstance(reserved, AssetsReserved), reserved
    assert (reserved.workcell_id, reserved.workcell_name, reserved.bindings) == (
        workcell.workcell.accession_id,
        workcell.workcell.name,
        [],
    )


@pytest.mark.parametrize(
    ("requirement", "pins"),
    [
        (AssetRequirementSpec(name="trough", type_fqn=fqn(Trough), kind="resource"), {}),
        (plate(), {"plate": "no_such_plate"}),
    ],
    ids=["no-asset-of-that-type", "pin-to-a-missing-asset"],
)
async def test_unsatisfiable_request_fails(
    am: Bus,
    workcell: WorkcellLayout,
    new_run: Any,
    requirement: AssetRequirementSpec,
    pins: dict[str, str],
) -> None:
    run = await new_run()
    await reserve(am, run, workcell, [requirement], pins=pins)

    failed = await run.failed.next()
    assert failed.error.code == ErrorCode.NO_MATCHING_ASSETS
    await run.granted.assert_silent(0)


async def test_unknown_workcell_fails(am: Bus, new_run: Any) -> None:
    run = await new_run()
    await am.publish(
        ReserveAssets(run_id=run.id, requirements=[plate()], workcell=f"wc-{uuid.uuid4().hex}")
    )
    assert (await run.failed.next()).error.code == ErrorCode.NOT_FOUND


async def test_release_is_idempotent(
    am: Bus, workcell: WorkcellLayout, new_run: Any, leases: LeaseStore
) -> None:
    run = await new_run()
    (binding,) = (await granted(am, run, workcell, "source_plate")).bindings

    await am.publish(ReleaseAssets(run_id=run.id, reason="finished"))
    assert (await run.released.next()).asset_ids == [binding.asset_id]
    await am.publish(ReleaseAssets(run_id=run.id, reason="redelivered"))
    await am.publish(ReleaseAssets(run_id=uuid.uuid4()))  # never reserved: nothing to release

    await run.released.assert_silent()
    assert (await leases.read(binding.lease_key)).holder is None
    after = await new_run()  # the service still serves
    (again,) = (await granted(am, after, workcell, "source_plate")).bindings
    assert again.asset_id == binding.asset_id


async def test_duplicate_releases_delivered_together_announce_once(
    am: Bus, workcell: WorkcellLayout, new_run: Any, leases: LeaseStore
) -> None:
    """JetStream redelivers; two copies of one ReleaseAssets may be handled concurrently."""
    run = await new_run()
    (binding,) = (await granted(am, run, workcell, "dest_plate")).bindings

    await am.publish(ReleaseAssets(run_id=run.id))
    await am.publish(ReleaseAssets(run_id=run.id))

    assert (await run.released.next()).asset_ids == [binding.asset_id]
    await run.released.assert_silent()
    assert (await leases.read(binding.lease_key)).holder is None


async def test_duplicate_reserve_re_announces_the_same_grant(
    am: Bus, workcell: WorkcellLayout, new_run: Any
) -> None:
    run = await new_run()
    first = await granted(am, run, workcell, "dest_plate")

    again = await granted(am, run, workcell, "dest_plate")

    assert again.bindings == first.bindings
    assert (again.workcell_id, again.workcell_name) == (first.workcell_id, first.workcell_name)


async def test_reserve_after_release_does_not_lease_again(
    am: Bus, workcell: WorkcellLayout, new_run: Any, leases: LeaseStore
) -> None:
    """A late duplicate ReserveAssets (redelivered after the run ended) must not re-lease."""
    run = await new_run()
    (binding,) = (await granted(am, run, workcell, "dest_plate")).bindings
    await am.publish(ReleaseAssets(run_id=run.id))
    await run.released.next()

    await reserve(am, run, workcell, [plate()], pins={"plate": "dest_plate"})

    await run.granted.assert_silent()
    lease = await leases.read(binding.lease_key)
    assert lease.holder is None, f"run {run.id} ended but holds {binding.asset_name} again"


async def test_waiters_survive_a_restart(
    asset_manager: Any, am: Bus, workcell: WorkcellLayout, new_run: Any
) -> None:
    first, second = await new_run(), await new_run()
    held = await granted(am, first, workcell, "source_plate")
    await reserve(am, second, workcell, [plate()], pins={"plate": "source_plate"})
    await second.granted.assert_silent()

    # The waiter now lives only in PostgreSQL.
    assert await asset_manager.restart(within=STOP_TIMEOUT) < STOP_TIMEOUT
    await am.publish(ReleaseAssets(run_id=first.id))

    (binding,) = (await second.granted.next()).bindings
    assert binding.asset_id == held.bindings[0].asset_id
    assert binding.token > held.bindings[0].token


async def test_stop_right_after_a_watcher_grant_is_prompt(
    asset_manager: Any, am: Bus, workcell: WorkcellLayout, new_run: Any, leases: LeaseStore
) -> None:
    """SIGTERM may come at any moment, e.g. while the lease watcher is announcing a grant.

    Cancelling the watcher task alone is not enough: CPython 3.11's ``asyncio.wait_for`` (inside
    nats-py requests) drops a cancellation that arrives just as the awaited reply lands, and the
    watcher would then wait for the next lease change forever, and ``Service.stop`` with it. The
    race is narrow, so the scenario is repeated.
    """
    for attempt in range(STOP_ATTEMPTS):
        first, second = await new_run(), await new_run()
        (held,) = (await granted(am, first, workcell, "source_plate")).bindings
        await reserve(am, second, workcell, [plate()], pins={"plate": "source_plate"})
        await second.granted.assert_silent(0.2)
        assert await leases.release(held.lease_key, held.token)  # only the watcher can grant now
        await second.granted.next()

        took = await asset_manager.restart(within=STOP_TIMEOUT)

        assert took < STOP_TIMEOUT, f"stop hung for {took:.1f} s (attempt {attempt + 1})"
        await am.publish(ReleaseAssets(run_id=second.id))
        await second.released.next()


# -- on demand and in time: immediate, not_before, deadline ------------------------------------


def _soon(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def test_an_immediate_request_is_granted_when_its_assets_are_free(
    am: Bus, workcell: WorkcellLayout, new_run: Any
) -> None:
    run = await new_run()
    await reserve(am, run, workcell, [plate()], pins={"plate": "dest_plate"}, immediate=True)
    (binding,) = (await run.granted.next()).bindings
    assert binding.asset_name == "dest_plate"


async def test_an_immediate_request_is_refused_naming_the_holder_and_never_waits(
    am: Bus, workcell: WorkcellLayout, new_run: Any, tap: Any
) -> None:
    first, second = await new_run(), await new_run()
    await granted(am, first, workcell, "source_plate")
    waiting = await tap(ReservationWaiting, str(second.id))

    for _ in range(2):  # the same command twice (a redelivery): refused once, never granted
        await reserve(
            am, second, workcell, [plate()], pins={"plate": "source_plate"}, immediate=True
        )
    refused = await second.failed.next()
    assert refused.error.code == ErrorCode.ASSETS_UNAVAILABLE
    assert refused.error.details["blocked_by"] == [str(first.id)]
    assert refused.error.details["reason"] == "assets_busy"
    assert str(first.id) in refused.error.message
    await second.failed.assert_silent()
    await waiting.assert_silent(0)

    await am.publish(ReleaseAssets(run_id=first.id))
    await first.released.next()
    await second.granted.assert_silent()  # it never queued


async def test_a_request_waits_for_its_not_before_without_holding_back_others(
    am: Bus, workcell: WorkcellLayout, new_run: Any, tap: Any
) -> None:
    later, now_run = await new_run(), await new_run()
    waiting = await tap(ReservationWaiting, str(later.id))
    not_before = _soon(2.0)
    await reserve(
        am, later, workcell, [plate()], pins={"plate": "source_plate"}, not_before=not_before
    )
    said = await waiting.next()
    assert said.reason == WaitReason.NOT_BEFORE and said.blocked_by == []

    # A run submitted after it, for the same plate, is not held back by the appointment.
    await granted(am, now_run, workcell, "source_plate")
    await am.publish(ReleaseAssets(run_id=now_run.id))
    await now_run.released.next()

    grant = await later.granted.next(timeout=15)
    assert grant.bindings[0].asset_name == "source_plate"
    assert datetime.now(UTC) >= not_before


async def test_a_deferred_request_keeps_its_appointment_across_a_restart(
    asset_manager: Any, am: Bus, workcell: WorkcellLayout, new_run: Any
) -> None:
    run = await new_run()
    not_before = _soon(3.0)
    await reserve(am, run, workcell, [plate()], pins={"plate": "dest_plate"}, not_before=not_before)
    await run.granted.assert_silent(0.5)

    assert await asset_manager.restart(within=STOP_TIMEOUT) < STOP_TIMEOUT

    await run.granted.next(timeout=15)
    assert datetime.now(UTC) >= not_before


async def test_a_deferred_request_that_is_released_is_never_granted(
    am: Bus, workcell: WorkcellLayout, new_run: Any, tap: Any
) -> None:
    run = await new_run()
    waiting = await tap(ReservationWaiting, str(run.id))
    await reserve(am, run, workcell, [plate()], pins={"plate": "dest_plate"}, not_before=_soon(1.0))
    await waiting.next()
    await am.publish(ReleaseAssets(run_id=run.id, reason="cancelled"))
    await run.released.next()
    await run.granted.assert_silent(2.0)


async def test_a_waiting_request_fails_at_its_deadline(
    am: Bus, workcell: WorkcellLayout, new_run: Any
) -> None:
    first, second = await new_run(), await new_run()
    await granted(am, first, workcell, "source_plate")
    deadline = _soon(1.0)
    await reserve(
        am, second, workcell, [plate()], pins={"plate": "source_plate"}, deadline=deadline
    )

    failed = await second.failed.next(timeout=15)
    assert failed.error.code == ErrorCode.DEADLINE_PASSED
    assert datetime.now(UTC) >= deadline

    await am.publish(ReleaseAssets(run_id=first.id))
    await first.released.next()
    await second.granted.assert_silent()  # it no longer waits


async def test_a_request_whose_deadline_has_passed_fails_at_once(
    am: Bus, workcell: WorkcellLayout, new_run: Any
) -> None:
    run = await new_run()
    await reserve(am, run, workcell, [plate()], pins={"plate": "dest_plate"}, deadline=_soon(-1))
    assert (await run.failed.next()).error.code == ErrorCode.DEADLINE_PASSED
    await run.granted.assert_silent(0.5)


# -- a crash between a commit and its publish -----------------------------------------------------


class Crash:
    """What the outbox relay is handed after each commit is kept from it, as if the process died
    right after committing: those rows stay in the outbox table, published only by the relay
    of the next start. An event published directly, without a commit, is not held back."""

    def __init__(self, relay: Any) -> None:
        self.rows: list[Any] = []
        self._more = asyncio.Event()
        relay.committed = self._keep  # the instance's hook, for this process's life

    def _keep(self, rows: Any) -> None:
        self.rows.extend(message for _, message in rows)
        self._more.set()

    async def committed(self, event: type, run: Run, timeout: float = 10.0) -> None:
        """Wait until ``event`` of ``run`` was committed (and held back)."""
        subject = f"{event.subject}.{run.id}"  # type: ignore[attr-defined]
        async with asyncio.timeout(timeout):
            while not any(m.subject == subject for m in self.rows):
                self._more.clear()
                await self._more.wait()


async def waiting_behind(am: Bus, workcell: WorkcellLayout, new_run: Any) -> tuple[Run, Run]:
    """Two runs: the first holds the source plate, the second waits for it."""
    first, second = await new_run(), await new_run()
    await granted(am, first, workcell, "source_plate")
    await reserve(am, second, workcell, [plate()], pins={"plate": "source_plate"})
    await second.granted.assert_silent(0.2)
    return first, second


async def test_a_waiter_failing_at_its_time_limit_commits_the_failure_with_its_row(
    asset_manager: Any, am: Bus, workcell: WorkcellLayout, new_run: Any
) -> None:
    first, second = await new_run(), await new_run()
    await granted(am, first, workcell, "source_plate")
    crash = Crash(asset_manager.service.outbox)
    await reserve(
        am, second, workcell, [plate()], pins={"plate": "source_plate"}, wait_timeout_seconds=1
    )

    await crash.committed(ReservationFailed, second)  # settled "failed" with its event
    await second.failed.assert_silent(0.2)  # nothing went out of the process that died
    await asset_manager.restart(within=STOP_TIMEOUT)

    assert (await second.failed.next()).error.code == ErrorCode.TIMEOUT
    await am.publish(ReleaseAssets(run_id=first.id))
    await first.released.next()
    await second.granted.assert_silent()  # its row said failed: the restart did not resume it


async def test_a_waiter_granted_commits_the_grant_with_its_row(
    asset_manager: Any, am: Bus, workcell: WorkcellLayout, new_run: Any
) -> None:
    first, second = await waiting_behind(am, workcell, new_run)
    crash = Crash(asset_manager.service.outbox)
    await am.publish(ReleaseAssets(run_id=first.id))

    await crash.committed(AssetsReserved, second)
    await second.granted.assert_silent(0.2)
    await asset_manager.restart(within=STOP_TIMEOUT)

    grant = await second.granted.next()
    assert grant.bindings[0].asset_name == "source_plate"
    await second.granted.assert_silent()  # one grant: the restart found the row settled


async def test_a_released_waiter_commits_its_release_with_its_row(
    asset_manager: Any, am: Bus, workcell: WorkcellLayout, new_run: Any
) -> None:
    first, second = await waiting_behind(am, workcell, new_run)
    crash = Crash(asset_manager.service.outbox)
    await am.publish(ReleaseAssets(run_id=second.id, reason="cancelled"))

    await crash.committed(AssetsReleased, second)
    await second.released.assert_silent(0.2)
    await asset_manager.restart(within=STOP_TIMEOUT)

    assert (await second.released.next()).reason == "cancelled"
    await am.publish(ReleaseAssets(run_id=first.id))
    await first.released.next()
    await second.granted.assert_silent()  # withdrawn for good


async def test_a_request_that_must_wait_is_stored_with_its_waiting_event(
    asset_manager: Any, am: Bus, workcell: WorkcellLayout, new_run: Any, tap: Any
) -> None:
    first, second = await new_run(), await new_run()
    await granted(am, first, workcell, "source_plate")
    waiting = await tap(ReservationWaiting, str(second.id))
    crash = Crash(asset_manager.service.outbox)
    await reserve(am, second, workcell, [plate()], pins={"plate": "source_plate"})

    await crash.committed(ReservationWaiting, second)
    await waiting.assert_silent(0.2)
    await asset_manager.restart(within=STOP_TIMEOUT)

    assert (await waiting.next()).blocked_by == [first.id]
    await am.publish(ReleaseAssets(run_id=first.id))
    await second.granted.next()
