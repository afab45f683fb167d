from __future__ import annotations

import subprocess
import sys
from typing import Optional, Union

import pytest
from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.machines.machine import Machine
from pylabrobot.plate_reading import PlateReader
from pylabrobot.resources import (
    Coordinate,
    Deck,
    Plate,
    Resource,
    STARLetDeck,
    TipRack,
    cor_96_wellplate_360uL_Fb,
)
from pylabrobot.resources.hamilton.hamilton_decks import HamiltonSTARDeck

from praxis_contracts.errors import ErrorCode, UnknownAssetType
from praxis_plr import asset_kind, fqn, import_type, type_ancestry, unwrap_optional


@pytest.mark.parametrize("cls", [LiquidHandler, PlateReader, HamiltonSTARDeck, Plate, TipRack])
def test_fqn_import_type_round_trip(cls: type) -> None:
    name = fqn(cls)
    assert name == f"{cls.__module__}.{cls.__qualname__}"
    assert import_type(name) is cls


def test_fqn_is_the_defining_module() -> None:
    assert fqn(Plate) == "pylabrobot.resources.plate.Plate"
    assert fqn(LiquidHandler) == "pylabrobot.liquid_handling.liquid_handler.LiquidHandler"


def test_import_type_accepts_re_export_path() -> None:
    assert import_type("pylabrobot.resources.Plate") is Plate


@pytest.mark.parametrize(
    "name",
    [
        "pylabrobot.nope.Nope",
        "os.path",
        "pylabrobot.resources.Coordinate",  # a pylabrobot class, not a Resource
        "pylabrobot.resources.STARLetDeck",  # a factory function, not a class
        "pylabrobot.resources.plate.Nope",
        "pylabrobot",
    ],
)
def test_import_type_rejects(name: str) -> None:
    with pytest.raises(UnknownAssetType) as info:
        import_type(name)
    assert name in str(info.value)
    assert info.value.code is ErrorCode.UNKNOWN_ASSET_TYPE
    assert info.value.details == {"fqn": name}


def test_asset_kind() -> None:
    assert asset_kind(LiquidHandler) == "machine"
    assert asset_kind(PlateReader) == "machine"
    assert asset_kind(type(STARLetDeck())) == "deck"
    assert asset_kind(Deck) == "deck"
    assert asset_kind(Plate) == "resource"
    assert asset_kind(Resource) == "resource"
    assert asset_kind(Machine) == "machine"
    assert asset_kind(Coordinate) is None
    assert asset_kind(int) is None


def test_type_ancestry() -> None:
    plate_cls = type(cor_96_wellplate_360uL_Fb(name="p"))
    ancestry = type_ancestry(plate_cls)
    assert ancestry[0] == fqn(plate_cls)
    assert fqn(Plate) in ancestry
    assert ancestry[-1] == fqn(Resource)
    assert all(name.startswith("pylabrobot.") for name in ancestry)

    machine = type_ancestry(PlateReader)
    assert machine[0] == fqn(PlateReader)
    assert fqn(Machine) in machine
    assert fqn(Resource) in machine


def test_unwrap_optional() -> None:
    assert unwrap_optional(Optional[Plate]) == (Plate, True)  # noqa: UP045
    assert unwrap_optional(Plate | None) == (Plate, True)
    assert unwrap_optional(None | Plate) == (Plate, True)
    assert unwrap_optional(Plate) == (Plate, False)
    assert unwrap_optional(Plate | TipRack) == (Plate | TipRack, False)
    inner, optional = unwrap_optional(Union[Plate, TipRack, None])  # noqa: UP007
    assert optional
    assert inner == Union[Plate, TipRack]  # noqa: UP007
    assert unwrap_optional(list[int]) == (list[int], False)


def test_import_has_no_global_side_effects() -> None:
    code = (
        "import praxis_plr\n"
        "from pylabrobot.resources import does_tip_tracking, does_volume_tracking\n"
        "praxis_plr.demo_workcell()\n"
        "assert not does_tip_tracking() and not does_volume_tracking()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
