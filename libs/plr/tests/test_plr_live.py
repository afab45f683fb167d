from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from pylabrobot.heating_shaking import HeaterShaker, HeaterShakerChatterboxBackend
from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.plate_reading import PlateReader
from pylabrobot.resources import (
    PLT_CAR_L5AC_A00,
    Coordinate,
    Lid,
    Plate,
    cor_96_wellplate_360uL_Fb,
    does_tip_tracking,
    does_volume_tracking,
)

from praxis_contracts.assets import AssetDraft, WorkcellLayout
from praxis_contracts.errors import InvalidRequest, UnknownAssetType
from praxis_contracts.state import Placement
from praxis_plr import (
    LiveWorkcell,
    demo_liquid_handler,
    demo_plate_reader,
    demo_workcell,
    drafts_for_tree,
)
from praxis_plr._state import state_to_json
from praxis_plr.layout import placed_definition
from praxis_plr.live import own_state

LayoutFactory = Callable[[list[AssetDraft]], WorkcellLayout]


def volume(snapshot: dict[str, Any], plate: str, well: str) -> float:
    return float(snapshot[plate][f"{plate}_well_{well}"]["volume"])


async def test_build_transfer_snapshot_restore(layout_from_drafts: LayoutFactory) -> None:
    layout = layout_from_drafts(demo_workcell())
    async with await LiveWorkcell.build(layout) as workcell:
        assert does_tip_tracking() and does_volume_tracking()
        assert workcell.names() == [
            "liquid_handler",
            "deck",
            "tip_rack",
            "source_plate",
            "dest_plate",
            "plate_reader",
        ]
        assert workcell.machine_names() == ["liquid_handler", "plate_reader"]
        lh = workcell.get("liquid_handler")
        assert isinstance(lh, LiquidHandler)
        assert lh.name == "liquid_handler"  # LiquidHandler.deserialize alone would say "lh_deck"
        assert lh.setup_finished and len(lh.head) == 8
        assert workcell.get("deck") is lh.deck
        source, dest, tips = (workcell.get(n) for n in ("source_plate", "dest_plate", "tip_rack"))
        assert source.parent.name == "plate_carrier-0"
        assert source.get_well("A1").tracker.get_used_volume() == 200  # state was loaded
        assert tips.get_item("A1").has_tip()  # tips exist only thanks to the loaded state

        before = workcell.snapshot(["source_plate", "dest_plate", "tip_rack", "liquid_handler"])
        json.dumps(before, allow_nan=False)

        await lh.pick_up_tips(tips["A1"])
        assert not tips.get_item("A1").has_tip()
        await lh.aspirate(source["A1"], vols=[50])
        await lh.dispense(dest["A1"], vols=[50])
        mid = workcell.snapshot(["liquid_handler"])  # tip on channel 0, still JSON
        json.dumps(mid, allow_nan=False)
        await lh.drop_tips(tips["A1"])

        assert source.get_well("A1").tracker.get_used_volume() == 150
        assert dest.get_well("A1").tracker.get_used_volume() == 50
        assert source.get_well("B1").tracker.get_used_volume() == 200
        after = workcell.snapshot(["source_plate", "dest_plate"])
        json.dumps(after, allow_nan=False)
        assert volume(after, "source_plate", "A1") == 150
        assert volume(after, "dest_plate", "A1") == 50

        workcell.restore(before)
        assert source.get_well("A1").tracker.get_used_volume() == 200
        assert dest.get_well("A1").tracker.get_used_volume() == 0
        assert workcell.snapshot(["source_plate", "dest_plate"]) == {
            k: before[k] for k in ("source_plate", "dest_plate")
        }

        # Restoring a liquid-handler snapshot (string channel keys after JSON) puts the tip back on.
        workcell.restore(json.loads(json.dumps(mid)))
        assert lh.head[0].has_tip
        workcell.restore(before)
        assert not lh.head[0].has_tip

        # The restored state is usable: the same transfer works again.
        await lh.pick_up_tips(tips["A1"])
        await lh.aspirate(source["A1"], vols=[50])
        await lh.dispense(dest["A1"], vols=[50])
        await lh.drop_tips(tips["A1"])
        assert volume(workcell.snapshot(["source_plate"]), "source_plate", "A1") == 150

        with pytest.raises(KeyError, match="nope"):
            workcell.get("nope")
        with pytest.raises(KeyError):
            workcell.restore({"nope": {}})
    assert not lh.setup_finished
    assert not workcell.get("plate_reader").setup_finished


async def test_plate_reader_reads_absorbance(layout_from_drafts: LayoutFactory) -> None:
    async with await LiveWorkcell.build(layout_from_drafts(demo_workcell())) as workcell:
        reader = workcell.get("plate_reader")
        assert isinstance(reader, PlateReader) and reader.setup_finished
        # Reading needs a plate in the reader (else NoPlateError): put one in for the test.
        plate = cor_96_wellplate_360uL_Fb(name="reader_plate")
        reader.assign_child_resource(plate)
        result = await reader.read_absorbance(wavelength=450, use_new_return_type=True)
        assert result[0]["wavelength"] == 450
        assert len(result[0]["data"]) == 8 and len(result[0]["data"][0]) == 12
        reader.unassign_child_resource(plate)


