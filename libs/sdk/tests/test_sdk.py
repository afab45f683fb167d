"""The protocol SDK: introspection, parameter validation, state, call logging and run control."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Optional, TypeVar

import pytest
from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.resources import Plate, TipRack

from praxis_contracts.errors import InvalidParameters
from praxis_contracts.runs import CALL_RESULT_BYTES, CALL_RESULT_MAX_BYTES
from praxis_plr.types import fqn
from praxis_sdk import (
    CallRecord,
    PraxisState,
    RunCancelled,
    RunContext,
    RunControl,
    current_run,
    protocol_function,
    spec_of,
    validate_parameters,
)

T = TypeVar("T")


@protocol_function(version="1.2.0", description="Move liquid.")
async def transfer(
    lh: LiquidHandler,
    source: Plate,
    tips: Optional[TipRack],  # noqa: UP045 - the spelling under test
    state: PraxisState,
    ctx: RunContext,
    volume: float = 50.0,
    tags: list[str] | None = None,
) -> None:
    """Unused docstring: the decorator's description wins."""


@protocol_function
async def dilute(volume: float, cycles: int, note: str = "") -> dict[str, Any]:
    """Dilute a sample."""
    return {"volume": volume, "cycles": cycles, "note": note}


# -- introspection ---------------------------------------------------------------------------


def test_spec_records_name_version_and_description() -> None:
    spec = spec_of(transfer)
    assert spec is not None
    assert (spec.name, spec.version, spec.description) == ("transfer", "1.2.0", "Move liquid.")
    assert spec.qualname == "transfer"
    assert spec.top_level is True
    assert spec_of(dilute) is not None and spec_of(dilute).description == "Dilute a sample."  # type: ignore[union-attr]


def test_assets_come_from_pylabrobot_hints() -> None:
    spec = spec_of(transfer)
    assert spec is not None
    assets = {a.name: (a.type_fqn, a.kind, a.optional) for a in spec.assets}
    assert assets == {
        "lh": (fqn(LiquidHandler), "machine", False),
        "source": (fqn(Plate), "resource", False),
        "tips": (fqn(TipRack), "resource", True),
    }


def test_parameters_exclude_assets_and_injected_values() -> None:
    spec = spec_of(transfer)
    assert spec is not None
    params = {p.name: p for p in spec.parameters}
    assert set(params) == {"volume", "tags"}
    volume, tags = params["volume"], params["tags"]
    assert (volume.type_hint, volume.optional, volume.default) == ("float", True, 50.0)
    assert volume.json_schema == {"type": "number"}
    assert tags.optional is True and tags.default is None
    assert tags.json_schema and "anyOf" in tags.json_schema


def test_required_parameters_are_not_optional() -> None:
    spec = spec_of(dilute)
    assert spec is not None
    optional = {p.name: p.optional for p in spec.parameters}
    assert optional == {"volume": False, "cycles": False, "note": True}


def test_sync_functions_are_rejected() -> None:
    def not_async(volume: float) -> None: ...

    with pytest.raises(TypeError, match="must be async"):
        protocol_function(not_async)  # type: ignore[arg-type]


def test_var_args_are_rejected() -> None:
    async def star_args(*volumes: float) -> None: ...

    async def star_kwargs(**options: float) -> None: ...

    with pytest.raises(TypeError, match=r"\*args"):
        protocol_function(star_args)
    with pytest.raises(TypeError, match=r"\*args"):
        protocol_function(star_kwargs)


# -- parameter validation --------------------------------------------------------------------


def test_validate_parameters_coerces_in_lax_mode() -> None:
    assert validate_parameters(dilute, {"volume": "2.5", "cycles": "3"}) == {
        "volume": 2.5,
        "cycles": 3,
        "note": "",
    }


def test_validate_parameters_lists_every_problem() -> None:
    with pytest.raises(InvalidParameters) as caught:
        validate_parameters(dilute, {"volume": "lots", "colour": "red"})
    problems = {p["loc"]: p["msg"] for p in caught.value.details["errors"]}
    assert set(problems) == {"volume", "cycles", "colour"}
    assert "required" in problems["cycles"].lower()
    assert "not permitted" in problems["colour"]
    assert caught.value.to_reply().code == "invalid_parameters"


def test_validate_parameters_ignores_assets_and_injected_values() -> None:
    assert validate_parameters(transfer, {}) == {"volume": 50.0, "tags": None}
    with pytest.raises(InvalidParameters):
        validate_parameters(transfer, {"lh": "some-handler"})


