"""Parameters checked against recorded schemas agree with the SDK's check of the real function."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from praxis_code_manager.params import validate
from praxis_contracts.errors import InvalidParameters
from praxis_sdk.decorators import inspect_function, validate_parameters


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Mix(BaseModel):
    cycles: int
    speed: float = 1.0


async def protocol(
    volume: float,
    count: int = 3,
    label: str = "",
    wells: list[str] | None = None,
    mode: Literal["fast", "slow"] = "fast",
    colour: Colour = Colour.RED,
    mix: Mix | None = None,
    extra: dict[str, float] | None = None,
    bounded: Annotated[int, Field(ge=0, le=10)] = 5,
    flag: bool = False,
    anything: Any = None,
) -> None: ...


SPEC = inspect_function(protocol)
CASES: list[dict[str, Any]] = [
    {"volume": 1},
    {"volume": "2.5"},
    {"volume": "abc"},
    {},
    {"volume": 1, "speed": 3},
    {"volume": 1, "count": "7", "label": "x", "wells": ["A1", "B2"]},
    {"volume": 1, "count": 1.5},
    {"volume": 1, "wells": "A1"},
    {"volume": 1, "mode": "slow", "colour": "blue"},
    {"volume": 1, "mode": "medium"},
    {"volume": 1, "colour": "green"},
    {"volume": 1, "mix": {"cycles": "3"}},
    {"volume": 1, "mix": {"speed": 2}},
    {"volume": 1, "extra": {"a": "1.5"}},
    {"volume": 1, "bounded": 11},
    {"volume": 1, "bounded": -1},
    {"volume": 1, "flag": "yes", "anything": {"x": [1]}},
]


def outcome(check: Any, values: dict[str, Any]) -> Any:
    try:
        return check(values)
    except InvalidParameters as exc:
        return sorted(e["loc"] for e in exc.details["errors"])


@pytest.mark.parametrize("values", CASES, ids=[str(c) for c in CASES])
def test_schema_check_agrees_with_the_function(values: dict[str, Any]) -> None:
    from_schema = outcome(lambda v: validate(SPEC, v), values)
    from_function = outcome(lambda v: validate_parameters(protocol, v), values)
    assert from_schema == from_function


def test_unknown_schema_parts_accept_anything() -> None:
    spec = SPEC.model_copy(
        update={"parameters": [p.model_copy(update={"json_schema": {}}) for p in SPEC.parameters]}
    )
    assert validate(spec, {"volume": "not checked here"})["volume"] == "not checked here"
