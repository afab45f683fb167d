"""How an author tests a protocol: no server, a simulated workcell from an inventory file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pylabrobot.resources.errors import TooLittleLiquidError
from transfers import transfer  # examples/protocols/transfers.py

from praxis_plr.layout import demo_workcell
from praxis_sdk.testing import SimulatedWorkcell


def inventory(tmp_path: Path) -> Path:
    """The demo workcell as an inventory file (what ``POST /workcells`` takes)."""
    path = tmp_path / "inventory.json"
    drafts = [d.model_dump(mode="json") for d in demo_workcell()]
    path.write_text(json.dumps({"name": "demo", "assets": drafts}))
    return path


async def test_transfer_moves_liquid_and_logs_each_call(tmp_path: Path) -> None:
    async with SimulatedWorkcell.from_file(inventory(tmp_path)) as workcell:
        run = await workcell.run(transfer, parameters={"volume": 30, "wells": ["C3"]})

    assert run.status == "completed", run.error
    assert run.result == {"C3": 30.0}
    assert run.state == {"transferred_ul": 30.0}
    assert (run.volume("source_plate", "C3"), run.volume("dest_plate", "C3")) == (170, 30)
    assert [(c.function, c.status) for c in run.calls] == [
        ("transfer", "completed"),
        ("move_liquid", "completed"),
    ]
    assert run.calls[1].parent_call_id == run.calls[0].call_id
    assert run.calls[1].arguments["well"] == "C3"


async def test_drawing_more_than_a_well_holds_fails_the_run(simulated_workcell: Any) -> None:
    workcell = await simulated_workcell(demo_workcell())  # the pytest plugin's fixture
    run = await workcell.run(transfer, parameters={"volume": 250, "wells": ["A1"]})
    assert run.status == "failed"
    assert isinstance(run.error, TooLittleLiquidError)
    assert run.calls[-1].status == "failed"
