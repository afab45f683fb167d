"""Live PyLabRobot object trees -> ``AssetDraft`` lists, and the demo workcell."""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.liquid_handling.backends import LiquidHandlerChatterboxBackend
from pylabrobot.machines.machine import Machine
from pylabrobot.plate_reading import PlateReader, PlateReaderChatterboxBackend
from pylabrobot.resources import (
    PLT_CAR_L5AC_A00,
    TIP_CAR_480_A00,
    Carrier,
    Container,
    Deck,
    ItemizedResource,
    Lid,
    PetriDishHolder,
    PlateAdapter,
    Resource,
    ResourceHolder,
    ResourceStack,
    STARLetDeck,
    Trash,
    cor_96_wellplate_360uL_Fb,
    hamilton_96_tiprack_1000uL,
)

from praxis_contracts.assets import Asset, AssetDraft, Workcell, WorkcellLayout
from praxis_contracts.common import AssetKind
from praxis_contracts.errors import InvalidRequest, UnknownAssetType
from praxis_contracts.state import Placement
from praxis_plr._state import state_to_json
from praxis_plr.types import asset_kind, fqn, import_type, type_ancestry

# Labware a protocol may request: plates, tip racks, tube racks (itemized), troughs, tubes, petri
# dishes (containers), lids. Trash is a container too, but it is a deck fixture.
_LABWARE: tuple[type[Resource], ...] = (ItemizedResource, Container, Lid)
_FIXTURES: tuple[type[Resource], ...] = (Trash,)
# Structure that holds labware: looked through, never emitted (carrier sites are slots).
_HOLDERS: tuple[type[Resource], ...] = (
    Carrier,
    ResourceHolder,
    ResourceStack,
    PlateAdapter,
    PetriDishHolder,
)


_STRUCTURE = frozenset(fqn(holder) for holder in _HOLDERS)


def is_structure(asset: Asset) -> bool:
    """Decks, carriers and other holders: what labware sits on, not labware (an asset of its
    own when created by name, e.g. a carrier placed on a deck by its rails)."""
    return asset.kind == "deck" or (
        asset.kind == "resource" and not _STRUCTURE.isdisjoint(asset.type_mro)
    )


def machine_frames(layout: WorkcellLayout, machines: Collection[str]) -> set[str]:
    """The structure assets (``is_structure``) below the named machines, reached through
    structure only: a liquid handler's deck and the carriers on it are the machine's."""
    by_id = {asset.accession_id: asset for asset in layout.assets}
    found = set()
    for asset in layout.assets:
        if not is_structure(asset):
            continue
        node = by_id.get(asset.parent_id) if asset.parent_id is not None else None
        seen = 0
        while node is not None and is_structure(node) and seen < len(by_id):
            node = by_id.get(node.parent_id) if node.parent_id is not None else None
            seen += 1
        if node is not None and node.kind == "machine" and node.name in machines:
            found.add(asset.name)
    return found


def drafts_for_tree(
    root: Resource,
    *,
    root_kind: AssetKind | None = None,
    shareable: Collection[str] = frozenset(),
    states: bool = True,
) -> list[AssetDraft]:
    """Turn a live PyLabRobot tree into ``AssetDraft``s, root first.

    * the root (``root_kind`` defaults to ``asset_kind(type(root))``): ``definition`` is
      ``root.serialize()``; for machines ``backend`` is ``root.backend.serialize()``;
    * a deck inside it (kind ``deck``, parent = the root);
    * each labware item a protocol might request (plates, tip racks, troughs, tubes, tube racks,
      lids; kind ``resource``), parent = the nearest emitted asset (deck or machine), ``slot`` =
      the name of the resource it sits in (e.g. the carrier site), ``definition`` its own
      ``serialize()`` and, if ``states``, ``state`` its ``serialize_all_state()`` (well volumes,
      tips present) as strict JSON;
    * machines mounted inside the tree (e.g. a heater-shaker on the deck), as machines.

    Carriers, carrier sites, wells and tip spots are not emitted: they are part of the parent's or
    the labware's definition. Deck fixtures (trash, the waste block and its teaching rack) are
    skipped: they do not sit in a carrier / holder and are not labware a protocol asks for.

    Args:
        root: The tree's root: a machine (``LiquidHandler``, ``PlateReader``, …), a deck, a
            carrier or a labware item.
        root_kind: Overrides the kind derived from the root's class.
        shareable: Names of assets to mark ``shareable``.
        states: Whether labware drafts carry ``state``.

    Raises:
        UnknownAssetType: if the root is not a PyLabRobot resource.
        ValueError: if two emitted assets share a name.
    """
    kind = root_kind or asset_kind(type(root))
    if kind is None or not isinstance(root, Resource):
        raise UnknownAssetType(f"{fqn(type(root))} is not a PyLabRobot resource.")
    drafts = [_draft(root, kind, parent=None, slot=None, shareable=shareable, states=states)]
    if not isinstance(root, _LABWARE):  # labware's children (wells, tip spots) are its definition
        _walk(root, root.name, drafts, shareable=shareable, states=states)
    names = [draft.name for draft in drafts]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"Asset names must be unique within a workcell: {duplicates}")
    emitted = {draft.name for draft in drafts[1:] if draft.kind != "deck"}
    # Only what sits in a holder (a carrier site) can be put back by its slot alone; labware
    # placed at a location on the deck stays in the definition that holds the location.
    separate = {
        child.name
        for child in root.get_all_children()
        if child.name in emitted and isinstance(child.parent, ResourceHolder)
    }
    return [
        draft.model_copy(update={"definition": without_children(draft.definition, separate)})
        for draft in drafts
    ]