# -- state -----------------------------------------------------------------------------------


def test_state_accepts_json_values_and_copies_out() -> None:
    state = PraxisState({"count": 1})
    state["wells"] = ["A1", "B1"]
    snapshot = state.to_dict()
    snapshot["wells"].append("C1")
    assert state["wells"] == ["A1", "B1"]
    assert dict(state) == {"count": 1, "wells": ["A1", "B1"]}


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", uuid.UUID(int=1)])
def test_state_rejects_non_json_values(value: Any) -> None:
    state = PraxisState()
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        state["x"] = value
    assert "x" not in state
    with pytest.raises(TypeError):
        PraxisState({"x": value})


# -- call logging ----------------------------------------------------------------------------


class RecordingSink:
    def __init__(self) -> None:
        self.calls: list[CallRecord] = []

    async def record(self, call: CallRecord) -> None:
        self.calls.append(call)


@asynccontextmanager
async def running(ctx: RunContext) -> AsyncIterator[RunContext]:
    token = current_run.set(ctx)
    try:
        yield ctx
    finally:
        current_run.reset(token)


def new_context() -> tuple[RunContext, RecordingSink]:
    sink = RecordingSink()
    return RunContext(run_id=uuid.uuid4(), state=PraxisState(), sink=sink), sink


@protocol_function(version="2.0.0")
async def inner(amount: float, state: PraxisState) -> float:
    if amount < 0:
        raise ValueError("negative amount")
    state["inner"] = amount
    return amount * 2


@protocol_function
async def outer(amount: float, state: PraxisState) -> float:
    return await inner(amount, state) + 1


async def test_calls_outside_a_run_are_not_recorded() -> None:
    assert await outer(1.0, PraxisState()) == 3.0


async def test_nested_calls_are_recorded_with_their_parent() -> None:
    ctx, sink = new_context()
    async with running(ctx):
        assert await outer(2.0, ctx.state) == 5.0
    assert [(c.function, c.status) for c in sink.calls] == [
        ("outer", "running"),
        ("inner", "running"),
        ("inner", "completed"),
        ("outer", "completed"),
    ]
    outer_start, inner_start, inner_end, outer_end = sink.calls
    assert outer_start.parent_call_id is None
    assert inner_start.parent_call_id == outer_start.call_id
    assert inner_end.call_id == inner_start.call_id and outer_end.call_id == outer_start.call_id
    assert outer_start.sequence < inner_start.sequence
    assert inner_end.sequence == inner_start.sequence
    assert {c.run_id for c in sink.calls} == {ctx.run_id}
    assert inner_start.version == "2.0.0"
    assert outer_start.arguments == {"amount": 2.0}  # the injected state is left out
    assert inner_end.finished_at is not None and inner_end.error is None
    assert ctx.state["inner"] == 2.0
    assert current_run.get() is None


@protocol_function
async def returns(value: Any) -> Any:
    return value


async def test_completed_calls_record_what_they_returned_bounded() -> None:
    ctx, sink = new_context()
    plate = Plate("p1", 127, 86, 14, ordered_items={})
    big = list(range(5000))  # its JSON is past CALL_RESULT_BYTES
    async with running(ctx):
        assert await outer(2.0, ctx.state) == 5.0
        await returns({"plate": plate, "volumes": [1.5, 2.5]})
        await returns(big)
        await returns({1, 2})  # not JSON: by repr
    results = [c.result for c in sink.calls if c.status == "completed"]
    assert results[:2] == [4.0, 5.0]  # inner, then outer
    assert results[2] == {"plate": {"asset": "p1", "type": "Plate"}, "volumes": [1.5, 2.5]}
    marker = results[3]
    assert marker["truncated"] is True and marker["type"] == "list"
    assert marker["size_bytes"] > CALL_RESULT_BYTES and marker["preview"].startswith("[0, 1, 2")
    assert results[4] == "{1, 2}"
    assert all(c.result is None for c in sink.calls if c.status == "running")
    # The whole of a large value goes with its marker, for the edge to keep by reference.
    bodies = [c.result_body for c in sink.calls if c.status == "completed"]
    assert bodies[:3] == [None, None, None] and bodies[4] is None
    assert bodies[3] is not None and json.loads(bodies[3]) == big


async def test_a_value_past_the_largest_kept_whole_keeps_only_its_marker() -> None:
    ctx, sink = new_context()
    async with running(ctx):
        await returns("x" * (CALL_RESULT_MAX_BYTES + 1))
    (done,) = [c for c in sink.calls if c.status == "completed"]
    assert done.result["truncated"] is True and done.result_body is None


