"""Admission: refuse at submission a run whose assets could never be reserved.

Without it such a run was created (201), then failed a moment later with ``no_matching_assets``
when the asset-manager handled its ``ReserveAssets``: the client learnt of its mistake only by
polling, and a failed run was left behind. Two checks run after the protocol is resolved and
before the run is created:

- here, against the definition: every pin and every ``asset_properties`` entry must name one of
  the protocol's asset requirements (``invalid_parameters``, like an unknown run parameter);
- on the asset-manager (``CheckReservation``, the same matching as a reservation, leasing
  nothing): the workcell exists, each pin names an asset of the right type, and some asset has
  the required properties (``no_matching_assets``). Busy assets are no reason to refuse: the run
  waits for them.

The reservation stays the authority (the inventory may change between the two), so when the
asset-manager cannot answer the submission is accepted unchecked rather than refused: a run must
be submittable while the asset-manager restarts, as it always was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from praxis_contracts.assets import CheckReservation
from praxis_contracts.errors import InvalidParameters, Timeout, Unavailable
from praxis_contracts.protocols import AssetRequirementSpec, ResolvedProtocol
from praxis_contracts.runs import SubmitRun
from praxis_runtime.bus import Bus

log = logging.getLogger(__name__)


async def admit(cmd: SubmitRun, resolved: ResolvedProtocol, bus: Bus) -> None:
    """Raise the typed error that would fail the run's reservation, if any can be known now."""
    requirements = resolved.definition.spec.assets
    check_declared(requirements, cmd.assets, cmd.asset_properties)
    check = CheckReservation(
        requirements=requirements,
        workcell=cmd.workcell,
        pins=cmd.assets,
        properties=cmd.asset_properties,
    )
    try:
        await bus.request(check)
    except (Unavailable, Timeout) as exc:
        log.warning("submission of %s not checked: %s", resolved.definition.spec.name, exc)


def check_declared(
    requirements: Iterable[AssetRequirementSpec],
    pins: Mapping[str, str],
    properties: Mapping[str, object],
) -> None:
    """``InvalidParameters`` naming each pin or ``asset_properties`` entry for a requirement
    the protocol does not declare (the asset-manager would silently ignore it)."""
    declared = sorted(r.name for r in requirements)
    problems = [
        {"loc": f"{field}.{name}", "msg": f"the protocol has no asset requirement {name!r}"}
        for field, names in (("assets", pins), ("asset_properties", properties))
        for name in names
        if name not in declared
    ]
    if problems:
        raise InvalidParameters(
            "unknown asset requirement: " + ", ".join(p["loc"] for p in problems),
            errors=problems,
            requirements=declared,
        )


__all__ = ["admit", "check_declared"]
