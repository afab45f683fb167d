"""Bind a run's asset requirements to concrete assets of one workcell (pure, no I/O).

A requirement matches an asset whose type ancestry contains the requirement's type (a ``Plate``
requirement matches any plate class). Two requirements never bind the same asset unless it is
shareable. Pins name the asset a requirement must use; required properties must be present with
equal values; otherwise an asset named like the requirement is preferred, then assets in name
order.

Physical containment: when a run binds machines or decks (its *containers*), each of its other
assets (labware) is bound inside the tree of one of them (on the liquid handler's deck, in the
reader), found through the assets' parents. A run with two robots on one workcell therefore gets
the tip rack of the robot it was given, and a pinned rack on the other robot's deck is refused
(``NoMatchingAssets`` naming where each candidate is). A run that binds no container (labware
only) is not constrained, nor is labware its protocol says it moves in from wherever it is
(``@protocol_function(moves_in=["plate"])``: a hotel, storage). Each binding says why it was
chosen (``reason``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from praxis_contracts.assets import Asset, AssetStatus
from praxis_contracts.errors import NoMatchingAssets
from praxis_contracts.protocols import AssetRequirementSpec

UNUSABLE = frozenset({AssetStatus.MAINTENANCE, AssetStatus.ERROR})


CONTAINERS = frozenset({"machine", "deck"})
"""Requirement kinds whose assets hold the run's labware."""


@dataclass(frozen=True)
class Binding:
    requirement: AssetRequirementSpec
    asset: Asset
    reason: str = ""
    """Why this asset: pinned, inside which machine, named like the requirement, or first."""


def candidates(
    req: AssetRequirementSpec,
    assets: Iterable[Asset],
    properties: Mapping[str, Any] | None = None,
) -> list[Asset]:
    """Usable assets of the requirement's type (or a subclass) with the required properties."""
    found = [
        a
        for a in assets
        if req.type_fqn in a.type_mro
        and a.status not in UNUSABLE
        and all(a.properties.get(k) == v for k, v in (properties or {}).items())
    ]
    return sorted(found, key=lambda a: (a.name != req.name, a.name))  # same name first


@dataclass(frozen=True)
class Match:
    """Every asset each requirement could use on one workcell (computed once per request)."""

    requirements: list[AssetRequirementSpec]
    options: dict[str, list[Asset]]
    parents: Mapping[uuid.UUID, uuid.UUID | None] = field(default_factory=dict)
    """Each asset's parent asset on the workcell (for containment)."""
    pins: Mapping[str, str] = field(default_factory=dict)

    @property
    def wanted(self) -> set[uuid.UUID]:
        return {a.accession_id for assets in self.options.values() for a in assets}

    def now(self, is_busy: Callable[[uuid.UUID], bool]) -> list[Binding] | None:
        """Bindings using only assets that are not busy, or None if the run must wait."""
        found = _assign(self.requirements, self.options, is_busy, self.parents)
        return None if found is None else explained(found, self.parents, self.pins)