async def test_sequence_keeps_increasing_across_top_level_calls() -> None:
    ctx, sink = new_context()
    async with running(ctx):
        await inner(1.0, ctx.state)
        await inner(2.0, ctx.state)
    starts = [c.sequence for c in sink.calls if c.status == "running"]
    assert starts == sorted(starts) and len(set(starts)) == 2


async def test_a_failing_nested_call_is_recorded_as_failed() -> None:
    ctx, sink = new_context()
    async with running(ctx):
        with pytest.raises(ValueError, match="negative amount"):
            await outer(-1.0, ctx.state)
    ends = {c.function: c for c in sink.calls if c.status != "running"}
    assert ends["inner"].status == "failed"
    assert ends["inner"].error == "ValueError: negative amount"
    assert ends["outer"].status == "failed"
    assert ends["inner"].parent_call_id == ends["outer"].call_id


# -- run control -----------------------------------------------------------------------------


async def in_run(ctx: RunContext, make: Callable[[], Awaitable[T]]) -> T:
    async with running(ctx):
        return await make()


async def test_a_paused_run_blocks_at_the_next_call_until_resumed() -> None:
    ctx, sink = new_context()
    ctx.control.pause()
    task = asyncio.create_task(in_run(ctx, lambda: inner(1.0, ctx.state)))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), timeout=0.1)
    assert not task.done() and sink.calls == []
    ctx.control.resume()
    assert await asyncio.wait_for(task, timeout=5) == 2.0
    assert [c.status for c in sink.calls] == ["running", "completed"]


async def test_cancel_raises_at_the_next_call() -> None:
    ctx, sink = new_context()
    ctx.control.cancel()
    with pytest.raises(RunCancelled):
        await in_run(ctx, lambda: inner(1.0, ctx.state))
    assert sink.calls == []
    assert "inner" not in ctx.state


async def test_cancel_wakes_a_paused_run() -> None:
    ctx, _ = new_context()
    ctx.control.pause()
    task = asyncio.create_task(in_run(ctx, lambda: inner(1.0, ctx.state)))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), timeout=0.1)
    ctx.control.cancel()
    with pytest.raises(RunCancelled):
        await asyncio.wait_for(task, timeout=5)


@protocol_function
async def cancels_midway(ctx: RunContext, state: PraxisState) -> float:
    ctx.control.cancel()
    return await inner(1.0, state)


async def test_cancel_during_a_call_marks_the_caller_cancelled() -> None:
    ctx, sink = new_context()
    with pytest.raises(RunCancelled):
        await in_run(ctx, lambda: cancels_midway(ctx, ctx.state))
    assert [(c.function, c.status) for c in sink.calls] == [
        ("cancels_midway", "running"),
        ("cancels_midway", "cancelled"),
    ]


async def test_run_control_signals_cross_to_the_protocol_s_own_loop() -> None:
    """Pause, resume and cancel from this loop reach a checkpoint waiting on another loop."""
    worker = asyncio.new_event_loop()
    thread = threading.Thread(target=worker.run_forever, daemon=True)
    thread.start()
    paused = threading.Event()

    async def on_pause() -> None:
        paused.set()

    control = RunControl(on_pause=on_pause)
    control.bind(worker)
    try:
        control.pause()
        waiting = asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(control.checkpoint(), worker)
        )
        await asyncio.to_thread(paused.wait)
        assert control.blocked and not waiting.done()
        control.resume()
        await waiting  # woken on its own loop
        control.pause()
        waiting = asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(control.checkpoint(), worker)
        )
        control.cancel()
        with pytest.raises(RunCancelled):
            await waiting
    finally:
        worker.call_soon_threadsafe(worker.stop)
        await asyncio.to_thread(thread.join)
        worker.close()


def test_moves_in_marks_labware_the_protocol_brings_in() -> None:
    @protocol_function(moves_in=["plate"])
    async def stack(lh: LiquidHandler, plate: Plate, tips: TipRack) -> None: ...

    marked = {a.name: a.moves_in for a in spec_of(stack).assets}  # type: ignore[union-attr]
    assert marked == {"lh": False, "plate": True, "tips": False}
    with pytest.raises(TypeError, match="lh"):

        @protocol_function(moves_in=["lh", "volume"])
        async def wrong(lh: LiquidHandler, volume: float) -> None: ...
