"""Helpers for praxis_plr tests: turn drafts into a WorkcellLayout as the asset-manager would."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from praxis_contracts.assets import AssetDraft, WorkcellLayout
from praxis_plr import layout as plr_layout


def _layout_from_drafts(drafts: list[AssetDraft], name: str = "demo") -> WorkcellLayout:
    """Resolve drafts into assets (ids, parents by name, ancestry); JSON round-trip the layout."""
    layout = plr_layout.layout_from_drafts(drafts, name)
    # Prove the wire format: everything the live side needs survives JSON.
    return WorkcellLayout.model_validate_json(layout.model_dump_json())


LayoutFactory = Callable[[list[AssetDraft]], WorkcellLayout]


@pytest.fixture
def layout_from_drafts() -> LayoutFactory:
    """The drafts -> ``WorkcellLayout`` resolver (a fixture: works with --import-mode=importlib)."""
    return _layout_from_drafts
