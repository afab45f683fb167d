"""The CLI's pure parts: rendering, exit codes, parameters, profiles. Against the stack:
tests/e2e/test_client_and_cli.py."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from rich.console import Console
from typer.testing import CliRunner

from praxis_cli import config, render
from praxis_cli.main import app, exit_code
from praxis_client.errors import error_of
from praxis_contracts.assets import Asset, Workcell, WorkcellLayout
from praxis_contracts.runs import FunctionCall, RunSummary

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def text_of(renderable: Any) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def call(
    sequence: int, function: str, status: str, parent: Any = None, **more: Any
) -> FunctionCall:
    return FunctionCall(
        call_id=more.pop("call_id", uuid4()),
        run_id=uuid4(),
        parent_call_id=parent,
        sequence=sequence,
        function=function,
        version="1",
        arguments={},
        status=status,  # type: ignore[arg-type]
        started_at=T0,
        **more,
    )


def test_the_call_tree_nests_calls_and_keeps_an_end_over_a_late_start() -> None:
    tree = render.CallTree()
    top = call(0, "transfer", "running")
    child = call(1, "move_liquid", "completed", top.call_id, finished_at=T0 + timedelta(seconds=2))
    tree.record(top)
    tree.record(child)
    tree.record(call(1, "move_liquid", "running", top.call_id, call_id=child.call_id))  # late
    shown = text_of(tree.render("calls"))
    assert "transfer running" in shown
    assert "move_liquid completed 2.00s" in shown
    lines = shown.splitlines()
    assert lines.index(next(x for x in lines if "move_liquid" in x)) > lines.index(
        next(x for x in lines if "transfer" in x)
    )
    assert text_of(tree.render("calls")).count("move_liquid") == 1


def summary(priority: int, created: datetime, **more: Any) -> RunSummary:
    return RunSummary(
        accession_id=uuid4(),
        protocol_name="noop",
        protocol_version="1",
        status="queued",  # type: ignore[arg-type]
        priority=priority,
        created_at=created,
        updated_at=created,
        **more,
    )


def test_the_queue_is_shown_in_placing_order_with_why_and_how_long() -> None:
    late_urgent = summary(10, T0 + timedelta(minutes=5), waiting_for="assets_busy")
    early = summary(0, T0, waiting_for="workcell_drained")
    later = summary(0, T0 + timedelta(minutes=1))
    assert render.queue_order([later, early, late_urgent]) == [late_urgent, early, later]
    shown = text_of(render.queue_table([later, early, late_urgent], now=T0 + timedelta(hours=2)))
    assert shown.index("assets_busy") < shown.index("workcell_drained") < shown.index("its turn")
    assert "2h" in shown and "1h" in shown


def asset(name: str, kind: str, state: dict[str, Any] | None = None, **more: Any) -> Asset:
    return Asset(
        accession_id=more.pop("accession_id", uuid4()),
        workcell_id=uuid4(),
        kind=kind,  # type: ignore[arg-type]
        name=name,
        fqn=f"pylabrobot.resources.{name.title()}",
        type_mro=[],
        definition={},
        state=state,
        created_at=T0,
        updated_at=T0,
        **more,
    )


def test_the_deck_shows_what_sits_where_with_volumes_and_tips() -> None:
    deck_id = uuid4()
    plate_state = {
        "plate": {},
        "plate_well_A1": {"volume": 150.0},
        "plate_well_B1": {"volume": 0},
        "plate_well_A2": {"volume": 25.5},
    }
    tips_state = {
        "tips_tipspot_A1": {"tip": {"type": "HamiltonTip"}},
        "tips_tipspot_B1": {"tip": None},
    }
    layout = WorkcellLayout(
        workcell=Workcell(
            accession_id=uuid4(), name="demo", created_at=T0, drained=True, drain_reason="service"
        ),
        assets=[
            asset("deck", "deck", accession_id=deck_id),
            asset("plate", "resource", plate_state, parent_id=deck_id, slot="rail_1"),
            asset("tips", "resource", tips_state, parent_id=deck_id),
        ],
    )
    shown = text_of(render.deck(layout))
    assert "drained: service" in shown
    assert "plate  Plate  @rail_1  2/3 wells filled, 175.5 uL (25.5-150 uL)" in shown
    assert "tips  Tips  1/2 tips" in shown
    grid = text_of(render.well_grid(layout.assets[1]))
    assert "│ A │ 150 │ 25.5 │" in grid and "│ B │ 0   │      │" in grid


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, 2), (422, 2), (401, 5), (403, 5), (404, 3), (409, 4), (503, 6), (500, 6), (418, 1)],
)
def test_exit_codes_follow_the_reply(status: int, code: int) -> None:
    assert exit_code(error_of(status, b'{"code": "internal", "message": "x"}')) == code


def test_profiles_are_kept_for_their_owner_and_overridden_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "praxis" / "config.json"
    monkeypatch.setenv("PRAXIS_CONFIG", str(path))
    for name in ("PRAXIS_URL", "PRAXIS_TOKEN", "PRAXIS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    assert config.resolve(None, None, None) == config.Profile("default", config.DEFAULT_URL, None)
    config.remember("lab", "http://lab:8000", "s3cret-token")
    config.remember("home", "http://home:8000", "other-token")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert config.resolve(None, None, None).url == "http://home:8000"  # the last login
    assert config.resolve("lab", None, None).token == "s3cret-token"
    monkeypatch.setenv("PRAXIS_TOKEN", "from-env")
    assert config.resolve("lab", "http://x", None) == config.Profile("lab", "http://x", "from-env")
    with pytest.raises(config.ConfigError, match="no profile 'nope'"):
        config.resolve("nope", None, None)
    monkeypatch.setenv("PRAXIS_PROFILE", "gone")
    with pytest.raises(config.ConfigError, match="no profile 'gone'"):
        config.resolve(None, None, None)
    refused = CliRunner().invoke(app, ["runs", "list"])
    assert refused.exit_code == 2 and "no profile 'gone'" in refused.output
    listed = CliRunner().invoke(app, ["--json", "profiles"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert "s3cret-token" not in listed.output and '"name":"lab"' in listed.output.replace(" ", "")


def test_a_parameter_that_is_not_name_value_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRAXIS_CONFIG", str(tmp_path / "none.json"))
    result = CliRunner().invoke(app, ["submit", "noop", "-p", "volume"])
    assert result.exit_code == 2
    assert "parameter 'volume' is not name=value" in result.output


def test_an_api_that_does_not_answer_is_exit_6(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRAXIS_CONFIG", str(tmp_path / "none.json"))
    result = CliRunner().invoke(app, ["--url", "http://127.0.0.1:9", "runs", "list"])
    assert result.exit_code == 6
    assert "unavailable" in result.output
