"""praxis_sdk.testing: a protocol run as the edge runs it, in-process, on real PyLabRobot."""

from __future__ import annotations

import pytest
from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.resources import Plate, TipRack

from praxis_contracts.errors import AssetNotLeased, InvalidParameters, InvalidRequest
from praxis_plr.layout import demo_workcell
from praxis_sdk import PraxisState, RunControl, protocol_function
from praxis_sdk.testing import SimulatedWorkcell


@protocol_function
async def sneaky(lh: LiquidHandler, tips: TipRack, source_plate: Plate) -> None:
    """Aspirates from a plate the run was not given (found through the deck)."""
    other = lh.deck.get_resource("dest_plate")
    await lh.pick_up_tips([tips.get_item("A1")])
    await lh.aspirate([other.get_well("A1")], vols=[1.0])


@protocol_function
async def count(state: PraxisState, times: int) -> int:
    for _ in range(times):
        state["n"] = await step(state.get("n", 0))
    return int(state["n"])


@protocol_function
async def step(n: int) -> int:
    return n + 1


async def test_the_guard_refuses_an_asset_the_run_was_not_given() -> None:
    async with SimulatedWorkcell.from_drafts(demo_workcell()) as workcell:
        run = await workcell.run(sneaky, assets={"tips": "tip_rack"})
    assert run.status == "failed"
    assert isinstance(run.error, AssetNotLeased), run.error
    assert run.bindings == {
        "lh": "liquid_handler",
        "tips": "tip_rack",
        "source_plate": "source_plate",
    }


async def test_state_parameters_calls_and_a_cancel_at_a_checkpoint() -> None:
    async with SimulatedWorkcell.from_drafts(demo_workcell()) as workcell:
        run = await workcell.run(count, parameters={"times": 3}, initial_state={"n": 10})
        assert (run.status, run.result, run.state) == ("completed", 13, {"n": 13})
        assert [c.result for c in run.calls if c.function == "step"] == [11, 12, 13]

        control = RunControl()
        control.cancel()  # takes effect at the first checkpoint
        cancelled = await workcell.run(count, parameters={"times": 3}, control=control)
        assert cancelled.status == "cancelled"

        with pytest.raises(InvalidParameters):
            await workcell.run(count, parameters={"times": "many"})
        with pytest.raises(InvalidRequest, match="no_plate"):
            await workcell.run(sneaky, assets={"source_plate": "no_plate"})


@protocol_function
async def tracking_off(lh: LiquidHandler) -> None:
    from pylabrobot.resources import set_volume_tracking

    set_volume_tracking(False)


@protocol_function
async def overdraw(lh: LiquidHandler, tips: TipRack, source_plate: Plate) -> None:
    await lh.pick_up_tips([tips.get_item("A1")])
    await lh.aspirate([source_plate.get_well("A1")], vols=[700.0])


async def test_one_run_never_turns_tracking_off_for_the_next() -> None:
    async with SimulatedWorkcell.from_drafts(demo_workcell()) as workcell:
        assert (await workcell.run(tracking_off)).status == "completed"
        run = await workcell.run(overdraw)
    assert run.status == "failed", "a 700 uL draw from a 200 uL well went through"
    assert "TooLittleLiquid" in type(run.error).__name__
