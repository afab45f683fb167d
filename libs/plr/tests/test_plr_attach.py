"""Assets added to a workcell after its root was defined (created by type or factory name)."""

from __future__ import annotations

import uuid

import pytest
from pylabrobot.resources import Plate, cor_96_wellplate_360uL_Fb

from praxis_contracts.assets import AssetDraft, WorkcellLayout
from praxis_contracts.errors import InvalidRequest
from praxis_plr.layout import demo_workcell
from praxis_plr.live import LiveWorkcell

FACTORY = "pylabrobot.resources.corning.plates.cor_96_wellplate_360uL_Fb"


def extra_plate(slot: str) -> AssetDraft:
    return AssetDraft(
        kind="resource",
        name="extra_plate",
        fqn=FACTORY,  # a factory name, as the catalog lets users create labware
        definition=cor_96_wellplate_360uL_Fb("extra_plate").serialize(),
        parent="deck",
        slot=slot,
    )


async def test_a_factory_made_plate_is_placed_in_its_slot(layout_from_drafts) -> None:  # type: ignore[no-untyped-def]
    layout = layout_from_drafts([*demo_workcell(), extra_plate("plate_carrier-2")])
    workcell = await LiveWorkcell.build(layout)
    try:
        plate = workcell.get("extra_plate")
        assert isinstance(plate, Plate)
        assert plate.parent is not None and plate.parent.name == "plate_carrier-2"
        deck = workcell.get("deck")
        assert deck.get_resource("extra_plate") is plate
        assert plate.get_well("B1").name == "extra_plate_well_B1"
    finally:
        await workcell.stop()


async def test_a_slot_that_cannot_hold_it_is_a_clear_error(layout_from_drafts) -> None:  # type: ignore[no-untyped-def]
    layout = layout_from_drafts([*demo_workcell(), extra_plate("plate_carrier-0")])  # taken
    with pytest.raises(InvalidRequest, match="plate_carrier-0"):
        await LiveWorkcell.build(layout)


async def test_extend_adds_new_assets_and_keeps_the_live_ones(layout_from_drafts) -> None:  # type: ignore[no-untyped-def]
    drafts = demo_workcell()
    workcell = await LiveWorkcell.build(layout_from_drafts(drafts))
    try:
        lh, source = workcell.get("liquid_handler"), workcell.get("source_plate")
        await lh.pick_up_tips([workcell.get("tip_rack").get_item("A1")])
        await lh.aspirate([source.get_well("A1")], vols=[40])
        await lh.dispense([workcell.get("dest_plate").get_well("A1")], vols=[40])

        grown = with_ids_of(
            workcell.layout, layout_from_drafts([*drafts, extra_plate("plate_carrier-2")])
        )
        assert await workcell.extend(grown) == ["extra_plate"]
        assert workcell.get("liquid_handler") is lh and lh.setup_finished
        assert source.get_well("A1").tracker.get_used_volume() == 160  # state kept
        assert workcell.get("extra_plate").parent.name == "plate_carrier-2"
        assert "extra_plate" in workcell.names()
    finally:
        await workcell.stop()


def with_ids_of(old: WorkcellLayout, new: WorkcellLayout) -> WorkcellLayout:
    """``new`` with the ids ``old`` gave to the same names (the inventory keeps an asset's id)."""
    ids = {asset.name: asset.accession_id for asset in old.assets}
    by_id = {asset.accession_id: asset.name for asset in new.assets}
    return new.model_copy(
        update={
            "assets": [
                asset.model_copy(
                    update={
                        "accession_id": ids.get(asset.name, asset.accession_id),
                        "parent_id": asset.parent_id
                        and ids.get(by_id[asset.parent_id], asset.parent_id),
                    }
                )
                for asset in new.assets
            ]
        }
    )


async def test_extend_follows_a_replaced_and_a_moved_plate(layout_from_drafts) -> None:  # type: ignore[no-untyped-def]
    drafts = demo_workcell()
    workcell = await LiveWorkcell.build(layout_from_drafts(drafts))
    try:
        lh, source = workcell.get("liquid_handler"), workcell.get("source_plate")
        await lh.pick_up_tips([workcell.get("tip_rack").get_item("A1")])
        await lh.aspirate([source.get_well("A1")], vols=[40])
        await lh.dispense([workcell.get("dest_plate").get_well("A1")], vols=[40])
        await lh.return_tips()

        # dest_plate deleted and created again under its name (a new id) in the same site;
        # source_plate moved to another site.
        layout = workcell.layout
        fresh = [
            a.model_copy(update={"accession_id": uuid.uuid4()}) if a.name == "dest_plate" else a
            for a in layout.assets
        ]
        moved = [
            a.model_copy(update={"slot": "plate_carrier-3"}) if a.name == "source_plate" else a
            for a in fresh
        ]
        changed = await workcell.extend(layout.model_copy(update={"assets": moved}))
        assert sorted(changed) == ["dest_plate", "source_plate"]

        dest = workcell.get("dest_plate")
        assert dest.get_well("A1").tracker.get_used_volume() == 0  # a new plate, not the old
        assert workcell.get("source_plate") is source  # the same live plate…
        assert source.parent.name == "plate_carrier-3"  # …in its new place…
        assert source.get_well("A1").tracker.get_used_volume() == 160  # …with its liquid
        assert workcell.get("liquid_handler") is lh and lh.setup_finished
        await lh.pick_up_tips([workcell.get("tip_rack").get_item("B1")])
        await lh.aspirate([source.get_well("A1")], vols=[10])  # still usable where it is now
    finally:
        await workcell.stop()


async def test_extend_follows_a_renamed_plate_and_a_renamed_deck(layout_from_drafts) -> None:  # type: ignore[no-untyped-def]
    """Before, a plate renamed in place kept its old name live and the next extend failed
    ("plate_carrier-1 already holds 'dest_plate'"); renaming the deck detached what was on it."""
    workcell = await LiveWorkcell.build(layout_from_drafts(demo_workcell()))
    try:
        source = workcell.get("source_plate")
        source.get_well("A1").tracker.set_volume(123)
        renamed = {"source_plate": "reagents", "deck": "main_deck"}
        layout = workcell.layout
        changed = await workcell.extend(
            layout.model_copy(
                update={
                    "assets": [
                        a.model_copy(update={"name": renamed.get(a.name, a.name)})
                        for a in layout.assets
                    ]
                }
            )
        )
        assert changed == ["reagents"]
        assert workcell.get("reagents") is source and source.name == "reagents"
        assert source.get_well("A1").tracker.get_used_volume() == 123  # its liquid kept
        deck = workcell.get("main_deck")  # the same deck (PyLabRobot keeps its own name)
        assert deck is workcell.get("liquid_handler").deck
        assert deck.get_resource("reagents") is source  # found by its new name
        assert workcell.get("dest_plate").parent.name == "plate_carrier-1"  # untouched
        assert workcell.has({a.accession_id: a.name for a in workcell.layout.assets})
        assert await workcell.extend(workcell.layout) == []  # and stable
    finally:
        await workcell.stop()
