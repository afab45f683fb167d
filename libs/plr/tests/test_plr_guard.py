"""The per-run workcell view on real chatterbox objects: navigation and backend commands reach only
leased assets, the fence is checked before every command, other runs and code outside runs are
unaffected."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from praxis_contracts.errors import AssetNotLeased, LeaseLost
from praxis_plr import LiveWorkcell, WorkcellView, current_view, demo_workcell

ROBOT = ["liquid_handler", "tip_rack", "dest_plate"]


@pytest.fixture
async def live(layout_from_drafts: Any) -> AsyncIterator[LiveWorkcell]:
    async with await LiveWorkcell.build(layout_from_drafts(demo_workcell())) as workcell:
        yield workcell


async def as_run(view: WorkcellView, body: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``body`` in a task of its own with ``view`` current (as the orchestrator does)."""

    async def run() -> Any:
        current_view.set(view)
        return await body()

    return await asyncio.create_task(run(), context=contextvars.copy_context())


def volumes(live: LiveWorkcell, plate: str) -> list[float]:
    return [w.tracker.get_used_volume() for w in live.get(plate).get_all_items()]


async def test_navigation_to_an_unleased_asset_is_refused_naming_it_and_the_run(
    live: LiveWorkcell,
) -> None:
    lh, dest = live.get("liquid_handler"), live.get("dest_plate")
    only_dest = live.view("run-1", ["dest_plate"])

    async def root() -> Any:
        return dest.get_root()

    with pytest.raises(AssetNotLeased, match="'liquid_handler' is not leased to run run-1"):
        await as_run(only_dest, root)

    async def by_name() -> Any:
        return lh.deck.get_resource("source_plate")

    with pytest.raises(AssetNotLeased, match="'source_plate' is not leased to run run-2"):
        await as_run(live.view("run-2", ROBOT), by_name)
    # A run that leased it, and code outside any run, get it.
    assert await as_run(live.view("run-3", ["source_plate"]), by_name) is live.get("source_plate")
    assert lh.deck.get_resource("source_plate") is live.get("source_plate")
    assert dest.get_root() is lh


async def test_a_command_touching_an_unleased_plate_is_refused_before_the_backend(
    live: LiveWorkcell,
) -> None:
    lh, tips = live.get("liquid_handler"), live.get("tip_rack")
    source = live.get("source_plate")  # reached without navigation (as through .children)
    view = live.view("run-1", ROBOT)

    async def steal() -> None:
        await lh.pick_up_tips([tips.get_item("A1")])
        try:
            await lh.aspirate([source.get_well("A1")], vols=[20])
        finally:
            await lh.return_tips()

    before = volumes(live, "source_plate")
    with pytest.raises(AssetNotLeased, match=r"'source_plate'.*run-1"):
        await as_run(view, steal)
    assert volumes(live, "source_plate") == before == [200.0] * 96
    assert not lh.head[0].has_tip and tips.get_item("A1").has_tip()
    assert view.commands == 2  # the pick-up and the return went out, the aspiration did not


async def test_a_machine_the_run_did_not_lease_is_refused(live: LiveWorkcell) -> None:
    lh, tips = live.get("liquid_handler"), live.get("tip_rack")

    async def pick_up() -> None:
        await lh.pick_up_tips([tips.get_item("A1")])

    with pytest.raises(AssetNotLeased, match="machine 'liquid_handler'"):
        await as_run(live.view("run-1", ["tip_rack", "dest_plate"]), pick_up)
    assert tips.get_item("A1").has_tip() and not lh.head[0].has_tip


async def test_the_fence_is_checked_before_every_command(live: LiveWorkcell) -> None:
    lh, tips = live.get("liquid_handler"), live.get("tip_rack")
    lost: list[LeaseLost] = []

    def fence() -> None:
        if lost:
            raise lost[0]

    view = live.view("run-1", ROBOT, fence)

    async def pick_then_return() -> None:
        await lh.pick_up_tips([tips.get_item("B1")])
        lost.append(LeaseLost("lease on tip_rack was force-released"))
        await lh.return_tips()

    with pytest.raises(LeaseLost, match="force-released"):
        await as_run(view, pick_then_return)
    assert view.commands == 1 and lh.head[0].has_tip  # the return never went out
    lost.clear()
    view.abandon("a cancel could not stop it")
    with pytest.raises(LeaseLost, match="abandoned"):
        await as_run(view, lh.return_tips)
    await as_run(live.view("run-2", ROBOT), lh.return_tips)  # another run is not fenced
    assert tips.get_item("B1").has_tip()


async def test_a_command_from_a_thread_outside_any_run_is_refused(live: LiveWorkcell) -> None:
    lh, tips = live.get("liquid_handler"), live.get("tip_rack")
    with pytest.raises(AssetNotLeased, match="outside any run"):
        await asyncio.to_thread(asyncio.run, lh.pick_up_tips([tips.get_item("A1")]))
    assert tips.get_item("A1").has_tip()
