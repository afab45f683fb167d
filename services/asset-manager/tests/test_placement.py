"""Placement: a run is granted only on a workcell whose orchestrator beats and accepts runs, and
that is not drained; otherwise it waits holding no lease, says why, and is granted as soon as
the reason goes (an edge comes up, or the workcell is resumed).

Real NATS and PostgreSQL; the edges are heartbeat keys written by the test, as an
orchestrator writes them (``praxis_orchestrator.edge``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from pylabrobot.resources import Plate

from praxis_asset_manager.app import Settings, build_app
from praxis_contracts.assets import (
    AssetsReserved,
    RegisterWorkcell,
    ReleaseAssets,
    ReservationWaiting,
    ReserveAssets,
    SetWorkcellDrain,
    WaitReason,
    WorkcellChanged,
    WorkcellLayout,
)
from praxis_contracts.protocols import AssetRequirementSpec
from praxis_contracts.runs import EdgeHeartbeat, edge_key
from praxis_contracts.topology import EDGES
from praxis_devstack.pytest_plugin import MakeDatabase, NatsIdentity
from praxis_plr.layout import demo_workcell
from praxis_plr.types import fqn
from praxis_runtime.bus import Bus

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def asset_manager(
    nats_identity: NatsIdentity, make_database: MakeDatabase, services: Any
) -> Any:
    """An asset-manager that places runs only where an edge accepts them (the default)."""
    settings = Settings(
        **nats_identity("asset-manager"),
        database_url=make_database("placement"),
        health_port=None,
        graceful_timeout_seconds=5,
    )
    assert settings.edge_placement
    return await services(build_app, settings)


class Edge:
    """One orchestrator process's heartbeat key, written as the orchestrator writes it."""

    def __init__(self, client: Bus, workcell: str) -> None:
        self.client = client
        self.workcell = workcell
        self.instance = uuid.uuid4().hex

    async def beat(self, *, accepting: bool = True) -> None:
        now = datetime.now(UTC)
        heartbeat = EdgeHeartbeat(
            workcell=self.workcell,
            instance=self.instance,
            version="test",
            started_at=now,
            at=now,
            ttl_seconds=60,
            accepting=accepting,
        )
        kv = await self.client.js.key_value(EDGES.bucket)
        await kv.put(edge_key(self.workcell, self.instance), heartbeat.model_dump_json().encode())

    async def leave(self) -> None:
        kv = await self.client.js.key_value(EDGES.bucket)
        await kv.delete(edge_key(self.workcell, self.instance))


async def register(client: Bus) -> WorkcellLayout:
    name = f"pl-{uuid.uuid4().hex[:10]}"
    return await client.request(RegisterWorkcell(name=name, assets=demo_workcell()), timeout=30)


def reserve(workcell: str | None, *, assets: bool = True) -> ReserveAssets:
    """A run wanting the workcell's source plate (or, ``assets=False``, only the workcell)."""
    if not assets:
        return ReserveAssets(run_id=uuid.uuid4(), requirements=[], workcell=workcell)
    plate = AssetRequirementSpec(name="plate", type_fqn=fqn(Plate), kind="resource")
    return ReserveAssets(
        run_id=uuid.uuid4(), requirements=[plate], workcell=workcell, pins={"plate": "source_plate"}
    )


async def test_a_run_for_a_workcell_without_an_edge_waits_holding_nothing(
    asset_manager: Any, client: Bus, tap: Any
) -> None:
    layout = await register(client)
    cmd = reserve(layout.workcell.name)
    granted = await tap(AssetsReserved, str(cmd.run_id))
    waiting = await tap(ReservationWaiting, str(cmd.run_id))

    await client.publish(cmd)
    said = await waiting.next()
    assert (said.reason, said.workcells) == (WaitReason.WAITING_FOR_EDGE, [layout.workcell.name])
    await granted.assert_silent()
    kv = await client.js.key_value("praxis_asset_leases")
    assert [k async for k in _keys(kv, f"asset.{layout.workcell.name}.>")] == []

    edge = Edge(client, layout.workcell.name)
    await edge.beat()
    grant = await granted.next()
    assert grant.workcell_name == layout.workcell.name
    await client.publish(ReleaseAssets(run_id=cmd.run_id))
    await edge.leave()


