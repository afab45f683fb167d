"""Binding requirements to assets: type ancestry, distinctness, names, pins, busy and status."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.resources import Plate, Resource, TipRack

from praxis_asset_manager.matching import Binding, bind, match
from praxis_contracts.assets import Asset, AssetStatus
from praxis_contracts.common import AssetKind
from praxis_contracts.errors import NoMatchingAssets
from praxis_contracts.protocols import AssetRequirementSpec
from praxis_plr.types import fqn, type_ancestry

PLATE = fqn(Plate)
TIP_RACK = fqn(TipRack)
DEEP_WELL = "acme.labware.DeepWellPlate"  # a Plate subclass, as type_ancestry would list it
WORKCELL = uuid.uuid4()
NOW = datetime.now(UTC)


def asset(
    name: str,
    type_mro: list[str],
    *,
    kind: AssetKind = "resource",
    shareable: bool = False,
    status: AssetStatus = AssetStatus.AVAILABLE,
) -> Asset:
    return Asset(
        accession_id=uuid.uuid4(),
        workcell_id=WORKCELL,
        kind=kind,
        name=name,
        fqn=type_mro[0],
        type_mro=type_mro,
        definition={},
        shareable=shareable,
        status=status,
        created_at=NOW,
        updated_at=NOW,
    )


def plate(name: str, **kwargs: object) -> Asset:
    return asset(name, type_ancestry(Plate), **kwargs)  # type: ignore[arg-type]


def need(name: str, type_fqn: str = PLATE, *, optional: bool = False) -> AssetRequirementSpec:
    return AssetRequirementSpec(name=name, type_fqn=type_fqn, kind="resource", optional=optional)


def chosen(bindings: list[Binding] | None) -> dict[str, str]:
    assert bindings is not None, "expected bindings, got 'must wait'"
    return {b.requirement.name: b.asset.name for b in bindings}


def test_a_requirement_matches_a_subclass() -> None:
    deep = asset("deep", [DEEP_WELL, *type_ancestry(Plate)])
    tips = asset("tips", type_ancestry(TipRack))
    assert chosen(bind([need("plate")], [tips, deep], {}, set())) == {"plate": "deep"}


def test_a_requirement_never_matches_a_base_class_or_sibling() -> None:
    generic = asset("generic", type_ancestry(Resource))
    tips = asset("tips", type_ancestry(TipRack))
    with pytest.raises(NoMatchingAssets) as caught:
        bind([need("plate")], [generic, tips], {}, set())
    assert caught.value.details["requirements"] == ["plate"]
    (problem,) = caught.value.details["problems"]
    assert problem["requirement"] == "plate" and "has no" in problem["reason"]


def test_machines_match_by_ancestry_too() -> None:
    lh = asset("lh", type_ancestry(LiquidHandler), kind="machine")
    req = AssetRequirementSpec(name="handler", type_fqn=fqn(LiquidHandler), kind="machine")
    assert chosen(bind([req], [lh], {}, set())) == {"handler": "lh"}


def test_two_requirements_bind_two_distinct_assets() -> None:
    assets = [plate("p1"), plate("p2")]
    result = chosen(bind([need("a"), need("b")], assets, {}, set()))
    assert sorted(result.values()) == ["p1", "p2"]


def test_one_plate_cannot_serve_two_requirements() -> None:
    with pytest.raises(NoMatchingAssets, match="distinct"):
        bind([need("a"), need("b")], [plate("p1")], {}, set())


def test_a_shareable_asset_may_serve_two_requirements() -> None:
    shared = plate("shared", shareable=True)
    result = chosen(bind([need("a"), need("b")], [shared], {}, set()))
    assert result == {"a": "shared", "b": "shared"}


def test_an_asset_named_like_the_requirement_is_preferred() -> None:
    assets = [plate("dest_plate"), plate("source_plate")]
    assert chosen(bind([need("source_plate")], assets, {}, set())) == {
        "source_plate": "source_plate"
    }
    both = chosen(bind([need("source_plate"), need("dest_plate")], assets, {}, set()))
    assert both == {"source_plate": "source_plate", "dest_plate": "dest_plate"}


def test_without_a_name_match_assets_are_taken_in_name_order() -> None:
    assets = [plate("b_plate"), plate("a_plate"), plate("c_plate")]
    assert chosen(bind([need("plate")], assets, {}, set())) == {"plate": "a_plate"}


def test_pins_by_name_and_by_id_are_honoured() -> None:
    p1, p2 = plate("p1"), plate("p2")
    assert chosen(bind([need("plate")], [p1, p2], {"plate": "p2"}, set())) == {"plate": "p2"}
    by_id = {"plate": str(p2.accession_id)}
    assert chosen(bind([need("plate")], [p1, p2], by_id, set())) == {"plate": "p2"}


def test_a_pin_to_an_unknown_asset_is_impossible() -> None:
    with pytest.raises(NoMatchingAssets):
        bind([need("plate")], [plate("p1")], {"plate": "nope"}, set())


def test_a_pin_to_a_busy_asset_waits() -> None:
    p1, p2 = plate("p1"), plate("p2")
    assert bind([need("plate")], [p1, p2], {"plate": "p2"}, {p2.accession_id}) is None


def test_busy_assets_are_avoided_when_others_fit() -> None:
    p1, p2 = plate("p1"), plate("p2")
    assert chosen(bind([need("plate")], [p1, p2], {}, {p1.accession_id})) == {"plate": "p2"}


def test_all_candidates_busy_means_wait() -> None:
    p1, p2 = plate("p1"), plate("p2")
    assert bind([need("a"), need("b")], [p1, p2], {}, {p2.accession_id}) is None


def test_impossible_requirements_raise_even_when_assets_are_busy() -> None:
    p1 = plate("p1")
    with pytest.raises(NoMatchingAssets, match="tips"):
        bind([need("plate"), need("tips", TIP_RACK)], [p1], {}, {p1.accession_id})


def test_an_optional_requirement_without_a_candidate_is_skipped() -> None:
    result = bind([need("plate"), need("tips", TIP_RACK, optional=True)], [plate("p1")], {}, set())
    assert chosen(result) == {"plate": "p1"}


def test_an_optional_requirement_never_takes_a_required_ones_asset() -> None:
    reqs = [need("extra", optional=True), need("plate")]
    assert chosen(bind(reqs, [plate("p1")], {}, set())) == {"plate": "p1"}


@pytest.mark.parametrize("status", [AssetStatus.MAINTENANCE, AssetStatus.ERROR])
def test_assets_in_maintenance_or_error_are_not_used(status: AssetStatus) -> None:
    broken = plate("plate", status=status)
    with pytest.raises(NoMatchingAssets):
        bind([need("plate")], [broken], {}, set())
    fine = plate("zz_plate")
    assert chosen(bind([need("plate")], [broken, fine], {}, set())) == {"plate": "zz_plate"}


def test_bindings_keep_the_requirement_spec() -> None:
    req = need("plate")
    (binding,) = bind([req], [plate("p1")], {}, set()) or []
    assert binding.requirement == req


# -- physical containment: two robots on one workcell ------------------------------------------

LH = fqn(LiquidHandler)


def on(child: Asset, parent: Asset) -> Asset:
    return child.model_copy(update={"parent_id": parent.accession_id})


def two_robots() -> dict[str, Asset]:
    """Two liquid handlers, each with its deck, a tip rack and a plate; a plate in no machine."""
    lh_a = asset("lh_a", type_ancestry(LiquidHandler), kind="machine")
    lh_b = asset("lh_b", type_ancestry(LiquidHandler), kind="machine")
    deck_a = on(asset("deck_a", type_ancestry(Resource), kind="deck"), lh_a)
    deck_b = on(asset("deck_b", type_ancestry(Resource), kind="deck"), lh_b)
    return {
        a.name: a
        for a in (
            lh_a,
            lh_b,
            deck_a,
            deck_b,
            on(asset("tips_a", type_ancestry(TipRack)), deck_a),
            on(asset("tips_b", type_ancestry(TipRack)), deck_b),
            on(plate("plate_a"), deck_a),
            on(plate("plate_b"), deck_b),
            plate("plate_shelf"),
        )
    }


def robot_run() -> list[AssetRequirementSpec]:
    return [
        AssetRequirementSpec(name="lh", type_fqn=LH, kind="machine"),
        need("tips", TIP_RACK),
        need("plate"),
    ]


def test_labware_is_bound_on_the_deck_of_the_robot_the_run_gets() -> None:
    assets = two_robots()
    pool = list(assets.values())
    bindings = bind(robot_run(), pool, {}, set())
    assert chosen(bindings) == {"lh": "lh_a", "tips": "tips_a", "plate": "plate_a"}
    assert bindings is not None
    reasons = {b.requirement.name: b.reason for b in bindings}
    assert reasons["tips"] == "the first free TipRack by name, in 'lh_a'"

    # lh_a busy: the run gets lh_b and, with it, what is on lh_b's deck (never tips_a).
    busy = {assets["lh_a"].accession_id}
    assert chosen(bind(robot_run(), pool, {}, busy)) == {
        "lh": "lh_b",
        "tips": "tips_b",
        "plate": "plate_b",
    }
    # The rack on lh_b's deck busy too: lh_b cannot work without tips, the run waits.
    busy |= {assets["tips_b"].accession_id}
    assert bind(robot_run(), pool, {}, busy) is None


def test_a_pin_decides_the_robot_and_a_pin_on_the_other_deck_is_refused() -> None:
    pool = list(two_robots().values())
    pinned = bind(robot_run(), pool, {"tips": "tips_b"}, set())
    assert chosen(pinned) == {"lh": "lh_b", "tips": "tips_b", "plate": "plate_b"}
    assert pinned is not None and {b.requirement.name: b.reason for b in pinned}["tips"] == (
        "pinned, in 'lh_b'"
    )

    with pytest.raises(NoMatchingAssets) as refused:
        bind(robot_run(), pool, {"lh": "lh_a", "tips": "tips_b"}, set())
    message = refused.value.message
    assert "'tips_b' (in 'lh_b')" in message and "'lh_a' (in no machine)" in message
    with pytest.raises(NoMatchingAssets):
        bind(robot_run(), pool, {"plate": "plate_shelf"}, set())  # on no robot's deck


def test_a_pin_outside_the_robot_waits_while_another_run_holds_it() -> None:
    """The shelf plate's run may be moving it onto lh_a's deck: not refused while it is held,
    decided again (with where it is then) once released."""
    assets = two_robots()
    pool = list(assets.values())
    shelf = assets["plate_shelf"].accession_id
    pins = {"lh": "lh_a", "plate": "plate_shelf"}
    found = match(robot_run(), pool, pins, held=lambda asset_id: asset_id == shelf)
    assert found.now(lambda asset_id: asset_id == shelf) is None  # waits for it
    assert found.now(lambda _: False) is None  # still outside lh_a once free: never bound
    with pytest.raises(NoMatchingAssets):
        match(robot_run(), pool, pins, held=lambda _: False)  # nobody holds it: refused now


def test_a_run_without_machines_takes_labware_wherever_it_is() -> None:
    pool = list(two_robots().values())
    assert chosen(bind([need("plate")], pool, {"plate": "plate_shelf"}, set())) == {
        "plate": "plate_shelf"
    }


def test_labware_the_protocol_moves_in_is_bound_wherever_it_is() -> None:
    pool = list(two_robots().values())
    moved_in = AssetRequirementSpec(name="plate", type_fqn=PLATE, kind="resource", moves_in=True)
    run = [*robot_run()[:2], moved_in]
    bindings = bind(run, pool, {"plate": "plate_shelf"}, set())
    assert chosen(bindings) == {"lh": "lh_a", "tips": "tips_a", "plate": "plate_shelf"}
    assert bindings is not None
    assert {b.requirement.name: b.reason for b in bindings}["plate"] == (
        "pinned, moved in by the protocol"
    )
