"""The Praxis protocol SDK: what protocol authors import.

from praxis_sdk import protocol_function, PraxisState
from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.resources import Plate

@protocol_function(version="1.0.0")
async def transfer(lh: LiquidHandler, source: Plate, dest: Plate, volume: float = 50.0): ...
"""

from praxis_sdk.context import CallRecord, RunCancelled, RunContext, RunControl, current_run
from praxis_sdk.decorators import (
    inspect_function,
    parameters_model,
    protocol_function,
    spec_of,
    validate_parameters,
)
from praxis_sdk.state import PraxisState

__all__ = [
    "CallRecord",
    "PraxisState",
    "RunCancelled",
    "RunContext",
    "RunControl",
    "current_run",
    "inspect_function",
    "parameters_model",
    "protocol_function",
    "spec_of",
    "validate_parameters",
]
