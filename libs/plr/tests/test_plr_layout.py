from __future__ import annotations

import json

import pytest
from pylabrobot.resources import Coordinate, cor_96_wellplate_360uL_Fb

from praxis_contracts.assets import AssetDraft
from praxis_contracts.errors import UnknownAssetType
from praxis_plr import demo_liquid_handler, demo_workcell, drafts_for_tree, fqn
from praxis_plr.types import import_type


def by_name(drafts: list[AssetDraft]) -> dict[str, AssetDraft]:
    return {draft.name: draft for draft in drafts}


def test_demo_workcell_drafts() -> None:
    drafts = demo_workcell()
    names = [draft.name for draft in drafts]
    assert names == [
        "liquid_handler",
        "deck",
        "tip_rack",
        "source_plate",
        "dest_plate",
        "plate_reader",
    ]
    assert len(set(names)) == len(names)
    d = by_name(drafts)
    expected = {
        "liquid_handler": ("machine", None),
        "deck": ("deck", "liquid_handler"),
        "tip_rack": ("resource", "deck"),
        "source_plate": ("resource", "deck"),
        "dest_plate": ("resource", "deck"),
        "plate_reader": ("machine", None),
    }
    assert {name: (draft.kind, draft.parent) for name, draft in d.items()} == expected
    assert d["tip_rack"].slot == "tip_carrier-0"
    assert d["source_plate"].slot == "plate_carrier-0"
    assert d["dest_plate"].slot == "plate_carrier-1"
    assert d["liquid_handler"].backend == {
        "type": "LiquidHandlerChatterboxBackend",
        "num_channels": 8,
    }
    assert d["plate_reader"].backend == {"type": "PlateReaderChatterboxBackend"}
    assert d["deck"].backend is None and d["source_plate"].backend is None
    for draft in drafts:
        assert draft.definition["name"] == draft.name
        assert import_type(draft.fqn).__name__ == draft.definition["type"]
        json.dumps(draft.model_dump(mode="json"), allow_nan=False)
    assert d["source_plate"].fqn == "pylabrobot.resources.plate.Plate"


def test_demo_workcell_states() -> None:
    d = by_name(demo_workcell())
    source = d["source_plate"].state
    assert source is not None
    wells = {k: v for k, v in source.items() if k.startswith("source_plate_well_")}
    assert len(wells) == 96
    assert all(w["volume"] == 200 and w["pending_volume"] == 200 for w in wells.values())
    dest = d["dest_plate"].state
    assert dest is not None
    assert all(v["volume"] == 0 for k, v in dest.items() if k.startswith("dest_plate_well_"))
    tips = d["tip_rack"].state
    assert tips is not None
    assert tips["tip_rack_tipspot_A1"]["tip"] is not None  # tips present travel as state
    assert d["liquid_handler"].state is None and d["deck"].state is None


def test_fixtures_and_carriers_are_skipped() -> None:
    names = {draft.name for draft in drafts_for_tree(demo_liquid_handler())}
    for skipped in ("trash", "trash_core96", "waste_block", "teaching_tip_rack", "tip_carrier"):
        assert skipped not in names
    assert not any("well" in name or "tipspot" in name or "carrier-" in name for name in names)


def test_standalone_labware_and_options() -> None:
    plate = cor_96_wellplate_360uL_Fb(name="loose_plate")
    [draft] = drafts_for_tree(plate, shareable={"loose_plate"}, states=False)
    assert (draft.kind, draft.parent, draft.slot, draft.state) == ("resource", None, None, None)
    assert draft.shareable
    assert draft.fqn == fqn(type(plate))


def test_labware_directly_on_deck() -> None:
    handler = demo_liquid_handler()
    handler.deck.assign_child_resource(
        cor_96_wellplate_360uL_Fb(name="on_deck"), location=Coordinate(600, 100, 100)
    )
    d = by_name(drafts_for_tree(handler))
    assert (d["on_deck"].parent, d["on_deck"].slot) == ("deck", "deck")


def test_not_a_resource() -> None:
    with pytest.raises(UnknownAssetType):
        drafts_for_tree(Coordinate(1, 2, 3))
