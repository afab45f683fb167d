"""Small wire objects that tests of several services build alike (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from praxis_contracts.assets import (
    AssetBinding,
    AssetsReserved,
)
from praxis_contracts.protocols import (
    AssetRequirementSpec,
    ProtocolDefinition,
    ProtocolFunctionSpec,
    ResolvedProtocol,
)

PLATE = "pylabrobot.resources.plate.Plate"

BULK_STATUSES = ("completed", "failed", "cancelled", "queued", "running")
BULK_PROTOCOLS = 7


def plate_grant(run_id: uuid.UUID, workcell: str) -> AssetsReserved:
    """A grant of one plate (requirement ``plate``) to ``run_id`` on ``workcell``."""
    asset_id = uuid.uuid4()
    binding = AssetBinding(
        requirement="plate",
        asset_id=asset_id,
        asset_name="plate",
        kind="resource",
        fqn=PLATE,
        lease_key=f"asset.{workcell}.{asset_id}",
        token=1,
    )
    return AssetsReserved(
        run_id=run_id, workcell_id=uuid.uuid4(), workcell_name=workcell, bindings=[binding]
    )


def plate_protocol(name: str = "mix") -> ResolvedProtocol:
    """A resolved protocol ``name`` that needs one plate and takes no parameters."""
    spec = ProtocolFunctionSpec(
        name=name,
        version="1.0.0",
        module=f"protos.{name}",
        qualname=name,
        assets=[AssetRequirementSpec(name="plate", type_fqn=PLATE, kind="resource")],
    )
    definition = ProtocolDefinition(
        accession_id=uuid.uuid4(),
        source_id=uuid.uuid4(),
        source_name="protocols",
        commit="0" * 40,
        spec=spec,
        code_bundle=f"{name}.tar",
        created_at=datetime.now(UTC),
    )
    return ResolvedProtocol(definition=definition, parameters={})


# -- lab-sized data: thousands of runs ---------------------------------------------------------
def _uuid_array(ids: list[uuid.UUID]) -> str:
    return "ARRAY[" + ",".join(f"'{i}'::uuid" for i in ids) + "]"


def bulk_runs_sql(
    workcells: list[uuid.UUID],
    machines: list[uuid.UUID],
    plates: list[uuid.UUID],
    *,
    runs: int,
    start: datetime,
    statuses: tuple[str, ...] = BULK_STATUSES,
) -> str:
    """One ``INSERT … SELECT generate_series`` into ``scheduler.protocol_runs``: 10,000 runs in
    well under a second (the scheduler's run-list tests and ``make bench``'s scale phase).

    Run ``i`` gets ``statuses[i % len]``, protocol ``proto_<i % BULK_PROTOCOLS>``, workcell,
    machine and plate ``i % len`` of each list, and is created ``i`` minutes after ``start``.

    Every run carries what made lists break: ~20 KB of asset states, a result, a final state and
    (for failures) a long traceback; every hundredth run has parameters too large for a summary.
    """
    status_array = "ARRAY[" + ",".join(f"'{s}'" for s in statuses) + "]"
    wc, mc, pl = (_uuid_array(x) for x in (workcells, machines, plates))
    binding = (
        "jsonb_build_object('requirement', {req}, 'asset_id', {id}::text, 'asset_name', {name}, "
        "'kind', {kind}, 'fqn', 'pylabrobot.x', 'lease_key', 'asset.' || {id}::text, 'token', i)"
    )
    machine = binding.format(
        req="'lh'", id=f"({mc})[1 + i % {len(machines)}]", name="'lh'", kind="'machine'"
    )
    plate = binding.format(
        req="'plate'",
        id=f"({pl})[1 + i % {len(plates)}]",
        name=f"'plate_' || (i % {len(plates)})",
        kind="'resource'",
    )
    return f"""
        INSERT INTO scheduler.protocol_runs (
            accession_id, protocol_name, protocol_version, definition_id, source_commit,
            definition, status, parameters, initial_state, workcell, workcell_id,
            workcell_name, pins, asset_properties, priority, bindings, result, error,
            final_state, asset_states, created_at, updated_at, started_at, finished_at)
        SELECT
            gen_random_uuid(), 'proto_' || (i % {BULK_PROTOCOLS}), '1.0.0', gen_random_uuid(),
            repeat('c', 40), '{{}}'::jsonb, ({status_array})[1 + i % {len(statuses)}],
            CASE WHEN i % 100 = 0
                 THEN jsonb_build_object('wells', repeat('A1,', 1000))
                 ELSE jsonb_build_object('volume', i, 'tag', 'bulk-' || i) END,
            '{{}}'::jsonb, NULL, ({wc})[1 + i % {len(workcells)}],
            'wc_' || (i % {len(workcells)}), '{{}}'::jsonb, '{{}}'::jsonb, i % 11 - 5,
            jsonb_build_array({machine}, {plate}),
            jsonb_build_object('readings', repeat('0.5,', 2000)),
            CASE WHEN i % {len(statuses)} = 1
                 THEN jsonb_build_object('type', 'RuntimeError', 'message', repeat('e', 3000),
                                         'traceback', repeat('t', 20000)) END,
            jsonb_build_object('log', repeat('s', 5000)),
            jsonb_build_object('source_plate', repeat('w', 20000)),
            TIMESTAMPTZ '{start.isoformat()}' + i * INTERVAL '1 minute',
            TIMESTAMPTZ '{start.isoformat()}' + i * INTERVAL '1 minute',
            NULL, NULL
        FROM generate_series(0, {runs - 1}) AS i
    """


# -- lab-sized data: a filled STAR deck ------------------------------------------------------------
STAR_TIP_CARRIERS, STAR_PLATE_CARRIERS, CARRIER_SITES = 2, 6, 5
COR_96 = "cor_96_wellplate_360uL_Fb"
TIPS_1000 = "hamilton_96_tiprack_1000uL"


def star_with_empty_carriers(name: str = "star") -> list[dict[str, Any]]:
    """Drafts (JSON) of a chatterbox STAR liquid handler and its deck with two tip carriers and
    six plate carriers in place, no labware: labware is added one asset at a time (see
    ``star_labware``), as a lab would, each well under the gateway's body limit."""
    from pylabrobot.liquid_handling import LiquidHandler
    from pylabrobot.liquid_handling.backends import LiquidHandlerChatterboxBackend
    from pylabrobot.resources import PLT_CAR_L5AC_A00, TIP_CAR_480_A00, STARDeck

    from praxis_plr.layout import drafts_for_tree

    deck = STARDeck()
    handler = LiquidHandler(
        backend=LiquidHandlerChatterboxBackend(num_channels=8), deck=deck, name=name
    )
    for i in range(STAR_TIP_CARRIERS):
        deck.assign_child_resource(TIP_CAR_480_A00(name=f"tip_car{i}"), rails=1 + 6 * i)
    for i in range(STAR_PLATE_CARRIERS):
        rails = 1 + 6 * (STAR_TIP_CARRIERS + i)
        deck.assign_child_resource(PLT_CAR_L5AC_A00(name=f"plate_car{i}"), rails=rails)
    return [draft.model_dump(mode="json") for draft in drafts_for_tree(handler)]


