"""The PyLabRobot walk behind the catalog, and building definitions from type names (no I/O)."""

from __future__ import annotations

import pytest
from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.resources import Plate, Resource
from pylabrobot.resources.hamilton.hamilton_decks import HamiltonSTARDeck

from praxis_asset_manager import discovery
from praxis_contracts.errors import InvalidRequest
from praxis_plr.types import fqn


@pytest.fixture(scope="module")
def walked() -> discovery.Walk:
    return discovery.walk()


def test_walk_is_deterministic(walked: discovery.Walk) -> None:
    again = discovery.walk()
    assert again.entries == walked.entries
    names = [entry.fqn for entry in walked.entries]
    assert names == sorted(set(names))  # sorted, no duplicates


def test_entries_are_keyed_by_their_defining_module(walked: discovery.Walk) -> None:
    for entry in walked.entries:
        obj = discovery.import_object(entry.fqn)
        assert obj is not None, entry.fqn
        assert f"{obj.__module__}.{obj.__qualname__}" == entry.fqn
        assert entry.module == obj.__module__
        assert isinstance(obj, type) is not entry.is_factory


def test_backends_and_broken_modules_are_skipped(walked: discovery.Walk) -> None:
    assert "pylabrobot.resources.falcon" in walked.skipped  # raises on import (deprecated)
    assert discovery._is_skipped("pylabrobot.liquid_handling.backends.hamilton.STAR_backend")
    assert discovery._is_skipped("pylabrobot.plate_reading.clario_star_backend")
    assert not discovery._is_skipped("pylabrobot.resources.corning.plates")
    assert not any("backend" in entry.module for entry in walked.entries)


def test_instantiate_a_factory_and_a_factory_without_a_name() -> None:
    entries = {entry.fqn: entry for entry in discovery.walk(("resources",)).entries}
    built = discovery.instantiate(
        entries["pylabrobot.resources.corning.plates.cor_96_wellplate_360uL_Fb"], "p"
    )
    assert built.type_mro[0] == fqn(Plate) and built.type_mro[-1] == fqn(Resource)
    assert built.root.definition["name"] == "p" and built.root.state is not None

    deck = discovery.instantiate(
        entries["pylabrobot.resources.hamilton.hamilton_decks.STARLetDeck"], "bench_deck"
    )
    assert deck.root.kind == "deck" and deck.root.definition["name"] == "bench_deck"
    assert deck.type_mro[0] == fqn(HamiltonSTARDeck) and deck.root.state is None


def test_instantiate_says_what_a_type_needs_beyond_a_name(walked: discovery.Walk) -> None:
    (entry,) = [e for e in walked.entries if e.fqn == fqn(LiquidHandler)]
    with pytest.raises(InvalidRequest, match="needs a backend") as caught:
        discovery.instantiate(entry, "lh")
    assert caught.value.details["field"] == "backend"
    backend = {"type": "LiquidHandlerChatterboxBackend", "settings": {}}
    with pytest.raises(InvalidRequest, match="needs deck") as caught:
        discovery.instantiate(entry, "lh", backend=backend)
    assert caught.value.details["missing"] == ["deck"]


def test_canonical_fqn_follows_reexports() -> None:
    assert discovery.canonical_fqn("pylabrobot.resources.Plate") == fqn(Plate)
    assert discovery.canonical_fqn("pylabrobot.resources.NoSuchThing") is None
    assert discovery.canonical_fqn("sys.exit") is None  # only PyLabRobot names are imported
