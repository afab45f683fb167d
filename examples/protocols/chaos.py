"""Protocols for `make chaos`: nested protocol-function steps over the demo workcell's plates.

Cheap on the chatterbox backends (1 uL transfers, one absorbance read), so a chaos run is bound by
the system, not by the instruments. Every instrument sequence that must not be cut in two (a tip
picked up and returned, a plate moved into the reader and back) sits inside one protocol function:
pause, cancel and fencing act only at protocol-function calls, so a run stopped there never
leaves a tip on the head or a plate in the reader for the next run.
"""

from __future__ import annotations

import asyncio

from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.plate_reading import PlateReader
from pylabrobot.resources import Plate, TipRack

from praxis_sdk import PraxisState, protocol_function


@protocol_function(version="1.0.0", top_level=False)
async def chaos_transfer(
    lh: LiquidHandler, tips: TipRack, source: Plate, dest: Plate, well: str, volume: float
) -> float:
    """One tip: aspirate ``volume`` uL from ``well`` of ``source``, dispense it into ``dest``,
    return the tip to its spot."""
    if lh.head[0].has_tip:  # left on by a step that raised before returning it
        await lh.return_tips()
    await lh.pick_up_tips([tips.get_item(well)])
    try:
        await lh.aspirate([source.get_well(well)], vols=[volume])
        await lh.dispense([dest.get_well(well)], vols=[volume])
    finally:
        await lh.return_tips()
    return volume


@protocol_function(version="1.0.0", top_level=False)
async def chaos_transfer_wells(
    lh: LiquidHandler,
    tips: TipRack,
    source: Plate,
    dest: Plate,
    wells: list[str],
    volume: float,
) -> float:
    """A ``chaos_transfer`` per well (each a nested call, so a checkpoint between wells)."""
    moved = 0.0
    for well in wells:
        moved += await chaos_transfer(lh, tips, source, dest, well, volume)
    return moved


@protocol_function(version="1.0.0", top_level=False)
async def chaos_read(
    reader: PlateReader, plate: Plate, wells: list[str], wavelength: int = 450
) -> dict[str, float]:
    """Move ``plate`` into the reader, read the absorbance of ``wells``, put it back."""
    site, location = plate.parent, plate.location
    if site is None:
        raise RuntimeError(f"{plate.name} is not on the deck")
    plate.unassign()
    reader.assign_child_resource(plate)
    try:
        (reading,) = await reader.read_absorbance(
            wavelength=wavelength,
            wells=[plate.get_well(w) for w in wells],
            use_new_return_type=True,
        )
    finally:
        plate.unassign()
        site.assign_child_resource(plate, location=location)
    data = reading["data"]
    return {w: float(data[ord(w[0]) - ord("A")][int(w[1:]) - 1] or 0.0) for w in wells}


@protocol_function(version="1.0.0", top_level=False)
async def chaos_settle(index: int, seconds: float) -> int:
    """Let a plate stand for ``seconds`` (one checkpoint)."""
    await asyncio.sleep(seconds)
    return index


@protocol_function(version="1.0.0")
async def chaos_assay(
    lh: LiquidHandler,
    tips: TipRack,
    source_plate: Plate,
    dest_plate: Plate,
    reader: PlateReader,
    state: PraxisState,
    wells: list[str] | None = None,
    volume: float = 1.0,
    settle_seconds: float = 0.01,
    tag: str = "",
) -> dict[str, object]:
    """Transfer ``volume`` uL per well (nested: wells -> one transfer each), let the plate
    settle ``settle_seconds``, read the destination wells. Needs every asset of the demo
    workcell."""
    chosen = wells or ["A1"]
    state["tag"] = tag
    state["moved_ul"] = await chaos_transfer_wells(
        lh, tips, source_plate, dest_plate, chosen, volume
    )
    await chaos_settle(0, settle_seconds)
    state["absorbance"] = await chaos_read(reader, dest_plate, chosen)
    return {"tag": tag, "wells": chosen, "moved_ul": state["moved_ul"]}


@protocol_function(version="1.0.0")
async def chaos_hold(
    plate: Plate, state: PraxisState, steps: int = 3, step_seconds: float = 0.05, tag: str = ""
) -> dict[str, object]:
    """Hold one plate for ``steps`` settle steps: contends with ``chaos_assay`` for the plate
    only, so two of these on different plates run side by side."""
    state["tag"] = tag
    for index in range(steps):
        state["settled"] = await chaos_settle(index, step_seconds) + 1
    return {"tag": tag, "plate": plate.name, "steps": steps}
