"""Example protocols bundled with Praxis (registered as a git repository by `make run`)."""

from __future__ import annotations

import logging
import time

from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.resources import Plate, TipRack

from praxis_sdk import PraxisState, protocol_function

log = logging.getLogger(__name__)


@protocol_function(version="1.0.0", top_level=False)
async def move_liquid(
    lh: LiquidHandler, source: Plate, dest: Plate, well: str, volume: float
) -> None:
    """Aspirate ``volume`` uL from one well of ``source`` and dispense it into ``dest``."""
    await lh.aspirate([source.get_well(well)], vols=[volume])
    await lh.dispense([dest.get_well(well)], vols=[volume])


@protocol_function(version="1.0.0")
async def transfer(
    lh: LiquidHandler,
    tips: TipRack,
    source_plate: Plate,
    dest_plate: Plate,
    state: PraxisState,
    volume: float = 50.0,
    wells: list[str] | None = None,
) -> dict[str, float]:
    """Transfer ``volume`` uL per well from the source plate to the destination plate."""
    log.info("transferring %s uL in %d well(s)", volume, len(wells or ["A1"]))
    moved: dict[str, float] = {}
    for well in wells or ["A1"]:
        await lh.pick_up_tips([tips.get_item(well)])
        await move_liquid(lh, source_plate, dest_plate, well, volume)
        await lh.return_tips()
        moved[well] = volume
    state["transferred_ul"] = state.get("transferred_ul", 0) + volume * len(moved)
    return moved


@protocol_function(version="1.0.0")
async def noop() -> dict[str, int]:
    """Does nothing; its first line records when it started (used by `make bench`)."""
    return {"started_ns": time.time_ns()}