def match(
    requirements: list[AssetRequirementSpec],
    assets: list[Asset],
    pins: Mapping[str, str],
    properties: Mapping[str, Mapping[str, Any]] | None = None,
    by_ref: Mapping[str, Asset] | None = None,
    held: Callable[[uuid.UUID], bool] | None = None,
) -> Match:
    """The options of every requirement; ``NoMatchingAssets`` if no assignment could ever exist.

    A pin names its asset by name or id; ``by_ref`` maps both to the asset (built if not given).
    ``held``: whether another run holds an asset. Such a run may move it (into the reader the
    request binds, say): containment that fails only while a candidate is held is decided when
    it is released (the request waits), not refused now.
    """
    required = properties or {}
    if pins and by_ref is None:
        by_ref = {a.name: a for a in assets} | {str(a.accession_id): a for a in assets}

    def pool(r: AssetRequirementSpec) -> Iterable[Asset]:
        pin = pins.get(r.name)
        if not pin:
            return assets
        assert by_ref is not None
        return [by_ref[pin]] if pin in by_ref else []

    options = {r.name: candidates(r, pool(r), required.get(r.name)) for r in requirements}
    missing = [
        r for r in requirements if not options[r.name] and (not r.optional or r.name in pins)
    ]
    if missing:
        problems = [
            unmatched(r, assets, pins.get(r.name), required.get(r.name), by_ref) for r in missing
        ]
        raise NoMatchingAssets(
            "no asset matches " + "; ".join(f"{p['requirement']}: {p['reason']}" for p in problems),
            requirements=[r.name for r in missing],
            problems=problems,
        )
    parents = {a.accession_id: a.parent_id for a in assets}
    found = Match(requirements, options, parents, pins)
    if found.now(lambda _: False) is None:
        if _assign(requirements, options, lambda _: False, None) is not None:
            if held is not None and any(held(a.accession_id) for a in _all(options)):
                return found  # where a held asset will be is known once its run lets go
            raise _not_contained(requirements, options, assets, parents)
        raise NoMatchingAssets("the requirements cannot all be bound to distinct assets")
    return found


def _all(options: Mapping[str, list[Asset]]) -> Iterable[Asset]:
    return (asset for assets in options.values() for asset in assets)


def _not_contained(
    requirements: list[AssetRequirementSpec],
    options: Mapping[str, list[Asset]],
    assets: list[Asset],
    parents: Mapping[uuid.UUID, uuid.UUID | None],
) -> NoMatchingAssets:
    """Why the requirements cannot be bound inside the machines that handle them: where each
    requirement's candidates are."""
    by_id = {a.accession_id: a for a in assets}

    def where(asset: Asset) -> str:
        for ancestor in _ancestors(asset.accession_id, parents):
            holder = by_id.get(ancestor)
            if holder is not None and holder.kind == "machine":
                return f"in {holder.name!r}"
        return "in no machine"

    placed = {
        r.name: [f"{a.name!r} ({where(a)})" for a in options[r.name]]
        for r in requirements
        if options[r.name]
    }
    said = "; ".join(f"{name}: {', '.join(found)}" for name, found in placed.items())
    return NoMatchingAssets(
        "the run's labware cannot all be bound inside the machines it binds (a pin on another "
        f"machine's deck?): {said}",
        placements=placed,
    )


def _ancestors(
    asset_id: uuid.UUID, parents: Mapping[uuid.UUID, uuid.UUID | None]
) -> list[uuid.UUID]:
    """The asset's parent, its parent's parent ... (cycles cut)."""
    found: list[uuid.UUID] = []
    current = parents.get(asset_id)
    while current is not None and current not in found:
        found.append(current)
        current = parents.get(current)
    return found


def unmatched(
    req: AssetRequirementSpec,
    assets: list[Asset],
    pin: str | None,
    properties: Mapping[str, Any] | None,
    by_ref: Mapping[str, Asset] | None,
) -> dict[str, Any]:
    """Why ``req`` has no candidate, naming its pin or the properties at fault: what a client
    needs to fix its submission. Only called once matching has failed (never on the hot path)."""
    problem: dict[str, Any] = {"requirement": req.name, "type": req.type_fqn}
    wanted = dict(properties or {})
    if wanted:
        problem["properties"] = wanted
    if pin:
        problem["pin"] = pin
        asset = (by_ref or {}).get(pin)
        if asset is None:
            reason = f"pin {pin!r} names no asset of the workcell"
        elif req.type_fqn not in asset.type_mro:
            reason = f"pin {pin!r} is a {asset.fqn}, not a {req.type_fqn}"
        elif asset.status in UNUSABLE:
            reason = f"pin {pin!r} is in status {asset.status}"
        else:
            reason = f"pin {pin!r} lacks the required properties {wanted}"
        return problem | {"reason": reason}
    of_type = [a for a in assets if req.type_fqn in a.type_mro]
    usable = [a for a in of_type if a.status not in UNUSABLE]
    if not of_type:
        reason = f"the workcell has no {req.type_fqn}"
    elif not usable:
        reason = f"every {req.type_fqn} of the workcell is in maintenance or error"
    else:
        reason = f"no {req.type_fqn} of the workcell has the required properties {wanted}"
    return problem | {"reason": reason}


