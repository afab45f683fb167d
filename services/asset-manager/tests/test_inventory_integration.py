"""Inventory service layer (catalog, commands, status history) against a real PostgreSQL.

No NATS: the service objects are driven directly. One database and one catalog sync per module;
every test creates its own workcell under a unique name.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.plate_reading import PlateReader
from pylabrobot.resources import Deck, Plate, TipRack
from pylabrobot.resources.hamilton.hamilton_decks import HamiltonSTARDeck
from sqlalchemy import func, select, text, update

import praxis_asset_manager
from praxis_asset_manager.catalog import Catalog
from praxis_asset_manager.inventory import Inventory
from praxis_asset_manager.inventory_commands import InventoryCommands
from praxis_asset_manager.orm import OUTBOX, Base, CatalogRow, StatusHistoryRow
from praxis_asset_manager.status import StatusChange, StatusQueue, StatusRecorder
from praxis_contracts.assets import Asset, AssetStatus, ListAssets, Workcell
from praxis_contracts.common import SearchFilters
from praxis_contracts.errors import (
    Conflict,
    InvalidInput,
    InvalidRequest,
    NotFound,
    UnknownAssetType,
)
from praxis_contracts.inventory import (
    AssetStatusChanged,
    CreateAsset,
    CreateWorkcell,
    DeleteAsset,
    DeleteWorkcell,
    ListAssetStatusHistory,
    ListCatalog,
    UpdateAsset,
    UpdateWorkcell,
)
from praxis_devstack.pytest_plugin import MakeDatabase
from praxis_plr.layout import demo_liquid_handler
from praxis_plr.live import LiveWorkcell
from praxis_plr.types import fqn
from praxis_runtime.db import Database
from praxis_runtime.outbox import OutboxRelay

pytestmark = pytest.mark.integration

MIGRATIONS = Path(praxis_asset_manager.__file__).parent / "migrations"
COR_96 = "pylabrobot.resources.corning.plates.cor_96_wellplate_360uL_Fb"
TIPS_1000 = "pylabrobot.resources.hamilton.tip_racks.hamilton_96_tiprack_1000uL"
STARLET = "pylabrobot.resources.hamilton.hamilton_decks.STARLetDeck"


@dataclass
class Stack:
    db: Database
    catalog: Catalog
    inventory: Inventory
    commands: InventoryCommands
    status: StatusRecorder


@pytest.fixture(scope="module")
async def stack(make_database: MakeDatabase) -> AsyncIterator[Stack]:
    db = Database(make_database("inventory"), "asset_manager")
    await db.migrate(MIGRATIONS, Base.metadata)
    catalog = Catalog(db)
    await catalog.sync()  # an empty table is always synced
    relay = OutboxRelay(db, OUTBOX, lambda: None)  # type: ignore[arg-type, return-value]
    inventory = Inventory(db, relay)
    yield Stack(
        db=db,
        catalog=catalog,
        inventory=inventory,
        commands=InventoryCommands(db, inventory, catalog, relay),
        status=StatusRecorder(db, relay, inventory.apply_statuses),
    )
    await db.dispose()


@pytest.fixture
async def workcell(stack: Stack) -> Workcell:
    name = f"wc-{uuid.uuid4().hex[:10]}"
    return await stack.commands.create_workcell(CreateWorkcell(name=name, properties={"lab": 1}))


async def plate(stack: Stack, workcell: Workcell, name: str, **fields: Any) -> Asset:
    cmd = CreateAsset(workcell=workcell.name, kind="resource", name=name, fqn=COR_96, **fields)
    asset = await stack.commands.create_asset(cmd)
    return asset


async def sent(stack: Stack, asset: Asset, *, with_ids: bool = False) -> list[Any]:
    """The status events of ``asset`` committed to the outbox since the last call (the relay
    does not run here: the rows stay in the table), removed as they are read."""
    async with stack.db.transaction() as session:
        rows = (
            await session.execute(
                text(
                    "DELETE FROM asset_manager.outbox WHERE subject = :s "
                    "RETURNING id, payload, headers"
                ),
                {"s": f"{AssetStatusChanged.subject}.{asset.accession_id}"},
            )
        ).all()
    events = [
        (AssetStatusChanged.model_validate_json(bytes(r.payload)), r.headers["Nats-Msg-Id"])
        for r in sorted(rows, key=lambda r: r.id)
    ]
    return events if with_ids else [e for e, _ in events]


async def history(stack: Stack, asset: Asset, **filters: Any) -> list[tuple[Any, ...]]:
    page = await stack.status.history(
        ListAssetStatusHistory(accession_id=asset.accession_id, filters=SearchFilters(**filters))
    )
    return [(e.previous, e.status, e.reason, e.run_id) for e in page.items]


# -- catalog ------------------------------------------------------------------------------------
async def test_catalog_has_classes_and_factories_with_their_kinds(stack: Stack) -> None:
    entries = await stack.catalog.entries()
    expected = {
        fqn(LiquidHandler): ("machine", False),
        fqn(PlateReader): ("machine", False),
        fqn(HamiltonSTARDeck): ("deck", False),
        STARLET: ("deck", True),  # a factory in PyLabRobot 0.2.2 (returns a HamiltonSTARDeck)
        COR_96: ("resource", True),
        TIPS_1000: ("resource", True),
    }
    assert {name: (entries[name].kind, entries[name].is_factory) for name in expected} == expected
    assert entries[COR_96].bases[0] == fqn(Plate)
    assert entries[COR_96].category == "plate"
    assert entries[COR_96].instantiable
    assert fqn(TipRack) in entries[TIPS_1000].bases
    assert entries[STARLET].bases[:1] == [fqn(HamiltonSTARDeck)]
    assert not entries[fqn(LiquidHandler)].instantiable  # needs a backend and a deck
    assert all(not name.split(".")[-1].startswith("_") for name in entries)
    assert len(entries) > 400


async def test_catalog_resyncs_only_when_the_version_changes(stack: Stack) -> None:
    async def synced() -> set[tuple[str, Any]]:
        async with stack.db.transaction() as session:
            rows = await session.execute(
                select(CatalogRow.pylabrobot_version, CatalogRow.synced_at).distinct()
            )
            return {(version, at) for version, at in rows}

    (before,) = await synced()
    again = Catalog(stack.db)
    await again.sync()  # same PyLabRobot version: nothing walked
    assert await synced() == {before}
    assert await again.entries() == await stack.catalog.entries()  # loaded from the table

    async with stack.db.transaction() as session:
        await session.execute(update(CatalogRow).values(pylabrobot_version="0.0.1"))
    await again.sync()
    ((version, at),) = await synced()
    assert version == before[0] and at > before[1]
    async with stack.db.transaction() as session:
        count = await session.scalar(select(func.count()).select_from(CatalogRow))
    assert count == len(await stack.catalog.entries())


async def test_catalog_list_filters_sorts_and_pages(stack: Stack) -> None:
    plates = await stack.catalog.list(
        ListCatalog(search="COR_96_WELLPLATE", kind="resource", filters=SearchFilters(limit=2))
    )
    assert plates.total >= 3 and len(plates.items) == 2
    assert all("cor_96_wellplate" in e.fqn.lower() for e in plates.items)
    assert [e.fqn for e in plates.items] == sorted(e.fqn for e in plates.items)
    second = await stack.catalog.list(
        ListCatalog(search="cor_96_wellplate", filters=SearchFilters(limit=2, offset=2))
    )
    assert not {e.fqn for e in second.items} & {e.fqn for e in plates.items}

    machines = await stack.catalog.list(
        ListCatalog(kind="machine", is_factory=False, filters=SearchFilters(sort_by="-name"))
    )
    names = [e.name for e in machines.items]
    assert "LiquidHandler" in names and names == sorted(names, reverse=True)
    tip_racks = await stack.catalog.list(ListCatalog(base=fqn(TipRack)))
    assert TIPS_1000 in {e.fqn for e in tip_racks.items}
    assert all(fqn(TipRack) in e.bases for e in tip_racks.items)
    assert (await stack.catalog.list(ListCatalog(search="100%_nothing"))).total == 0
    with pytest.raises(InvalidRequest, match="sort"):
        await stack.catalog.list(ListCatalog(filters=SearchFilters(sort_by="bases")))


async def test_resolve_accepts_fqns_reexports_and_unique_names(stack: Stack) -> None:
    assert (await stack.catalog.resolve(COR_96)).fqn == COR_96
    assert (await stack.catalog.resolve("pylabrobot.resources.Plate")).fqn == fqn(Plate)
    assert (await stack.catalog.resolve("cor_96_wellplate_360uL_Fb")).fqn == COR_96


@pytest.mark.parametrize(
    ("name", "suggested"),
    [
        ("pylabrobot.resources.corning.plates.cor_96_wellplate_360ul_fb", COR_96),
        ("cor_96_wellplate_360uL_Fx", COR_96),
        ("pylabrobot.resources.hamilton.tip_racks.hamilton_96_tiprack_1000", TIPS_1000),
        ("pylabrobot.liquid_handling.LiquidHandlr", fqn(LiquidHandler)),
    ],
)
async def test_unknown_type_suggests_close_matches(stack: Stack, name: str, suggested: str) -> None:
    with pytest.raises(UnknownAssetType) as caught:
        await stack.catalog.resolve(name)
    assert suggested in caught.value.details["suggestions"]
    assert name in caught.value.message and "Did you mean" in caught.value.message


async def test_unrelated_names_are_unknown_without_guesses(stack: Stack) -> None:
    with pytest.raises(UnknownAssetType) as caught:
        await stack.catalog.resolve("os.path.join")
    assert caught.value.details["fqn"] == "os.path.join"


# -- workcells and assets -----------------------------------------------------------------------
async def test_create_plate_by_factory_name(stack: Stack, workcell: Workcell) -> None:
    cmd = CreateAsset(workcell=workcell.name, kind="resource", name="src", fqn=COR_96)
    asset = await stack.commands.create_asset(cmd)
    events = await sent(stack, asset)

    assert asset.fqn == COR_96  # kept as given: the factory
    assert asset.type_mro[0] == fqn(Plate) and fqn(Plate) in asset.type_mro
    assert asset.definition["name"] == "src" and asset.definition["type"] == "Plate"
    assert asset.state is not None and "src_well_A1" in asset.state
    assert asset.status is AssetStatus.AVAILABLE and asset.workcell_id == workcell.accession_id
    (event,) = events
    assert (event.asset_id, event.status, event.previous) == (asset.accession_id, "available", None)
    assert await history(stack, asset) == [(None, AssetStatus.AVAILABLE, "created", None)]

    with pytest.raises(Conflict, match="already exists"):
        await stack.commands.create_asset(cmd)
    with pytest.raises(InvalidRequest, match="is a resource, not a machine"):
        await stack.commands.create_asset(cmd.model_copy(update={"kind": "machine", "name": "x"}))
    with pytest.raises(NotFound):
        await stack.commands.create_asset(cmd.model_copy(update={"workcell": "nowhere"}))
    with pytest.raises(UnknownAssetType):
        await stack.commands.create_asset(cmd.model_copy(update={"fqn": "Plat", "name": "y"}))


async def test_types_that_need_more_than_a_name_need_a_definition(
    stack: Stack, workcell: Workcell
) -> None:
    cmd = CreateAsset(workcell=workcell.name, kind="machine", name="lh", fqn=fqn(LiquidHandler))
    with pytest.raises(InvalidRequest, match="needs a backend") as caught:
        await stack.commands.create_asset(cmd)
    assert caught.value.details["field"] == "backend"

    handler = demo_liquid_handler()
    with pytest.raises(InvalidRequest, match="needs a backend"):
        definition = {k: v for k, v in handler.serialize().items() if k != "backend"}
        await stack.commands.create_asset(cmd.model_copy(update={"definition": definition}))
    asset = await stack.commands.create_asset(
        cmd.model_copy(
            update={"definition": handler.serialize(), "backend": handler.backend.serialize()}
        )
    )
    assert asset.type_mro[0] == fqn(LiquidHandler) and asset.kind == "machine"
    # Its deck is an asset of its own, as when a liquid handler is built by name.
    (deck,) = [a for a in (await stack.inventory.layout(workcell.name)).assets if a.kind == "deck"]
    assert (deck.name, deck.parent_id) == ("deck", asset.accession_id)


async def test_a_star_workcell_built_by_names_alone(stack: Stack, workcell: Workcell) -> None:
    """No definition anywhere: a liquid handler with a STARLet deck and a chatterbox backend
    with its settings, carriers on rails, plates and tips on their sites, a heater-shaker on a
    module carrier's site, a reader, and a pump (a machine that is no resource). Each is built
    by PyLabRobot and checked to fit where it goes; the result builds as an orchestrator
    builds it."""
    w = workcell.name

    async def create(kind: str, name: str, fqn_: str, **fields: Any) -> Asset:
        cmd = CreateAsset(workcell=w, kind=kind, name=name, fqn=fqn_, **fields)  # type: ignore[arg-type]
        return await stack.commands.create_asset(cmd)

    lh = await create(
        "machine",
        "lh",
        "LiquidHandler",
        backend={"type": "LiquidHandlerChatterboxBackend", "settings": {"num_channels": 8}},
        arguments={"deck": "STARLetDeck"},
    )
    assert lh.backend == {"type": "LiquidHandlerChatterboxBackend", "num_channels": 8}
    layout = await stack.inventory.layout(w)
    (deck,) = [a for a in layout.assets if a.kind == "deck"]
    assert (deck.name, deck.parent_id) == ("deck", lh.accession_id)  # an asset of its own

    carrier = await create("resource", "plates", "PLT_CAR_L5AC_A00", parent="deck", rails=9)
    assert carrier.parent_id == deck.accession_id and carrier.definition["location"]["x"] > 0
    await create("resource", "tip_carrier", "TIP_CAR_480_A00", parent="deck", rails=1)
    await create(
        "resource", "tips", "hamilton_96_tiprack_1000uL", parent="tip_carrier", slot="tip_carrier-0"
    )
    await create("resource", "source", COR_96, parent="plates", slot="plates-0")
    modules = await create(
        "resource",
        "modules",
        "hamilton_mfx_carrier_L5_base",
        parent="deck",
        rails=15,
        arguments={"modules": {"0": "MFX_DWP_module_flat"}},  # its site 0: "modules-0"
    )
    shaker = await create(
        "machine",
        "shaker",
        "HeaterShaker",
        backend={"type": "HeaterShakerChatterboxBackend", "settings": {}},
        arguments={
            "size_x": 146.2,
            "size_y": 103.8,
            "size_z": 74.11,
            "child_location": {"x": 9.66, "y": 9.22, "z": 74.11},
        },
        parent="modules",
        slot="modules-0",
    )
    assert shaker.parent_id == modules.accession_id
    await create("resource", "shaken", COR_96, parent="shaker")
    await create(
        "machine",
        "reader",
        "PlateReader",
        backend={"type": "PlateReaderChatterboxBackend", "settings": {}},
        arguments={"size_x": 200, "size_y": 300, "size_z": 150},
    )
    pump = await create(
        "machine", "pump", "Pump", backend={"type": "PumpChatterboxBackend", "settings": {}}
    )
    assert pump.definition == {} and "pylabrobot.machines.machine.Machine" in pump.type_mro

    # Refused with the field at fault, and nothing stored.
    with pytest.raises(InvalidInput, match=r"occupied|fit"):  # the plate carrier is on rail 9
        await create("resource", "clash", "PLT_CAR_L5AC_A00", parent="deck", rails=10)
    with pytest.raises(InvalidInput, match="takes no argument 'colour'"):
        await create("resource", "odd", "PLT_CAR_L5AC_A00", arguments={"colour": "red"})
    with pytest.raises(InvalidInput, match="needs size_x"):
        await create(
            "machine",
            "r2",
            "PlateReader",
            backend={"type": "PlateReaderChatterboxBackend", "settings": {}},
        )
    with pytest.raises(InvalidInput, match="NoSuchBackend") as bad:
        await create("machine", "r3", "Pump", backend={"type": "NoSuchBackend", "settings": {}})
    assert bad.value.details["field"] == "backend"
    with pytest.raises(InvalidInput, match="Coordinate"):
        await create(
            "machine",
            "r4",
            "PlateReader",
            backend={"type": "PlateReaderChatterboxBackend", "settings": {}},
            arguments={"size_x": 1, "size_y": 1, "size_z": 1, "child_location": [1, 2]},
        )
    with pytest.raises(InvalidRequest, match="sits in no parent"):
        await create(
            "machine", "p2", "Pump", backend={"type": "PumpChatterboxBackend"}, parent="deck"
        )
    with pytest.raises(InvalidInput, match="Hamilton deck"):
        await create("resource", "c2", "PLT_CAR_L5AC_A00", parent="reader", rails=3)
    names = {a.name for a in (await stack.inventory.layout(w)).assets}
    assert names == {
        "lh",
        "deck",
        "plates",
        "tip_carrier",
        "tips",
        "source",
        "modules",
        "shaker",
        "shaken",
        "reader",
        "pump",
    }

    layout = await stack.inventory.layout(w)
    async with await LiveWorkcell.build(layout) as live:
        built_shaker = live.get("shaker")
        assert built_shaker.parent.name == "modules-0" and built_shaker.setup_finished
        assert live.get("shaken").parent is built_shaker
        assert live.get("source").parent.name == "plates-0"
        assert live.get("plates").parent is live.get("deck")
        assert live.get("lh").deck is live.get("deck")
        assert live.get("pump").setup_finished
        await live.get("pump").run_for_duration(speed=1, duration=0.01)
        lh = live.get("lh")
        await lh.pick_up_tips(live.get("tips")["A1"])
        await lh.aspirate(live.get("source")["A1"], vols=[0])
        await lh.return_tips()


async def test_parents_and_slots(stack: Stack, workcell: Workcell) -> None:
    deck = await stack.commands.create_asset(
        CreateAsset(workcell=workcell.name, kind="deck", name="deck_1", fqn=STARLET)
    )
    assert deck.definition["name"] == "deck_1"  # the factory names it "deck"; the asset wins
    assert fqn(Deck) in deck.type_mro

    by_name = await plate(stack, workcell, "p1", parent="deck_1", slot="carrier_site_0")
    by_id = await plate(stack, workcell, "p2", parent=str(deck.accession_id))
    assert (by_name.parent_id, by_name.slot) == (deck.accession_id, "carrier_site_0")
    assert by_id.parent_id == deck.accession_id

    with pytest.raises(InvalidRequest, match="not an asset of this workcell"):
        await plate(stack, workcell, "p3", parent="no_such_deck")
    with pytest.raises(InvalidRequest, match="slot needs a parent"):
        await plate(stack, workcell, "p3", slot="somewhere")
    with pytest.raises(InvalidRequest, match="inside itself"):
        await stack.commands.update_asset(UpdateAsset(accession_id=deck.accession_id, parent="p1"))

    moved = await stack.commands.update_asset(
        UpdateAsset(accession_id=by_name.accession_id, detach=True)
    )
    assert (moved.parent_id, moved.slot) == (None, None)
    with pytest.raises(Conflict, match="holds p2"):
        await stack.commands.delete_asset(DeleteAsset(accession_id=deck.accession_id))


async def test_update_asset_fields_and_user_statuses(stack: Stack, workcell: Workcell) -> None:
    asset = await plate(stack, workcell, "plate_u", properties={"vendor": "corning"})
    await sent(stack, asset)  # its creation
    updated = await stack.commands.update_asset(
        UpdateAsset(
            accession_id=asset.accession_id,
            properties={"vendor": "corning", "lot": 7},
            status=AssetStatus.MAINTENANCE,
            reason="cleaning",
            shareable=True,
            name="plate_v",
        )
    )
    assert updated.properties == {"vendor": "corning", "lot": 7} and updated.shareable
    assert updated.name == "plate_v" and updated.definition["name"] == "plate_v"
    assert updated.status is AssetStatus.MAINTENANCE and updated.updated_at > asset.updated_at
    (event,) = await sent(stack, asset)
    assert (event.previous, event.status, event.reason) == ("available", "maintenance", "cleaning")
    assert (await history(stack, asset))[0] == (
        AssetStatus.AVAILABLE,
        AssetStatus.MAINTENANCE,
        "cleaning",
        None,
    )

    await sent(stack, asset)
    same = await stack.commands.update_asset(
        UpdateAsset(accession_id=asset.accession_id, status=AssetStatus.MAINTENANCE)
    )
    assert (
        await sent(stack, asset) == [] and same.status is AssetStatus.MAINTENANCE
    )  # no change, no history row
    assert len(await history(stack, asset)) == 2
    for status in (AssetStatus.RESERVED, AssetStatus.IN_USE):
        with pytest.raises(InvalidRequest, match="set by reservations"):
            await stack.commands.update_asset(
                UpdateAsset(accession_id=asset.accession_id, status=status)
            )
    await plate(stack, workcell, "plate_w")
    with pytest.raises(Conflict, match="already exists"):
        await stack.commands.update_asset(
            UpdateAsset(accession_id=asset.accession_id, name="plate_w")
        )
    with pytest.raises(NotFound):
        await stack.commands.update_asset(
            UpdateAsset(accession_id=asset.accession_id, kind="machine", shareable=False)
        )


async def test_status_batches_history_and_held_assets(stack: Stack, workcell: Workcell) -> None:
    a, b, c = [await plate(stack, workcell, name) for name in ("sa", "sb", "sc")]
    run = uuid.uuid4()
    events = await stack.status.set_status(
        [
            StatusChange(a.accession_id, AssetStatus.RESERVED, "granted", run),
            StatusChange(b.accession_id, AssetStatus.RESERVED, "granted", run),
            StatusChange(c.accession_id, AssetStatus.AVAILABLE, "already"),  # no change
            StatusChange(uuid.uuid4(), AssetStatus.RESERVED, "deleted meanwhile", run),
        ]
    )
    assert [(e.asset_id, e.previous, e.status, e.run_id) for e in events] == [
        (a.accession_id, AssetStatus.AVAILABLE, AssetStatus.RESERVED, run),
        (b.accession_id, AssetStatus.AVAILABLE, AssetStatus.RESERVED, run),
    ]
    assert events[0].workcell_id == workcell.accession_id and events[0].name == "sa"
    assert (await history(stack, a))[0] == (AssetStatus.AVAILABLE, "reserved", "granted", run)
    assert len(await history(stack, c)) == 1  # only "created"

    held = UpdateAsset(accession_id=a.accession_id)
    for change in ({"status": AssetStatus.MAINTENANCE}, {"name": "x"}, {"slot": "s"}):
        with pytest.raises(Conflict, match="reserved"):
            await stack.commands.update_asset(held.model_copy(update=change))
    relabelled = await stack.commands.update_asset(held.model_copy(update={"properties": {}}))
    assert relabelled.status is AssetStatus.RESERVED
    with pytest.raises(Conflict, match="reserved"):
        await stack.commands.delete_asset(DeleteAsset(accession_id=a.accession_id))
    with pytest.raises(Conflict, match="sa, sb"):
        await stack.commands.delete_workcell(DeleteWorkcell(workcell=workcell.name))

    await stack.status.set_status(
        [StatusChange(a.accession_id, AssetStatus.IN_USE, "started", run)]
        + [StatusChange(x.accession_id, AssetStatus.AVAILABLE, "released", run) for x in (a, b)]
    )  # the last change of an asset wins
    assert (await stack.commands.update_asset(held)).status is AssetStatus.AVAILABLE
    await stack.commands.delete_asset(DeleteAsset(accession_id=a.accession_id))
    with pytest.raises(NotFound):
        await stack.inventory.get_asset(a.accession_id)
    with pytest.raises(NotFound):
        await history(stack, a)


async def test_history_filters(stack: Stack, workcell: Workcell) -> None:
    asset = await plate(stack, workcell, "hp")
    runs = [uuid.uuid4(), uuid.uuid4()]
    for run in runs:
        await stack.status.set_status(
            [StatusChange(asset.accession_id, AssetStatus.RESERVED, "go", run)]
        )
        await stack.status.set_status(
            [StatusChange(asset.accession_id, AssetStatus.AVAILABLE, "done", run)]
        )

    everything = await history(stack, asset)
    assert [row[1] for row in everything] == ["available", "reserved"] * 2 + ["available"]
    assert await history(stack, asset, protocol_run_accession_id=runs[0]) == [
        (AssetStatus.RESERVED, AssetStatus.AVAILABLE, "done", runs[0]),
        (AssetStatus.AVAILABLE, AssetStatus.RESERVED, "go", runs[0]),
    ]
    assert await history(stack, asset, limit=1, offset=4) == [
        (None, AssetStatus.AVAILABLE, "created", None)
    ]
    oldest_first = await history(stack, asset, sort_by="at")
    assert oldest_first[0][2] == "created"
    reserved = await stack.status.history(
        ListAssetStatusHistory(accession_id=asset.accession_id, status=AssetStatus.RESERVED)
    )
    assert reserved.total == 2
    with pytest.raises(NotFound):
        await stack.status.history(
            ListAssetStatusHistory(accession_id=asset.accession_id, kind="deck")
        )


async def test_list_assets_with_standard_filters(stack: Stack, workcell: Workcell) -> None:
    for i in range(5):
        await plate(stack, workcell, f"lp{i}", properties={"rack": i % 2, "tag": "list"})
    await stack.commands.create_asset(
        CreateAsset(workcell=workcell.name, kind="resource", name="tips", fqn=TIPS_1000)
    )
    mine = SearchFilters(workcell_accession_id=workcell.accession_id)

    every = await stack.inventory.list_assets(ListAssets(filters=mine))
    assert every.total == 6
    odd = await stack.inventory.list_assets(
        ListAssets(filters=mine.model_copy(update={"property_filters": {"rack": 1}}))
    )
    assert sorted(a.name for a in odd.items) == ["lp1", "lp3"]
    pages = [
        await stack.inventory.list_assets(
            ListAssets(
                fqn=fqn(Plate),
                filters=mine.model_copy(update={"sort_by": "-name", "limit": 2, "offset": off}),
            )
        )
        for off in (0, 2, 4)
    ]
    assert [[a.name for a in p.items] for p in pages] == [["lp4", "lp3"], ["lp2", "lp1"], ["lp0"]]
    assert {p.total for p in pages} == {5}
    racks = await stack.inventory.list_assets(ListAssets(fqn=fqn(TipRack), filters=mine))
    assert [a.name for a in racks.items] == ["tips"]
    assert (await stack.inventory.list_assets(ListAssets(fqn=TIPS_1000, filters=mine))).total == 1


async def test_reconcile_with_live_leases(stack: Stack, workcell: Workcell) -> None:
    held_free, stale, broken, running = [
        await plate(stack, workcell, name) for name in ("rc_a", "rc_b", "rc_c", "rc_d")
    ]
    run, old_run = uuid.uuid4(), uuid.uuid4()
    await stack.status.set_status(
        [
            StatusChange(stale.accession_id, AssetStatus.RESERVED, "granted", old_run),
            StatusChange(running.accession_id, AssetStatus.IN_USE, "started", run),
        ]
    )
    await stack.commands.update_asset(
        UpdateAsset(accession_id=broken.accession_id, status=AssetStatus.ERROR)
    )
    held = {a.accession_id: run for a in (held_free, broken, running)}

    events = await stack.status.reconcile(held)
    mine = {e.asset_id: (e.previous, e.status, e.run_id) for e in events}
    assert mine[held_free.accession_id] == (AssetStatus.AVAILABLE, AssetStatus.RESERVED, run)
    assert mine[stale.accession_id] == (AssetStatus.RESERVED, AssetStatus.AVAILABLE, None)
    assert broken.accession_id not in mine and running.accession_id not in mine
    assert await stack.status.reconcile(held) == []  # converged


async def test_layout_cache_follows_changes(stack: Stack, workcell: Workcell) -> None:
    asset = await plate(stack, workcell, "cached")
    layout = await stack.inventory.layout(workcell.name)
    assert [a.name for a in layout.assets] == ["cached"]

    await stack.status.set_status([StatusChange(asset.accession_id, AssetStatus.RESERVED)])
    (patched,) = (await stack.inventory.layout(workcell.name)).assets
    assert patched.status is AssetStatus.RESERVED  # patched in place, not reloaded
    await stack.status.set_status([StatusChange(asset.accession_id, AssetStatus.AVAILABLE)])

    await stack.commands.update_workcell(
        UpdateWorkcell(workcell=str(workcell.accession_id), description="bench 2")
    )
    await plate(stack, workcell, "cached_2")
    layout = await stack.inventory.layout(workcell.name)
    assert layout.workcell.description == "bench 2"
    assert layout.workcell.properties == {"lab": 1}  # None leaves it as it was
    assert sorted(a.name for a in layout.assets) == ["cached", "cached_2"]


class HeldReads:
    """A database whose reads, once done, wait for ``release`` before their caller goes on
    (a read that a change overtakes)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.read = asyncio.Event()
        self.release = asyncio.Event()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Any]:
        async with self.db.transaction() as session:
            yield session
        self.read.set()
        await self.release.wait()


