"""Bind a run's asset requirements to concrete assets of one workcell (pure, no I/O).

A requirement matches an asset whose type ancestry contains the requirement's type (a ``Plate``
requirement matches any plate class). Two requirements never bind the same asset unless it is
shareable. Pins name the asset a requirement must use; required properties must be present with
equal values; otherwise an asset named like the requirement is preferred, then assets in name
order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from praxis_contracts.assets import Asset, AssetStatus
from praxis_contracts.errors import NoMatchingAssets
from praxis_contracts.protocols import AssetRequirementSpec

UNUSABLE = frozenset({AssetStatus.MAINTENANCE, AssetStatus.ERROR})


@dataclass(frozen=True)
class Binding:
    requirement: AssetRequirementSpec
    asset: Asset


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

    @property
    def wanted(self) -> set[uuid.UUID]:
        return {a.accession_id for assets in self.options.values() for a in assets}

    def now(self, is_busy: Callable[[uuid.UUID], bool]) -> list[Binding] | None:
        """Bindings using only assets that are not busy, or None if the run must wait."""
        return _assign(self.requirements, self.options, is_busy)


def match(
    requirements: list[AssetRequirementSpec],
    assets: list[Asset],
    pins: Mapping[str, str],
    properties: Mapping[str, Mapping[str, Any]] | None = None,
    by_ref: Mapping[str, Asset] | None = None,
) -> Match:
    """The options of every requirement; ``NoMatchingAssets`` if no assignment could ever exist.

    A pin names its asset by name or id; ``by_ref`` maps both to the asset (built if not given).
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
    found = Match(requirements, options)
    if found.now(lambda _: False) is None:
        raise NoMatchingAssets("the requirements cannot all be bound to distinct assets")
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
) -> list[Binding] | None:
    order = sorted(requirements, key=lambda r: (r.optional, len(options[r.name])))
    chosen: list[Binding] = []

    def search(i: int, used: set[uuid.UUID]) -> bool:
        if i == len(order):
            return True
        req = order[i]
        for asset in options[req.name]:
            if is_busy(asset.accession_id) or (asset.accession_id in used and not asset.shareable):
                continue
            chosen.append(Binding(req, asset))
            if search(i + 1, used | {asset.accession_id}):
                return True
            chosen.pop()
        return req.optional and search(i + 1, used)

    return chosen if search(0, set()) else None
