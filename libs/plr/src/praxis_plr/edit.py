"""An operator's change to a labware's recorded state, checked by PyLabRobot (pure: no I/O).

``edited_state`` takes the asset as the inventory has it (definition and recorded state), loads
that into a PyLabRobot copy, applies the change and reads the copy's state back: what comes out
is what ``serialize_all_state`` says, so a run that loads it meets exactly that. The change is
refused (``InvalidInput`` naming the part) when it names a part the asset does not have, when
PyLabRobot cannot load it, or when a well would hold less than nothing or more than it can.

Two ways to say it, combinable:

* ``state``: part name -> fields of its ``serialize_state()`` to change (the others are kept):
  ``{"plate_well_A1": {"volume": 150}}``; ``"*"`` is every well (``{"*": {"volume": 100}}``
  fills the plate; named parts override it). Setting ``volume`` alone sets ``pending_volume`` to
  it (nothing is in flight between runs).
* ``tips``: for a tip rack, tip spot (``"A1"`` or its full name) -> whether a tip is there, as
  ``TipRack.set_tip_state`` takes it; ``{"*": true}`` fills every spot, ``{"*": false}`` empties
  the rack.
"""

from __future__ import annotations

import copy
from typing import Any

from pylabrobot.resources import Resource, TipRack
from pylabrobot.resources.volume_tracker import VolumeTracker

from praxis_contracts.assets import Asset
from praxis_contracts.errors import InvalidInput, InvalidRequest
from praxis_plr._state import state_from_json, state_to_json
from praxis_plr.live import _deserialize_root, own_state

ALL_SPOTS = "*"


def edited_state(
    asset: Asset,
    state: dict[str, dict[str, Any]] | None = None,
    tips: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """The asset's recorded state with ``state`` and ``tips`` applied (JSON, as stored)."""
    if asset.kind != "resource":
        raise InvalidRequest(
            f"{asset.name!r} is a {asset.kind}: only labware state is set this way",
            asset=asset.name,
        )
    obj = _deserialize_root(asset)
    if asset.state:
        obj.load_all_state(state_from_json(copy.deepcopy(asset.state)))
    if state:
        _apply_fields(obj, state)
    if tips:
        _apply_tips(obj, tips)
    _check_volumes(obj)
    return state_to_json(own_state(obj))


def _apply_fields(obj: Resource, changes: dict[str, dict[str, Any]]) -> None:
    current = own_state(obj)
    if ALL_SPOTS in changes:  # every well (every part holding liquid), then the named ones
        every = changes[ALL_SPOTS]
        wells = [
            name for name, fields in current.items() if "volume" in fields and name != obj.name
        ]
        if not wells:
            raise InvalidInput(f"{obj.name!r} has no wells to set", asset=obj.name)
        named = {name: fields for name, fields in changes.items() if name != ALL_SPOTS}
        changes = {name: every for name in wells} | named
    unknown = sorted(name for name in changes if name not in current)
    if unknown:
        raise InvalidInput(
            f"{obj.name!r} has no part {', '.join(map(repr, unknown))} (its parts are named "
            f"like {next(iter(current))!r})",
            parts=unknown,
        )
    merged: dict[str, dict[str, Any]] = {}
    for name, fields in changes.items():
        if not isinstance(fields, dict):
            raise InvalidInput(f"the state of {name!r} must be an object", part=name)
        change = dict(fields)
        if "volume" in change and "pending_volume" not in change:
            change["pending_volume"] = change["volume"]
        merged[name] = {**current[name], **change}
    try:
        obj.load_all_state(state_from_json(copy.deepcopy(merged)))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidInput(
            f"PyLabRobot cannot load this state into {obj.name!r}: {exc!r}", asset=obj.name
        ) from exc


def _apply_tips(obj: Resource, tips: dict[str, bool]) -> None:
    if not isinstance(obj, TipRack):
        raise InvalidInput(f"{obj.name!r} is not a tip rack: it has no tips", asset=obj.name)
    if set(tips) == {ALL_SPOTS}:
        obj.fill() if tips[ALL_SPOTS] else obj.empty()
        return
    spots: dict[str, bool] = {}
    for spot, present in tips.items():
        name = spot.removeprefix(f"{obj.name}_tipspot_")
        try:
            obj.get_item(name)
        except (IndexError, KeyError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"{obj.name!r} has no tip spot {spot!r}", spot=spot) from exc
        spots[name] = bool(present)
    obj.set_tip_state(spots)  # the spots not named stay as they are


def _check_volumes(obj: Resource) -> None:
    for part in [obj, *obj.get_all_children()]:
        tracker = getattr(part, "tracker", None)
        if not isinstance(tracker, VolumeTracker):
            continue
        volume, most = tracker.get_used_volume(), tracker.max_volume
        if isinstance(volume, bool) or not isinstance(volume, int | float):
            raise InvalidInput(f"the volume of {part.name!r} must be a number", part=part.name)
        if volume < 0 or volume > most:
            raise InvalidInput(
                f"{part.name!r} would hold {volume} µL; it holds 0 to {most} µL",
                part=part.name,
                volume=volume,
                max_volume=most,
            )


__all__ = ["ALL_SPOTS", "edited_state"]