async def test_a_layout_read_overtaken_by_a_change_is_not_kept(
    stack: Stack, workcell: Workcell
) -> None:
    """A read begun before an invalidation (a move recorded meanwhile) is not cached: the
    caller's own lookup and the next read see the change (before, the stale read was kept)."""
    await plate(stack, workcell, "early")
    held = HeldReads(stack.db)
    inventory = Inventory(held)  # type: ignore[arg-type]
    reading = asyncio.create_task(inventory.layout(workcell.name))
    await held.read.wait()  # it has read, and waits to be let go
    await plate(stack, workcell, "late")  # committed meanwhile
    inventory.invalidate()  # as recording a move does
    held.release.set()
    # Not kept, what it read: the layout is read again for this caller too, and for the next.
    assert sorted(a.name for a in (await reading).assets) == ["early", "late"]
    later = await inventory.layout(workcell.name)
    assert sorted(a.name for a in later.assets) == ["early", "late"]


async def test_workcell_crud(stack: Stack, workcell: Workcell) -> None:
    with pytest.raises(Conflict, match="already exists"):
        await stack.commands.create_workcell(CreateWorkcell(name=workcell.name))
    updated = await stack.commands.update_workcell(
        UpdateWorkcell(workcell=workcell.name, properties={"room": "B"})
    )
    assert updated.properties == {"room": "B"} and updated.accession_id == workcell.accession_id
    asset = await plate(stack, workcell, "doomed")

    await stack.commands.delete_workcell(DeleteWorkcell(workcell=str(workcell.accession_id)))
    with pytest.raises(NotFound):
        await stack.inventory.layout(workcell.name)
    with pytest.raises(NotFound):
        await stack.inventory.get_asset(asset.accession_id)
    async with stack.db.transaction() as session:
        rows = await session.scalar(
            select(func.count())
            .select_from(StatusHistoryRow)
            .where(StatusHistoryRow.asset_id == asset.accession_id)
        )
    assert rows == 0
    with pytest.raises(NotFound):
        await stack.commands.delete_workcell(DeleteWorkcell(workcell=workcell.name))


