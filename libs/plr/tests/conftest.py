"""Helpers for praxis_plr tests: turn drafts into a WorkcellLayout as the asset-manager would."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from datetime import UTC, datetime
from uuid import uuid4

import pytest

from praxis_contracts.assets import Asset, AssetDraft, Workcell, WorkcellLayout
from praxis_contracts.errors import UnknownAssetType
from praxis_plr import import_type, type_ancestry


def _ancestry(name: str) -> list[str]:
    """Type ancestry of a class name, or of what a factory name builds (as the catalog does)."""
    try:
        return type_ancestry(import_type(name))
    except UnknownAssetType:
        module, _, attr = name.rpartition(".")
        factory = getattr(importlib.import_module(module), attr)
        return type_ancestry(type(factory(name="probe")))


def _layout_from_drafts(drafts: list[AssetDraft], name: str = "demo") -> WorkcellLayout:
    """Resolve drafts into assets (ids, parents by name, ancestry); JSON round-trip the layout."""
    now = datetime.now(UTC)
    workcell = Workcell(accession_id=uuid4(), name=name, created_at=now)
    ids = {draft.name: uuid4() for draft in drafts}
    assets = [
        Asset(
            accession_id=ids[draft.name],
            workcell_id=workcell.accession_id,
            kind=draft.kind,
            name=draft.name,
            fqn=draft.fqn,
            type_mro=_ancestry(draft.fqn),
            definition=draft.definition,
            backend=draft.backend,
            state=draft.state,
            parent_id=ids[draft.parent] if draft.parent is not None else None,
            slot=draft.slot,
            properties=draft.properties,
            shareable=draft.shareable,
            created_at=now,
            updated_at=now,
        )
        for draft in drafts
    ]
    layout = WorkcellLayout(workcell=workcell, assets=assets)
    # Prove the wire format: everything the live side needs survives JSON.
    return WorkcellLayout.model_validate_json(layout.model_dump_json())


LayoutFactory = Callable[[list[AssetDraft]], WorkcellLayout]


@pytest.fixture
def layout_from_drafts() -> LayoutFactory:
    """The drafts -> ``WorkcellLayout`` resolver (a fixture: works with --import-mode=importlib)."""
    return _layout_from_drafts
