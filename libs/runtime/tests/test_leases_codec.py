"""A lease value is plain JSON and decodes to the holder that wrote it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from praxis_runtime.leases import Holder, decode_holder


@pytest.mark.parametrize("requirement", ["plate", 'odd "name" \\ with ünïcode', ""])
@pytest.mark.parametrize("workcell_id", [None, uuid.uuid4()])
def test_a_holder_round_trips_through_json(requirement: str, workcell_id: uuid.UUID | None) -> None:
    acquired = datetime.now(UTC)
    for renewed in (acquired, acquired + timedelta(seconds=7)):
        holder = Holder(uuid.uuid4(), uuid.uuid4(), requirement, workcell_id, acquired, renewed, 30)
        data = holder.encode()
        assert json.loads(data) == {
            "run_id": str(holder.run_id),
            "asset_id": str(holder.asset_id),
            "requirement": requirement,
            "workcell_id": str(workcell_id) if workcell_id else None,
            "acquired_at": acquired.isoformat(),
            "renewed_at": renewed.isoformat(),
            "ttl_seconds": 30,
        }
        assert decode_holder(data) == holder