async def test_status_queue_applies_batches_in_order_and_publishes(
    stack: Stack, workcell: Workcell
) -> None:
    asset = await plate(stack, workcell, "queued")
    await sent(stack, asset)
    queue = StatusQueue(stack.status)
    queue.start()
    run = uuid.uuid4()
    for status in (AssetStatus.RESERVED, AssetStatus.IN_USE, AssetStatus.AVAILABLE):
        queue.submit([StatusChange(asset.accession_id, status, status.value, run)])
    queue.submit([StatusChange(uuid.uuid4(), AssetStatus.RESERVED)])  # unknown: skipped
    await queue.stop()  # applies what is pending first

    published = await sent(stack, asset, with_ids=True)
    assert [(e.previous, e.status) for e, _ in published] == [
        (AssetStatus.AVAILABLE, AssetStatus.RESERVED),
        (AssetStatus.RESERVED, AssetStatus.IN_USE),
        (AssetStatus.IN_USE, AssetStatus.AVAILABLE),
    ]
    assert len({msg_id for _, msg_id in published}) == 3
    assert [row[1] for row in await history(stack, asset)] == [
        AssetStatus.AVAILABLE,
        AssetStatus.IN_USE,
        AssetStatus.RESERVED,
        AssetStatus.AVAILABLE,
    ]
