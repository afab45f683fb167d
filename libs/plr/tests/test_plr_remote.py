"""A run's copies and the supervisor's side of its commands (``praxis_plr.remote``), on real
chatterbox objects: what crosses the boundary, what a name resolves to, which methods a run may
call, and that the copies follow the live objects."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pylabrobot.liquid_handling.standard import Mix
from pylabrobot.resources import Coordinate, cor_96_wellplate_360uL_Fb
from pylabrobot.resources.errors import TooLittleLiquidError
from pylabrobot.resources.rotation import Rotation

from praxis_contracts.errors import AssetNotLeased, InvalidRequest, LeaseLost
from praxis_plr import LiveWorkcell, demo_workcell
from praxis_plr.remote import (
    MAX_DEPTH,
    CodecError,
    InstrumentError,
    RunObjects,
    apply,
    copy_layout,
    decode,
    encode,
    error_reply,
    forward,
    raise_error,
    run_assets,
    track_moves,
)

ROBOT = ["liquid_handler", "tip_rack", "dest_plate"]


@pytest.fixture
async def live(layout_from_drafts: Any) -> AsyncIterator[LiveWorkcell]:
    async with await LiveWorkcell.build(layout_from_drafts(demo_workcell())) as workcell:
        yield workcell


def objects(live: LiveWorkcell, leased: list[str], run_id: str = "run-1") -> RunObjects:
    names = run_assets(live.layout, leased)
    return RunObjects(
        {n: live.get(n) for n in names},
        [n for n in names if n in live.machine_names()],
        others=[live.get(n) for n in live.names()],
        run_id=run_id,
        leased=leased,
        view=live.view(run_id, leased),
    )


def test_values_cross_as_json_and_come_back_equal(live: LiveWorkcell) -> None:
    dest = live.get("dest_plate")
    well = dest.get_well("B2")
    value = {
        "wells": [well, dest],
        "offset": Coordinate(1.5, -2, 0),
        "rotation": [None, True, 3, 2.5, "x"],
        "nested": {"a": [{"b": 1}]},
    }
    sent = encode(value)
    assert sent["wells"] == [{"$resource": well.name}, {"$resource": "dest_plate"}]
    back = decode(sent, objects(live, ["dest_plate"]).resolve)
    assert back["wells"][0] is well and back["wells"][1] is dest
    assert back["offset"] == Coordinate(1.5, -2, 0)
    assert back["rotation"] == [None, True, 3, 2.5, "x"] and back["nested"] == {"a": [{"b": 1}]}


def test_a_pylabrobot_enum_crosses_and_no_other_class_is_built() -> None:
    from pylabrobot.resources.well import WellBottomType

    sent = encode(WellBottomType.FLAT)
    assert decode(sent, lambda name: None) is WellBottomType.FLAT  # type: ignore[arg-type,return-value]
    for forged in (
        {"$enum": "os:system", "name": "x"},
        {"$enum": "subprocess:Popen", "name": "x"},
        {"$enum": "pylabrobot.resources:Coordinate", "name": "x"},
        {"$enum": "pylabrobot.resources.well:WellBottomType", "name": "NO_SUCH"},
        {"$enum": "pylabrobot.not_imported_anywhere:E", "name": "x"},
    ):
        with pytest.raises(CodecError):
            decode(forged, lambda name: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    "value",
    [
        math.nan,
        math.inf,
        object(),
        {1: "int key"},
        {"$resource": "a key of ours"},
        Rotation(),  # a PyLabRobot object that is neither a resource nor an enum
        Mix(volume=1, repetitions=1, flow_rate=1),
    ],
)
def test_what_cannot_cross_is_refused_before_it_is_sent(value: Any) -> None:
    with pytest.raises(CodecError):
        encode(value)


def test_an_instruments_result_carries_nan_and_other_objects_back() -> None:
    """A plate reader's empty well reads NaN; a result holding something else arrives as its
    repr. Neither may travel the other way, as an instrument command's argument."""
    reading = [{"data": [[0.5, math.nan], [math.inf, -math.inf]], "at": object.__name__}]
    sent = encode(reading, result=True)
    back = decode(sent, lambda name: None, result=True)  # type: ignore[arg-type,return-value]
    assert back[0]["data"][0][0] == 0.5 and math.isnan(back[0]["data"][0][1])
    assert back[0]["data"][1] == [math.inf, -math.inf]
    assert encode({"thing": Rotation()}, result=True) == {"thing": repr(Rotation())}
    with pytest.raises(CodecError):
        decode(sent, lambda name: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(CodecError):
        decode({"$float": "1e999"}, lambda name: None, result=True)  # type: ignore[arg-type,return-value]


def test_a_value_too_deep_or_too_large_is_refused_both_ways() -> None:
    deep: Any = 1
    for _ in range(MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(CodecError, match="too deep"):
        encode(deep)
    with pytest.raises(CodecError, match="too deep"):
        decode(deep, lambda name: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(CodecError, match="too large"):
        encode(list(range(30_000)))


def test_a_name_resolves_only_inside_the_runs_leased_assets(live: LiveWorkcell) -> None:
    robot = objects(live, ROBOT)
    lh = live.get("liquid_handler")
    assert robot.resolve("dest_plate") is live.get("dest_plate")
    assert robot.resolve(live.get("tip_rack").get_item("A1").name) is live.get("tip_rack").get_item(
        "A1"
    )
    assert robot.resolve(lh.deck.name) is lh.deck  # the deck is part of the liquid handler
    # The source plate sits on the leased liquid handler's deck, but is an asset of its own.
    source_well = live.get("source_plate").get_well("A1").name
    for name in ("source_plate", source_well, "no_such_thing"):
        with pytest.raises(AssetNotLeased, match="run-1"):
            robot.resolve(name)
    # A plate leased without its liquid handler reaches neither the machine nor the other
    # labware; the deck it sits on is its frame (a command naming it meets the guard).
    only_dest = objects(live, ["dest_plate"])
    for name in ("liquid_handler", "tip_rack", "source_plate"):
        with pytest.raises(AssetNotLeased):
            only_dest.resolve(name)
    assert only_dest.resolve(lh.deck.name) is lh.deck


def test_a_run_calls_only_public_instrument_commands_of_its_leased_machines(
    live: LiveWorkcell,
) -> None:
    robot = objects(live, ROBOT)
    assert robot.method("liquid_handler", "machine", "aspirate").__name__ == "aspirate"
    assert robot.method("liquid_handler", "backend", "aspirate").__name__ == "aspirate"
    with pytest.raises(AssetNotLeased):
        objects(live, ["dest_plate"]).method("liquid_handler", "machine", "aspirate")
    for target, name, error in [
        ("machine", "setup", InvalidRequest),  # the orchestrator sets machines up
        ("machine", "stop", InvalidRequest),
        ("machine", "_run_async_in_thread", InvalidRequest),
        ("machine", "__init__", InvalidRequest),
        ("machine", "get_mounted_tips", InvalidRequest),  # not a coroutine
        ("machine", "no_such_command", InvalidRequest),
        ("io", "write", InvalidRequest),
    ]:
        with pytest.raises(error):
            robot.method("liquid_handler", target, name)


def test_changes_report_the_runs_assets_once_and_never_another_asset(live: LiveWorkcell) -> None:
    robot = objects(live, ["liquid_handler", "dest_plate"])
    assert robot.changes() == {"states": {}, "placements": {}}  # nothing since it was built
    live.get("dest_plate").get_well("A1").tracker.set_volume(50)
    live.get("source_plate").get_well("A1").tracker.set_volume(70)
    changed = robot.changes()
    assert set(changed["states"]) == {"dest_plate"} and changed["placements"] == {}
    assert robot.changes() == {"states": {}, "placements": {}}
    # Its liquid handler's own state is its head, not the deck's plates.
    robot = objects(live, ["liquid_handler"])
    lh_state = robot.changes()
    assert lh_state == {"states": {}, "placements": {}}


async def test_copies_forward_commands_and_follow_the_live_objects(live: LiveWorkcell) -> None:
    robot = objects(live, ROBOT)
    names = run_assets(live.layout, ROBOT)
    assert names == ["liquid_handler", "deck", "tip_rack", "dest_plate"]
    copies = LiveWorkcell.copies(copy_layout(live.layout, names))
    assert copies.names() == names
    # Its leased labware sits where it does on the workcell.
    assert copies.get("tip_rack").parent is not None
    assert (
        copies.get("tip_rack").get_absolute_location()
        == live.get("tip_rack").get_absolute_location()
    )
    copy_lh = copies.get("liquid_handler")
    # The copy's liquid handler has its deck, but nothing the run did not lease on it.
    with pytest.raises(Exception, match="source_plate"):
        copy_lh.deck.get_resource("source_plate")
    sent: list[tuple[str, str, str]] = []

    async def send(machine: str, target: str, method: str, args: list[Any], kw: dict[str, Any]):  # type: ignore[no-untyped-def]
        sent.append((machine, target, method))
        bound = robot.method(machine, target, method)
        result = await bound(
            *decode(encode(args), robot.resolve), **decode(encode(kw), robot.resolve)
        )
        apply({n: copies.get(n) for n in copies.names()}, robot.changes())
        return result

    forward(copy_lh, "liquid_handler", send)
    tips = copies.get("tip_rack")
    await copy_lh.pick_up_tips([tips.get_item("A1")])
    assert sent == [("liquid_handler", "machine", "pick_up_tips")]
    # The live rack lost its tip, and the copy followed it.
    assert not live.get("tip_rack").get_item("A1").has_tip()
    assert not tips.get_item("A1").has_tip()
    await copy_lh.return_tips()
    assert live.get("tip_rack").get_item("A1").has_tip() and tips.get_item("A1").has_tip()


def test_errors_cross_as_their_code_or_their_class_and_nothing_else() -> None:
    with pytest.raises(LeaseLost):
        raise_error(error_reply(LeaseLost("the lease went")))
    with pytest.raises(AssetNotLeased, match="gone"):
        raise_error(error_reply(AssetNotLeased("gone", asset="x")))
    with pytest.raises(ValueError, match="bad volume"):
        raise_error(error_reply(ValueError("bad volume")))
    # A class the supervisor would not build from a runner's (or anybody's) message.
    with pytest.raises(InstrumentError, match="Popen"):
        raise_error({"type": "subprocess:Popen", "message": "ls"})
    with pytest.raises(InstrumentError):
        raise_error({"type": "os:system", "message": "rm -rf /"})


def test_a_runs_assets_are_its_leases_and_the_decks_they_stand_on(live: LiveWorkcell) -> None:
    layout = live.layout
    assert run_assets(layout, ["plate_reader", "source_plate"]) == [
        "deck",  # the plate's frame: its carrier site, so it can go back there
        "source_plate",
        "plate_reader",
    ]
    assert run_assets(layout, ["liquid_handler"]) == ["liquid_handler", "deck"]
    assert run_assets(layout, ["plate_reader"]) == ["plate_reader"]


async def test_a_plate_moved_by_hand_moves_on_the_workcell_within_the_runs_assets(
    live: LiveWorkcell,
) -> None:
    """``plate.unassign(); reader.assign_child_resource(plate)`` in the runner becomes the
    same move on the live objects; back to its site too. Anywhere the run did not lease is
    refused."""
    leased = ["plate_reader", "source_plate"]
    supervisor = objects(live, leased)
    names = run_assets(live.layout, leased)
    copies = LiveWorkcell.copies(copy_layout(live.layout, names))
    by_name = {n: copies.get(n) for n in copies.names()}
    sent: list[dict[str, Any]] = []
    track_moves(by_name, sent.append)

    plate, reader = by_name["source_plate"], by_name["plate_reader"]
    site, location = plate.parent, plate.location
    assert site is not None and site.name == live.get("source_plate").parent.name
    plate.unassign()
    reader.assign_child_resource(plate)
    assert [m["parent"] for m in sent] == [None, "plate_reader"]
    for message in sent:
        supervisor.move(message["child"], message["parent"], message.get("location"))
    assert live.get("source_plate").parent is live.get("plate_reader")
    # The supervisor's own news does not echo back as a move.
    apply(by_name, supervisor.changes())
    assert len(sent) == 2

    plate.unassign()
    site.assign_child_resource(plate, location=location)
    for message in sent[2:]:
        supervisor.move(message["child"], message["parent"], message.get("location"))
    assert live.get("source_plate").parent.name == site.name
    assert live.get("source_plate").location == location

    # Labware the protocol made up is not put among the copies: the deck has no such plate.
    with pytest.raises(InvalidRequest, match="not in the workcell's inventory"):
        reader.assign_child_resource(cor_96_wellplate_360uL_Fb(name="made_up"))
    assert len(sent) == 4

    # Onto another carrier's site (the deck is the liquid handler's, not leased): refused.
    other_site = live.get("dest_plate").parent
    with pytest.raises(AssetNotLeased, match=r"'deck'.* is not leased to run run-1"):
        supervisor.move("source_plate", other_site.name, None)
    assert live.get("source_plate").parent.name == site.name
    # Only leased labware moves: not a machine, not another run's plate.
    for name in ("plate_reader", "dest_plate", "deck"):
        with pytest.raises(AssetNotLeased):
            supervisor.move(name, None, None)


async def test_a_failed_multichannel_aspiration_leaves_no_phantom_volume(
    live: LiveWorkcell,
) -> None:
    """PyLabRobot queues the trackers channel by channel: the second well's shortage left the
    first well's removal queued (its state said 10 uL gone that never left). After a failed
    command the supervisor rolls back what is still queued."""
    run = objects(live, ["liquid_handler", "tip_rack", "source_plate", "dest_plate"])
    lh, tips = live.get("liquid_handler"), live.get("tip_rack")
    full, empty = live.get("source_plate").get_well("A1"), live.get("dest_plate").get_well("A1")
    await lh.pick_up_tips([tips.get_item("A1"), tips.get_item("B1")], use_channels=[0, 1])
    run.changes()
    with pytest.raises(TooLittleLiquidError):
        await lh.aspirate([full, empty], vols=[10, 10], use_channels=[0, 1])
    assert full.tracker.get_used_volume() == 190  # PyLabRobot's own leftover: the phantom
    run.undo_pending()
    assert (full.tracker.get_used_volume(), full.tracker.volume) == (200, 200)
    await lh.drop_tips([tips.get_item("A1"), tips.get_item("B1")], use_channels=[0, 1])
