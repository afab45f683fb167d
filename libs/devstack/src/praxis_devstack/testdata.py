"""Small wire objects that tests of several services build alike (no I/O)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from praxis_contracts.assets import AssetBinding, AssetsReserved
from praxis_contracts.protocols import (
    AssetRequirementSpec,
    ProtocolDefinition,
    ProtocolFunctionSpec,
    ResolvedProtocol,
)

PLATE = "pylabrobot.resources.plate.Plate"


def plate_grant(run_id: uuid.UUID, workcell: str) -> AssetsReserved:
    """A grant of one plate (requirement ``plate``) to ``run_id`` on ``workcell``."""
    asset_id = uuid.uuid4()
    binding = AssetBinding(
        requirement="plate",
        asset_id=asset_id,
        asset_name="plate",
        kind="resource",
        fqn=PLATE,
        lease_key=f"asset.{asset_id}",
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
