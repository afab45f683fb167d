"""The metrics the README lists are those the code registers, with their types, and the Grafana
dashboard (deploy/grafana/praxis.json) charts each of them and nothing else."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
FEEDERS = (
    "praxis_runtime.metrics",
    "praxis_runtime.bus",
    "praxis_gateway.app",
    "praxis_scheduler.metrics",
    "praxis_asset_manager.reservations",
)


def registered() -> dict[str, str]:
    """``{exposed name: type}`` of every ``praxis_`` metric (a counter is exposed as _total)."""
    for module in FEEDERS:
        importlib.import_module(module)
    found: dict[str, str] = {}
    for family in REGISTRY.collect():
        if family.name.startswith("praxis_"):
            name = f"{family.name}_total" if family.type == "counter" else family.name
            found[name] = family.type
    return found


def documented() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("<!-- metrics:start -->") : text.index("<!-- metrics:end -->")]
    return dict(re.findall(r"^\s*\| `(praxis_\w+)` \| (\w+) \|", table, flags=re.M))


def test_the_readme_lists_every_metric_with_its_type() -> None:
    assert documented() == registered()


def test_the_grafana_dashboard_charts_every_metric_and_only_those() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/praxis.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {
        re.sub(r"_(bucket|count|sum)$", "", name)
        for expr in exprs
        for name in re.findall(r"praxis_\w+", expr)
    }
    assert used == set(documented())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