async def test_plate_in_reader_and_machine_on_deck(layout_from_drafts: LayoutFactory) -> None:
    handler = demo_liquid_handler()
    shaker = HeaterShaker(
        name="heater_shaker",
        size_x=150,
        size_y=100,
        size_z=100,
        backend=HeaterShakerChatterboxBackend(),
        child_location=Coordinate(10, 10, 50),
    )
    handler.deck.assign_child_resource(shaker, location=Coordinate(600, 100, 100))
    shaker.assign_child_resource(cor_96_wellplate_360uL_Fb(name="shaken_plate"))
    drafts = drafts_for_tree(handler)
    kinds = {d.name: (d.kind, d.parent, d.slot) for d in drafts}
    assert kinds["heater_shaker"] == ("machine", "deck", "deck")
    assert kinds["shaken_plate"] == ("resource", "heater_shaker", "heater_shaker")
    async with await LiveWorkcell.build(layout_from_drafts(drafts)) as workcell:
        live_shaker = workcell.get("heater_shaker")
        assert isinstance(live_shaker, HeaterShaker) and live_shaker.setup_finished
        assert isinstance(live_shaker.backend, HeaterShakerChatterboxBackend)
        assert isinstance(workcell.get("shaken_plate"), Plate)
        await live_shaker.set_temperature(37)
    assert not live_shaker.setup_finished


async def test_unknown_backend_is_rejected(layout_from_drafts: LayoutFactory) -> None:
    drafts = [
        d.model_copy(update={"backend": {"type": "NoSuchBackend"}})
        if d.name == "plate_reader"
        else d
        for d in demo_workcell()
    ]
    with pytest.raises(UnknownAssetType, match="NoSuchBackend"):
        await LiveWorkcell.build(layout_from_drafts(drafts))


async def test_asset_that_cannot_be_placed_is_rejected(layout_from_drafts: LayoutFactory) -> None:
    drafts = demo_workcell()
    reader_plate = drafts_for_tree(cor_96_wellplate_360uL_Fb(name="ghost_plate"))[0]
    drafts.append(reader_plate.model_copy(update={"parent": "deck", "slot": "no_such_site"}))
    with pytest.raises(InvalidRequest, match="ghost_plate"):
        await LiveWorkcell.build(layout_from_drafts(drafts))


