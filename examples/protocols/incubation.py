"""An incubation timer: many short steps, each a protocol function (so each is a checkpoint)."""

from __future__ import annotations

import asyncio

from pylabrobot.resources import Plate

from praxis_sdk import PraxisState, protocol_function


@protocol_function(version="1.0.0", top_level=False)
async def incubation_step(index: int, seconds: float) -> int:
    """Wait one step of the incubation."""
    await asyncio.sleep(seconds)
    return index


@protocol_function(version="1.0.0")
async def incubate(state: PraxisState, steps: int = 10, step_seconds: float = 0.1) -> int:
    """Incubate for ``steps`` x ``step_seconds``; pause and cancel act between steps."""
    for index in range(steps):
        state["completed_steps"] = await incubation_step(index, step_seconds) + 1
    return steps


@protocol_function(version="1.0.0")
async def incubate_plate(
    plate: Plate, state: PraxisState, steps: int = 10, step_seconds: float = 0.1
) -> int:
    """Incubate ``plate``, leased to the run throughout, for ``steps`` x ``step_seconds``."""
    for index in range(steps):
        state["completed_steps"] = await incubation_step(index, step_seconds) + 1
    return steps