def without_children(definition: dict[str, Any], separate: Collection[str]) -> dict[str, Any]:
    """``definition`` without the subtrees of the resources named in ``separate``.

    A liquid handler's ``serialize()`` holds its deck, every carrier and every plate and tip rack
    with each of their wells: 2.7 MB for a STAR deck with 40 pieces of labware. Each of those is
    an asset of its own, with its own definition and state, placed back in its ``slot`` when the
    workcell is built, so its parent's definition leaves it out (the handler's drops to its deck
    and carriers, under 30 KB). Decks stay in their machine's definition (a liquid handler
    cannot be built without one), and so does what sits at a location rather than in a holder.
    """
    children = definition.get("children")
    if not children:
        return definition
    kept = [
        without_children(child, separate)
        for child in children
        if not (isinstance(child, dict) and child.get("name") in separate)
    ]
    return {**definition, "children": kept}


def embeds(definition: dict[str, Any], name: str) -> bool:
    """Whether a resource named ``name`` is somewhere inside ``definition``'s children."""
    stack = list(definition.get("children") or [])
    while stack:
        child = stack.pop()
        if isinstance(child, dict):
            if child.get("name") == name:
                return True
            stack.extend(child.get("children") or [])
    return False


def definition_location(definition: dict[str, Any]) -> tuple[float, float, float] | None:
    """The location a definition records (``serialize()``'s Coordinate), if any."""
    where = definition.get("location")
    if not isinstance(where, dict):
        return None
    try:
        return (float(where["x"]), float(where["y"]), float(where["z"]))
    except (KeyError, TypeError, ValueError):
        return None


def is_moved(
    *,
    parent_id: uuid.UUID | None,
    parent_name: str | None,
    slot: str | None,
    definition: dict[str, Any],
    placement: Placement,
) -> bool:
    """Whether ``placement`` (where the live workcell has a labware) is somewhere else than an
    asset record says: another parent or slot (a slot naming the parent itself is no slot), or
    another recorded location."""
    slot_now = None if slot is not None and slot == parent_name else slot
    if (parent_id, slot_now) != (placement.parent_id, placement.slot):
        return True
    recorded = definition_location(definition)
    return placement.location is not None and recorded not in (None, placement.location)


def placed_definition(
    definition: dict[str, Any],
    parent_name: str | None,
    location: tuple[float, float, float] | None,
) -> dict[str, Any]:
    """A labware's definition after a move: its new holder's name and, where the holder does
    not place it by itself, its location there (``serialize()``'s form)."""
    placed = {**definition, "parent_name": parent_name}
    if location is not None:
        x, y, z = location
        placed["location"] = {"x": x, "y": y, "z": z, "type": "Coordinate"}
    return placed


def _walk(
    node: Resource,
    owner: str,
    drafts: list[AssetDraft],
    *,
    shareable: Collection[str],
    states: bool,
) -> None:
    """Emit the assets below ``node``; ``owner`` is the name of the nearest emitted ancestor."""
    for child in node.children:
        slot = node.name
        if isinstance(child, Machine):
            drafts.append(_draft(child, "machine", owner, slot, shareable=shareable, states=states))
            _walk(child, child.name, drafts, shareable=shareable, states=states)
        elif isinstance(child, Deck):
            drafts.append(_draft(child, "deck", owner, None, shareable=shareable, states=states))
            _walk(child, child.name, drafts, shareable=shareable, states=states)
        elif isinstance(child, _LABWARE) and not isinstance(child, _FIXTURES):
            drafts.append(
                _draft(child, "resource", owner, slot, shareable=shareable, states=states)
            )
        elif isinstance(child, _HOLDERS):
            _walk(child, owner, drafts, shareable=shareable, states=states)