def _crowded_liquid_handler(plates: int) -> LiquidHandler:
    """The demo liquid handler with ``plates`` more plates on extra carriers (5 per carrier)."""
    handler = demo_liquid_handler()
    for c in range((plates + 4) // 5):
        carrier = PLT_CAR_L5AC_A00(name=f"extra_carrier_{c}")
        for site in range(min(5, plates - 5 * c)):
            carrier[site] = cor_96_wellplate_360uL_Fb(name=f"extra_plate_{c}_{site}")
        handler.deck.assign_child_resource(carrier, rails=15 + 6 * c)
    return handler


async def test_snapshot_holds_each_assets_own_state_only(
    layout_from_drafts: LayoutFactory,
) -> None:
    """A run record carries its bound assets' state, not the deck's: a liquid handler's entry is
    its head, a deck's is itself, a plate's is the plate and its wells. The size of a transfer's
    record does not grow with the number of plates on the deck."""
    handler = _crowded_liquid_handler(plates=15)
    whole_deck = len(json.dumps(state_to_json(handler.serialize_all_state())))
    async with await LiveWorkcell.build(layout_from_drafts(drafts_for_tree(handler))) as workcell:
        lh, tips = workcell.get("liquid_handler"), workcell.get("tip_rack")
        await lh.pick_up_tips(tips["A1"])  # a tip held: the handler's own state shows it
        bound = ["liquid_handler", "tip_rack", "source_plate", "dest_plate", "deck"]
        snap = workcell.snapshot(bound)
        assert set(snap) == set(bound)
        assert set(snap["liquid_handler"]) == {"liquid_handler"}
        assert snap["liquid_handler"]["liquid_handler"]["head_state"]["0"]["tip"] is not None
        assert set(snap["deck"]) == {"deck"}
        source = workcell.get("source_plate")
        assert set(snap["source_plate"]) == {"source_plate"} | {
            well.name for well in source.get_all_items()
        }
        assert len(snap["tip_rack"]) == 1 + 96
        assert volume(snap, "source_plate", "A1") == 200

        size = len(json.dumps(snap, allow_nan=False))
        plate_size = len(json.dumps(snap["source_plate"]))
        # The handler and the deck are small; the labware's wells and tip spots are the bulk.
        assert len(json.dumps(snap["liquid_handler"])) + len(json.dumps(snap["deck"])) < 10_000
        assert size < 2 * plate_size + len(json.dumps(snap["tip_rack"])) + 10_000
        assert size < 120_000 < whole_deck  # the whole deck is ~0.4 MB here

        # The same record for the demo deck: the extra plates change nothing.
        just_plates = workcell.snapshot(["source_plate", "dest_plate"])
        assert just_plates == {k: snap[k] for k in ("source_plate", "dest_plate")}

        # What a snapshot holds is loadable: the handler's entry restores its tip only.
        workcell.restore(json.loads(json.dumps(snap)))
        assert lh.head[0].has_tip
        await lh.drop_tips(tips["A1"])


def test_own_state_of_labware_keeps_its_parts_and_skips_separate_assets() -> None:
    """A tube rack's tubes and a plate's lid are its parts; a separate asset inside is not."""
    plate = cor_96_wellplate_360uL_Fb(name="lidded")
    lid = Lid(name="lidded_lid", size_x=127.0, size_y=86.0, size_z=10.0, nesting_z_height=8.0)
    plate.assign_child_resource(lid)
    assert "lidded_lid" in own_state(plate)
    assert "lidded_lid" not in own_state(plate, separate={id(lid)})
    assert len(own_state(plate)) == 1 + 96 + 1
    reader = demo_plate_reader()
    reader.assign_child_resource(cor_96_wellplate_360uL_Fb(name="in_reader"))
    assert set(own_state(reader)) == {"plate_reader"}  # the plate in it is not the reader's


async def test_placements_follow_moves_and_a_layout_written_back_builds_the_deck_as_it_is(
    layout_from_drafts: LayoutFactory,
) -> None:
    """A plate moved into the reader and one put at a deck position: ``placements`` says where
    each is; the layout written back the way the asset-manager does builds them there."""
    layout = layout_from_drafts(demo_workcell())
    ids = {a.name: a.accession_id for a in layout.assets}
    async with await LiveWorkcell.build(layout) as workcell:
        names = ["source_plate", "dest_plate", "tip_rack", "liquid_handler"]
        before = workcell.placements(names)
        assert set(before) == {"source_plate", "dest_plate", "tip_rack"}  # labware only
        assert before["source_plate"] == Placement(
            parent_id=ids["deck"], parent="deck", slot="plate_carrier-0"
        )
        source, dest = workcell.get("source_plate"), workcell.get("dest_plate")
        source.unassign()
        workcell.get("plate_reader").assign_child_resource(source)
        dest.unassign()
        workcell.get("deck").assign_child_resource(dest, location=Coordinate(600, 120, 0))
        tips = workcell.get("tip_rack")
        tips.unassign()  # taken off the deck
        after = workcell.placements(names)
    assert after["source_plate"] == Placement(parent_id=ids["plate_reader"], parent="plate_reader")
    assert after["dest_plate"] == Placement(
        parent_id=ids["deck"], parent="deck", location=(600.0, 120.0, 0.0)
    )
    assert after["tip_rack"] == Placement()

    def written_back(asset: Any) -> Any:
        place = after.get(asset.name)
        if place is None:
            return asset
        return asset.model_copy(
            update={
                "parent_id": place.parent_id,
                "slot": place.slot,
                "definition": placed_definition(asset.definition, place.parent, place.location),
            }
        )

    moved = layout.model_copy(update={"assets": [written_back(a) for a in layout.assets]})
    async with await LiveWorkcell.build(moved) as rebuilt:
        assert rebuilt.get("source_plate").parent is rebuilt.get("plate_reader")
        dest = rebuilt.get("dest_plate")
        assert dest.parent is rebuilt.get("deck") and dest.location == Coordinate(600, 120, 0)
        assert rebuilt.get("tip_rack").parent is None
        assert rebuilt.placements(names) == after
        # The plate moved with its liquid.
        assert rebuilt.get("source_plate").get_well("A1").tracker.get_used_volume() == 200


async def test_a_plate_put_in_the_trash_is_placed_there_again(
    layout_from_drafts: LayoutFactory,
) -> None:
    """The trash is a fixture of the deck, not an asset: a plate in it is in the deck, in the
    resource ``trash``, at its location there, and a workcell built from that has it there."""
    layout = layout_from_drafts(demo_workcell())
    async with await LiveWorkcell.build(layout) as workcell:
        plate, deck = workcell.get("dest_plate"), workcell.get("deck")
        trash = deck.get_trash_area()
        plate.unassign()
        trash.assign_child_resource(plate, location=Coordinate(5, 5, 0))
        (place,) = workcell.placements(["dest_plate"]).values()
        assert (place.parent, place.slot, place.location) == ("deck", trash.name, (5.0, 5.0, 0.0))
        moved = workcell.follow_moves()
    async with await LiveWorkcell.build(moved) as rebuilt:
        placed = rebuilt.get("dest_plate")
        assert placed.parent.name == trash.name and placed.location == Coordinate(5, 5, 0)
