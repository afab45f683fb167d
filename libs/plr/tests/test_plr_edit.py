"""An operator's change to a labware's recorded state, checked by real PyLabRobot objects."""

from __future__ import annotations

from typing import Any

import pytest

from praxis_contracts.assets import Asset
from praxis_contracts.errors import InvalidInput, InvalidRequest
from praxis_plr.edit import ALL_SPOTS, edited_state
from praxis_plr.layout import demo_workcell


@pytest.fixture
def assets(layout_from_drafts: Any) -> dict[str, Asset]:
    return {a.name: a for a in layout_from_drafts(demo_workcell()).assets}


def volume(state: dict[str, Any], well: str) -> tuple[float, float]:
    return state[well]["volume"], state[well]["pending_volume"]


def test_a_well_volume_is_set_and_the_rest_kept(assets: dict[str, Asset]) -> None:
    plate = assets["source_plate"]
    state = edited_state(plate, {"source_plate_well_A1": {"volume": 150}})
    assert volume(state, "source_plate_well_A1") == (150, 150)
    assert volume(state, "source_plate_well_B1") == (200, 200)  # as it was recorded
    assert set(state) == set(plate.state or {})


def test_every_well_at_once_and_named_wells_over_it(assets: dict[str, Asset]) -> None:
    state = edited_state(
        assets["dest_plate"], {"*": {"volume": 100}, "dest_plate_well_H12": {"volume": 5}}
    )
    volumes = {name: fields["volume"] for name, fields in state.items() if "volume" in fields}
    assert len(volumes) == 96 and volumes.pop("dest_plate_well_H12") == 5
    assert set(volumes.values()) == {100}
    with pytest.raises(InvalidInput, match="no wells"):
        edited_state(assets["tip_rack"], {"*": {"volume": 1}})


def test_a_volume_past_the_well_or_below_nothing_is_refused(assets: dict[str, Asset]) -> None:
    plate = assets["source_plate"]
    for bad in (-1, 10_000):
        with pytest.raises(InvalidInput, match="source_plate_well_A1"):
            edited_state(plate, {"source_plate_well_A1": {"volume": bad}})


def test_a_part_the_labware_does_not_have_is_refused(assets: dict[str, Asset]) -> None:
    with pytest.raises(InvalidInput, match="dest_plate_well_A1"):
        edited_state(assets["source_plate"], {"dest_plate_well_A1": {"volume": 1}})


def test_a_state_pylabrobot_cannot_load_is_refused(assets: dict[str, Asset]) -> None:
    with pytest.raises(InvalidInput, match="must be a number"):
        edited_state(assets["source_plate"], {"source_plate_well_A1": {"volume": "lots"}})
    with pytest.raises(InvalidInput, match="cannot load"):  # a tip PyLabRobot cannot rebuild
        edited_state(assets["tip_rack"], {"tip_rack_tipspot_A1": {"tip": {"type": "Nope"}}})


def test_tips_are_taken_out_put_back_filled_and_emptied(assets: dict[str, Asset]) -> None:
    rack = assets["tip_rack"]
    state = edited_state(rack, tips={"A1": False, "tip_rack_tipspot_B1": False})
    assert state["tip_rack_tipspot_A1"]["tip"] is None
    assert state["tip_rack_tipspot_B1"]["tip"] is None
    assert state["tip_rack_tipspot_C1"]["tip"] is not None
    emptied = edited_state(rack.model_copy(update={"state": state}), tips={ALL_SPOTS: False})
    assert all(v["tip"] is None for k, v in emptied.items() if "_tipspot_" in k)
    filled = edited_state(rack.model_copy(update={"state": emptied}), tips={ALL_SPOTS: True})
    assert all(v["tip"] is not None for k, v in filled.items() if "_tipspot_" in k)
    with pytest.raises(InvalidInput, match="Z99"):
        edited_state(rack, tips={"Z99": True})
    with pytest.raises(InvalidInput, match="not a tip rack"):
        edited_state(assets["source_plate"], tips={"A1": True})


def test_only_labware_state_is_set_this_way(assets: dict[str, Asset]) -> None:
    with pytest.raises(InvalidRequest, match="machine"):
        edited_state(assets["liquid_handler"], {"liquid_handler": {}})