def _draft(
    resource: Resource,
    kind: AssetKind,
    parent: str | None,
    slot: str | None,
    *,
    shareable: Collection[str],
    states: bool,
) -> AssetDraft:
    backend = resource.backend.serialize() if isinstance(resource, Machine) else None
    state = state_to_json(resource.serialize_all_state()) if states and kind == "resource" else None
    return AssetDraft(
        kind=kind,
        name=resource.name,
        fqn=fqn(type(resource)),
        definition=resource.serialize(),
        backend=backend,
        state=state,
        parent=parent,
        slot=slot,
        shareable=resource.name in shareable,
    )


def demo_liquid_handler() -> LiquidHandler:
    """The demo liquid handler (not set up): chatterbox backend, STARLet deck, tips and plates.

    ``tip_rack`` (Hamilton 1000 uL) on a ``TIP_CAR_480_A00``; ``source_plate`` (every well 200 uL)
    and ``dest_plate`` (Corning 96, 360 uL) on a ``PLT_CAR_L5AC_A00``.
    """
    deck = STARLetDeck()  # a factory: the deck is a HamiltonSTARDeck named "deck"
    handler = LiquidHandler(
        backend=LiquidHandlerChatterboxBackend(num_channels=8), deck=deck, name="liquid_handler"
    )
    tip_carrier = TIP_CAR_480_A00(name="tip_carrier")
    tip_carrier[0] = hamilton_96_tiprack_1000uL(name="tip_rack")
    plate_carrier = PLT_CAR_L5AC_A00(name="plate_carrier")
    source = cor_96_wellplate_360uL_Fb(name="source_plate")
    plate_carrier[0] = source
    plate_carrier[1] = cor_96_wellplate_360uL_Fb(name="dest_plate")
    deck.assign_child_resource(tip_carrier, rails=1)
    deck.assign_child_resource(plate_carrier, rails=9)
    # Setting a volume does not need the global volume-tracking switch (only liquid operations
    # consult it), so nothing global is flipped here.
    for well in source.get_all_items():
        well.tracker.set_volume(200)
    return handler


def demo_plate_reader() -> PlateReader:
    """The demo plate reader (not set up, empty): chatterbox backend."""
    return PlateReader(
        name="plate_reader",
        size_x=200.0,
        size_y=300.0,
        size_z=150.0,
        backend=PlateReaderChatterboxBackend(),
    )


def demo_workcell() -> list[AssetDraft]:
    """Drafts of the demo workcell.

    ``liquid_handler`` (machine), ``deck`` (deck), ``tip_rack``, ``source_plate``, ``dest_plate``
    (resources) and a standalone ``plate_reader`` (machine). ``source_plate``'s state carries
    200 uL in every well.
    """
    return [*drafts_for_tree(demo_liquid_handler()), *drafts_for_tree(demo_plate_reader())]


# -- layouts as the asset-manager hands them out ------------------------------------------------
def type_mro_of(fqn: str) -> list[str]:
    """Type ancestry of a class name, or of what a factory name builds (as the catalog does)."""
    try:
        return type_ancestry(import_type(fqn))
    except UnknownAssetType:
        module, _, attr = fqn.rpartition(".")
        factory = getattr(importlib.import_module(module), attr)
        return type_ancestry(type(factory(name="probe")))


def layout_from_drafts(drafts: list[AssetDraft], workcell: str = "demo") -> WorkcellLayout:
    """Drafts resolved into a workcell layout as the asset-manager would hand it out: fresh ids
    (so lease keys are the caller's own), parents by name, type ancestry (tests, simulations)."""
    now = datetime.now(UTC)
    cell = Workcell(accession_id=uuid.uuid4(), name=workcell, created_at=now)
    ids = {draft.name: uuid.uuid4() for draft in drafts}
    missing = sorted({d.parent for d in drafts if d.parent is not None and d.parent not in ids})
    if missing:
        raise InvalidRequest(f"parents not in the inventory: {missing}", parents=missing)
    assets = [
        Asset(
            accession_id=ids[d.name],
            workcell_id=cell.accession_id,
            kind=d.kind,
            name=d.name,
            fqn=d.fqn,
            type_mro=type_mro_of(d.fqn),
            definition=d.definition,
            backend=d.backend,
            state=d.state,
            parent_id=ids[d.parent] if d.parent is not None else None,
            slot=d.slot,
            properties=d.properties,
            shareable=d.shareable,
            created_at=now,
            updated_at=now,
        )
        for d in drafts
    ]
    return WorkcellLayout(workcell=cell, assets=assets)
