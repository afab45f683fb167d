"""Clean-up after a failed or cancelled run: tips the run still holds are put down.

Before, a run that failed holding a tip left it on the channel; the next run that picked up tips
failed with ``HasTipError`` until someone cleaned up by hand.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any

import pytest
from pylabrobot.liquid_handling.backends import LiquidHandlerChatterboxBackend

from praxis_contracts.errors import ErrorCode
from praxis_contracts.runs import ControlRunExecution, FunctionCallRecorded
from praxis_orchestrator.cleanup import make_safe, tip_policy
from praxis_plr import demo_liquid_handler, enable_tracking

pytestmark = pytest.mark.integration

ROBOT = {"lh": "liquid_handler", "tips": "tip_rack"}


def heads(world: Any) -> list[bool]:
    lh = world.edge.executor.workcell.live.get("liquid_handler")
    return [tracker.has_tip for tracker in lh.head.values()]


async def test_a_failed_run_returns_the_tips_it_holds_and_the_next_run_works(world: Any) -> None:
    cmd = await world.command("fail_holding_tips", ROBOT, {"wells": ["A1", "B1"]})
    finished = await (await world.execute(cmd)).finished()

    assert finished.outcome == "failed"
    assert finished.error is not None and "holding tips" in finished.error.message
    assert finished.cleanup == ["liquid_handler: returned the tips on channels [0, 1]"]
    assert not any(heads(world))
    rack = world.edge.executor.workcell.live.get("tip_rack")
    assert rack.get_item("A1").has_tip() and rack.get_item("B1").has_tip()  # back in place

    for binding in cmd.bindings:  # as the scheduler would, once the run is over
        await world.leases.release_holder(binding.lease_key, cmd.run_id)
    again = await world.command("touch", {**ROBOT, "plate": "dest_plate"})
    assert (await (await world.execute(again)).finished()).outcome == "completed"


async def test_a_cancelled_run_puts_its_tip_down_too(world: Any) -> None:
    flag = world.flag()
    cmd = await world.command("hold_tip_until", ROBOT, {"until": str(flag)})
    log = await world.execute(cmd)
    await log.first(FunctionCallRecorded)
    try:
        await world.client.publish(
            ControlRunExecution(run_id=cmd.run_id, workcell_name=world.workcell, action="cancel")
        )
        finished = await log.finished()
    finally:
        flag.touch()
    assert finished.outcome == "cancelled"
    assert finished.cleanup == ["liquid_handler: returned the tips on channels [0]"]
    assert not any(heads(world))


async def test_a_completed_run_is_left_alone(world: Any) -> None:
    cmd = await world.command("touch", {**ROBOT, "plate": "dest_plate"})
    finished = await (await world.execute(cmd)).finished()
    assert finished.outcome == "completed" and finished.cleanup == []


class JammedBackend(LiquidHandlerChatterboxBackend):
    """A chatterbox whose channels cannot drop tips (a jammed ejector)."""

    async def drop_tips(self, ops: Any, use_channels: Any, **kwargs: Any) -> None:
        raise RuntimeError("tip ejector jammed")


async def test_a_machine_that_cannot_be_made_safe_is_reported() -> None:
    enable_tracking()
    lh = demo_liquid_handler()
    with contextlib.redirect_stdout(io.StringIO()):
        await lh.setup()
        try:
            await lh.pick_up_tips([lh.deck.get_resource("tip_rack").get_item("A1")])
            lh.backend = JammedBackend(num_channels=8)  # jams after the pick-up
            lh.backend.set_heads(head=lh.head, head96=lh.head96 or None)
            done = await make_safe({"liquid_handler": (lh, "return")})
        finally:
            await lh.stop()
    assert not done.safe
    assert done.problems == ["liquid_handler: channels [0] still hold tips"]
    assert done.actions == []


async def test_discard_is_used_when_the_machine_says_so() -> None:
    enable_tracking()
    lh = demo_liquid_handler()
    with contextlib.redirect_stdout(io.StringIO()):
        await lh.setup()
        try:
            rack = lh.deck.get_resource("tip_rack")
            await lh.pick_up_tips([rack.get_item("A1")])
            done = await make_safe(
                {"liquid_handler": (lh, tip_policy({"tips_after_failure": "discard"}))}
            )
        finally:
            await lh.stop()
    assert done.actions == ["liquid_handler: discarded the tips on channels [0]"]
    assert not rack.get_item("A1").has_tip()  # not returned: in the trash


def test_a_run_error_has_a_code_and_no_server_traceback(tmp_path: Any) -> None:
    """Before, a preparation error reached the run record as ``KeyError: 'pending_volume'``
    with no code and a traceback of the orchestrator's own files. The orchestrator's errors
    and the runner's (which sees the protocol's frames) both carry a code and no server file."""
    from praxis_orchestrator.executor import PreparationFailed, _error_info
    from praxis_orchestrator.runner import _error

    try:
        {}["pending_volume"]
    except KeyError as exc:
        prepared = _error_info(exc, ErrorCode.PREPARATION_FAILED)
        in_protocol = _error(exc, tmp_path)
        in_runner = _error(exc, None)
    assert (prepared.type, prepared.code, prepared.traceback) == (
        "KeyError",
        "preparation_failed",
        None,
    )
    assert in_protocol["code"] == "protocol_error"
    assert in_protocol["traceback"] is None  # no frame of it was the protocol's
    assert in_runner["code"] == "preparation_failed"
    # A runner's report is checked before it reaches a record: a forged traceback is dropped.
    forged = PreparationFailed({**in_runner, "traceback": "/srv/praxis/secret.py"})
    assert _error_info(forged, ErrorCode.PREPARATION_FAILED).traceback is None