def filled_plate(name: str, volume: float) -> dict[str, Any]:
    """A ``POST /resources`` body (without workcell and place) of a Corning 96-well plate with
    ``volume`` uL in every well."""
    from pylabrobot.resources import cor_96_wellplate_360uL_Fb

    from praxis_plr.layout import drafts_for_tree

    plate = cor_96_wellplate_360uL_Fb(name=name)
    for well in plate.get_all_items():
        well.tracker.set_volume(volume)
    (draft,) = drafts_for_tree(plate)
    return {"name": name, "fqn": draft.fqn, "definition": draft.definition, "state": draft.state}


def star_labware(stored_plates: int = 30, filled_carriers: int = 1) -> list[dict[str, Any]]:
    """``POST /resources`` bodies (without ``workcell``): ten tip racks ``tips<c>_<s>``, thirty
    plates ``plate<c>_<s>`` on the carriers (those of the first ``filled_carriers`` carriers
    holding 200 uL per well), and ``stored_plates`` plates ``stored<i>`` in storage (no
    parent, off the deck)."""
    bodies: list[dict[str, Any]] = [
        {"name": f"tips{c}_{s}", "fqn": TIPS_1000, "parent": "deck", "slot": f"tip_car{c}-{s}"}
        for c in range(STAR_TIP_CARRIERS)
        for s in range(CARRIER_SITES)
    ]
    for c in range(STAR_PLATE_CARRIERS):
        for s in range(CARRIER_SITES):
            name = f"plate{c}_{s}"
            plate = filled_plate(name, 200.0) if c < filled_carriers else {"name": name}
            plate.setdefault("fqn", COR_96)
            bodies.append({**plate, "parent": "deck", "slot": f"plate_car{c}-{s}"})
    bodies += [{"name": f"stored{i}", "fqn": COR_96} for i in range(stored_plates)]
    return bodies
