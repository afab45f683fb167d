"""Refuse an asset definition the orchestrator could not build, when it is written.

Before, the inventory stored whatever it was given: a plate whose well state lacked
``pending_volume`` was accepted (201), and the run on it failed while preparing with
``KeyError: 'pending_volume'``. Building the PyLabRobot object the way the orchestrator will
(``live._deserialize_root``, then ``load_all_state``) turns that into a ``422`` naming the field.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime
from typing import Any

from pylabrobot.resources import Container, Resource

from praxis_contracts.assets import Asset, AssetDraft
from praxis_contracts.common import AssetKind
from praxis_contracts.errors import InvalidInput, InvalidRequest
from praxis_plr._state import state_from_json
from praxis_plr.layout import drafts_for_tree
from praxis_plr.live import _deserialize_root, _ensure_backend_class
from praxis_plr.types import import_type


def check_buildable(
    *,
    kind: AssetKind,
    name: str,
    fqn: str,
    type_mro: list[str],
    definition: dict[str, Any],
    backend: dict[str, Any] | None,
    state: dict[str, Any] | None,
) -> list[AssetDraft]:
    """Build the asset's PyLabRobot object and load its state; ``InvalidInput`` (422) with
    ``field`` set to ``definition``, ``backend`` or ``state`` if that cannot be done. Returns
    the decks a machine's definition holds, as drafts of assets of their own (children of the
    machine, as a machine built by name gets them; they stay in its definition)."""
    asset = _probe(kind, name, fqn, type_mro, definition, backend)
    import_type(type_mro[0] if type_mro else fqn)
    for candidate, field in ((backend, "backend"), (definition.get("backend"), "definition")):
        if isinstance(candidate, dict):
            try:
                _ensure_backend_class(candidate)
            except Exception as exc:
                raise InvalidInput(f"{field}: {exc}", field=field, asset=name) from exc
    try:
        obj = _deserialize_root(asset)
    except InvalidRequest as exc:
        raise InvalidInput(exc.message, field="definition", asset=name) from exc
    if state is not None:
        _check_state(obj, state)
    if kind != "machine" or not isinstance(obj, Resource):
        return []
    return [
        draft
        for draft in drafts_for_tree(obj, states=False)[1:]
        if draft.kind == "deck" and draft.parent == name
    ]


def _probe(
    kind: AssetKind,
    name: str,
    fqn: str,
    type_mro: list[str],
    definition: dict[str, Any],
    backend: dict[str, Any] | None,
) -> Asset:
    """An asset of no workcell, to build as the orchestrator would build the real one."""
    now = datetime.now(UTC)
    return Asset(
        accession_id=uuid.uuid4(),
        workcell_id=uuid.uuid4(),
        kind=kind,
        name=name,
        fqn=fqn,
        type_mro=type_mro,
        definition=definition,
        backend=backend,
        created_at=now,
        updated_at=now,
    )


def _check_state(obj: Resource, state: dict[str, Any]) -> None:
    """Every entry names a resource of this tree, and loads into it as PyLabRobot expects."""
    names = {obj.name, *(child.name for child in obj.get_all_children())}
    unknown = sorted(set(state) - names)
    if unknown:
        shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
        raise InvalidInput(
            f"state names resources that are not part of {obj.name!r}: {shown} (state is keyed "
            f"by resource name, e.g. {obj.name}_well_A1 for a plate's well A1)",
            field="state",
            unknown=unknown[:20],
        )
    decoded = state_from_json(state)
    for resource in (obj, *obj.get_all_children()):
        entry = decoded.get(resource.name)
        if entry is None:
            continue
        where = f"state.{resource.name}"
        if not isinstance(entry, dict):
            raise InvalidInput(f"{where} must be an object", field=where)
        try:
            resource.load_state(entry)
        except KeyError as exc:
            raise InvalidInput(f"{where} lacks {exc}", field=where) from exc
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"{where}: {exc}", field=where) from exc
        if isinstance(resource, Container):
            _check_volume(resource, where)


def _check_volume(container: Container, where: str) -> None:
    tracker = container.tracker
    for label, value in (("volume", tracker.volume), ("pending_volume", tracker.pending_volume)):
        if not isinstance(value, int | float) or math.isnan(value) or value < 0:
            raise InvalidInput(f"{where}.{label} must be a number >= 0", field=where)
        if value > tracker.max_volume + 1e-9:
            raise InvalidInput(
                f"{where}.{label} {value} exceeds the container's {tracker.max_volume} uL",
                field=where,
            )


__all__ = ["check_buildable"]