def bind(
    requirements: list[AssetRequirementSpec],
    assets: list[Asset],
    pins: Mapping[str, str],
    busy: set[uuid.UUID],
    properties: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[Binding] | None:
    """Bindings using only assets not in ``busy``, or None if the run must wait.

    Raises ``NoMatchingAssets`` if no assignment exists even with every asset free.
    """
    return match(requirements, assets, pins, properties).now(busy.__contains__)


def _assign(
    requirements: list[AssetRequirementSpec],
    options: Mapping[str, list[Asset]],
    is_busy: Callable[[uuid.UUID], bool],
    parents: Mapping[uuid.UUID, uuid.UUID | None] | None,
) -> list[Binding] | None:
    """A binding of every requirement (optional ones if possible) to distinct free assets, the
    containers (machines, decks) first and the labware inside one of them; None if none exists
    now. ``parents`` None: containment not required (to tell a containment conflict apart)."""
    order = sorted(
        requirements, key=lambda r: (r.kind not in CONTAINERS, r.optional, len(options[r.name]))
    )
    chosen: list[Binding] = []

    def search(i: int, used: set[uuid.UUID], containers: dict[uuid.UUID, str]) -> bool:
        if i == len(order):
            return True
        req = order[i]
        for asset in options[req.name]:
            if is_busy(asset.accession_id) or (asset.accession_id in used and not asset.shareable):
                continue
            if (
                req.kind not in CONTAINERS
                and not req.moves_in
                and containers
                and parents is not None
                and _holder(asset, containers, parents) is None
            ):
                continue  # not inside any machine or deck the run binds
            chosen.append(Binding(req, asset))
            inner = containers
            if req.kind in CONTAINERS:
                inner = containers | {asset.accession_id: asset.name}
            if search(i + 1, used | {asset.accession_id}, inner):
                return True
            chosen.pop()
        return req.optional and search(i + 1, used, containers)

    return chosen if search(0, set(), {}) else None


def explained(
    bindings: list[Binding],
    parents: Mapping[uuid.UUID, uuid.UUID | None],
    pins: Mapping[str, str],
) -> list[Binding]:
    """The bindings, each with why it was chosen (the same words for the same grant: a
    re-announced grant says what the first one said)."""
    containers = {
        b.asset.accession_id: b.asset.name for b in bindings if b.requirement.kind in CONTAINERS
    }
    return [
        replace(
            b,
            reason=_why(
                b.requirement,
                b.asset,
                None
                if b.requirement.kind in CONTAINERS or b.requirement.moves_in
                else _holder(b.asset, containers, parents),
                pins,
            ),
        )
        for b in bindings
    ]


def _holder(
    asset: Asset, containers: Mapping[uuid.UUID, str], parents: Mapping[uuid.UUID, uuid.UUID | None]
) -> str | None:
    """The name of the nearest of ``containers`` that ``asset`` is inside, if any."""
    return next(
        (containers[a] for a in _ancestors(asset.accession_id, parents) if a in containers), None
    )


def _why(
    req: AssetRequirementSpec, asset: Asset, holder: str | None, pins: Mapping[str, str]
) -> str:
    if req.name in pins:
        reason = "pinned"
    elif asset.name == req.name:
        reason = "named like the requirement"
    else:
        reason = f"the first free {req.type_fqn.rsplit('.', 1)[-1]} by name"
    if req.moves_in:
        return f"{reason}, moved in by the protocol"
    return f"{reason}, in {holder!r}" if holder is not None else reason