async def test_a_stopping_edge_takes_no_new_run_and_the_next_one_does(
    asset_manager: Any, client: Bus, tap: Any
) -> None:
    layout = await register(client)
    old = Edge(client, layout.workcell.name)
    await old.beat(accepting=False)  # stopping for an upgrade: its runs go on, no new one
    cmd = reserve(layout.workcell.name)
    granted = await tap(AssetsReserved, str(cmd.run_id))
    waiting = await tap(ReservationWaiting, str(cmd.run_id))

    await client.publish(cmd)
    assert (await waiting.next()).reason == WaitReason.WAITING_FOR_EDGE
    await old.leave()
    await granted.assert_silent()

    new = Edge(client, layout.workcell.name)
    await new.beat()
    assert (await granted.next()).workcell_name == layout.workcell.name
    await client.publish(ReleaseAssets(run_id=cmd.run_id))
    await new.leave()


async def test_a_run_naming_no_workcell_is_placed_where_an_edge_is_live(
    asset_manager: Any, client: Bus, tap: Any
) -> None:
    without, live = await register(client), await register(client)
    edge = Edge(client, live.workcell.name)
    await edge.beat()
    plate = AssetRequirementSpec(name="plate", type_fqn=fqn(Plate), kind="resource")
    # No workcell named: the plate of either workcell would do (the other one has no edge).
    for _ in range(3):
        cmd = ReserveAssets(run_id=uuid.uuid4(), requirements=[plate])
        granted = await tap(AssetsReserved, str(cmd.run_id))
        await client.publish(cmd)
        grant = await granted.next()
        assert grant.workcell_name != without.workcell.name
        await client.publish(ReleaseAssets(run_id=cmd.run_id))
    await edge.leave()


@pytest.mark.parametrize("assets", [True, False], ids=["wanting_a_plate", "wanting_no_asset"])
async def test_a_drained_workcell_takes_no_new_run_until_it_is_resumed(
    asset_manager: Any, client: Bus, tap: Any, assets: bool
) -> None:
    """Also a run that wants no asset: no freed asset wakes it, the resume must (it waited
    until some other run's request came, found by the CLI's tests)."""
    layout = await register(client)
    name = layout.workcell.name
    edge = Edge(client, name)
    await edge.beat()
    changes = await tap(WorkcellChanged, name)

    drained = await client.request(SetWorkcellDrain(workcell=name, drained=True, reason="PM"))
    assert (drained.drained, drained.drain_reason) == (True, "PM")
    again = await client.request(SetWorkcellDrain(workcell=name, drained=True, reason="other"))
    assert again.drain_reason == "PM"  # idempotent: the first reason stays
    change = await changes.next()
    assert (change.change, change.drained, change.reason) == ("drained", True, "PM")
    await changes.assert_silent()  # the second drain changed nothing

    cmd = reserve(name, assets=assets)
    granted = await tap(AssetsReserved, str(cmd.run_id))
    waiting = await tap(ReservationWaiting, str(cmd.run_id))
    await client.publish(cmd)
    said = await waiting.next()
    assert (said.reason, said.workcells) == (WaitReason.WORKCELL_DRAINED, [name])
    await granted.assert_silent()

    resumed = await client.request(SetWorkcellDrain(workcell=name, drained=False))
    assert (resumed.drained, resumed.drain_reason) == (False, None)
    assert (await granted.next()).workcell_name == name
    assert (await changes.next()).change == "resumed"
    await client.publish(ReleaseAssets(run_id=cmd.run_id))
    await edge.leave()


async def _keys(kv: Any, pattern: str) -> Any:
    """Live lease keys matching ``pattern`` (tombstones left out)."""
    try:
        keys = await kv.keys(filters=[pattern])
    except Exception:  # nats-py: NoKeysError when none
        return
    for key in keys:
        entry = await kv.get(key)
        if entry.value:
            yield key
