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
        raise NoMatchingAssets(
            "no asset matches " + ", ".join(f"{r.name} ({r.type_fqn})" for r in missing),
            requirements=[r.name for r in missing],
        )
    found = Match(requirements, options)
    if found.now(lambda _: False) is None:
        raise NoMatchingAssets("the requirements cannot all be bound to distinct assets")
    return found


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
