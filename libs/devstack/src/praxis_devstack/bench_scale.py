"""``make bench``'s scale phase: a lab-sized workcell and a lab-sized run history.

A stack of its own whose orchestrator serves workcell ``star``:

* the workcell: a chatterbox STAR with two tip carriers and six plate carriers, then ten tip
  racks, thirty plates on the deck and thirty in storage, created one asset at a time
  (``POST /resources``); the time to create them, and ``GET /workcells/star`` (~6 MB of JSON:
  it crosses NATS by claim check) p50/p99 and bytes;
* runs on it: ``transfer`` runs one at a time on different plates and tip racks, submit to
  completed (the first builds the live workcell from that layout, so it is reported apart);
* the history: 10,000 finished runs written straight into the scheduler's table (as its run-list
  tests do: each with ~50 KB of results, states and tracebacks that must not reach a list), then
  ``GET /protocols/runs`` at the default page (50) and the largest (1,000), and filtered by
  status and by the asset used: p50/p99 per page and bytes.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import text

from praxis_client import AsyncClient
from praxis_contracts.assets import AssetDraft
from praxis_contracts.common import RunStatus, SearchFilters
from praxis_contracts.runs import RunPage
from praxis_devstack.stack import Stack
from praxis_devstack.stats import summary
from praxis_devstack.testdata import bulk_runs_sql, star_labware, star_with_empty_carriers
from praxis_runtime.db import Database

WORKCELL = "star"
HISTORY = 10_000
T = TypeVar("T")
PAIRS = [(f"plate0_{i}", f"plate{1 + i}_{i}", f"tips{i % 2}_{i}") for i in range(5)]


async def _timed(call: Awaitable[T]) -> tuple[float, T]:
    t0 = time.perf_counter()
    reply = await call
    return (time.perf_counter() - t0) * 1000, reply


async def _workcell(praxis: AsyncClient) -> dict[str, Any]:
    t0 = time.perf_counter()
    drafts = [AssetDraft.model_validate(d) for d in star_with_empty_carriers(WORKCELL)]
    await praxis.register_workcell(WORKCELL, assets=drafts)
    labware = star_labware()
    for body in labware:
        await praxis.create_asset("resource", WORKCELL, **body)
    create_s = time.perf_counter() - t0
    ms, size = [], 0
    for _ in range(5):
        elapsed, layout = await _timed(praxis.get_workcell(WORKCELL))
        ms.append(elapsed)
        size = len(layout.model_dump_json())
    return {
        "labware": len(labware),
        "create_all_s": round(create_s, 2),
        "get_layout_ms": summary(ms),
        "layout_bytes": size,
    }


async def _runs(praxis: AsyncClient) -> dict[str, Any]:
    ms: list[float] = []
    for source, dest, tips in PAIRS:
        t0 = time.perf_counter()
        submitted = await praxis.submit_run(
            "transfer",
            workcell=WORKCELL,
            parameters={"volume": 10, "wells": ["A1"]},
            assets={"source_plate": source, "dest_plate": dest, "tips": tips},
        )
        run = await praxis.wait(submitted.accession_id)
        if run.status != RunStatus.COMPLETED:
            raise RuntimeError(f"a transfer on the STAR deck ended {run.status}: {run.error}")
        ms.append((time.perf_counter() - t0) * 1000)
    return {"first_run_ms": round(ms[0], 1), "later_runs_ms": summary(ms[1:])}


async def _history(praxis: AsyncClient, database_url: str) -> dict[str, Any]:
    workcells, machines = [uuid.uuid4() for _ in range(3)], [uuid.uuid4() for _ in range(2)]
    plates = [uuid.uuid4() for _ in range(50)]
    db = Database(database_url, "scheduler")
    try:
        async with db.transaction() as session:
            sql = bulk_runs_sql(
                workcells,
                machines,
                plates,
                runs=HISTORY,
                start=datetime(2030, 1, 1, tzinfo=UTC),
                statuses=("completed", "failed", "cancelled"),
            )
            await session.execute(text(sql))
            await session.execute(text("ANALYZE scheduler.protocol_runs"))
    finally:
        await db.dispose()
    by_plate = SearchFilters(resource_accession_id=plates[7])
    queries: dict[str, Callable[[int], Awaitable[RunPage]]] = {
        "limit_50": lambda offset: praxis.list_runs(limit=50, offset=offset),
        "limit_1000": lambda offset: praxis.list_runs(limit=1000, offset=offset),
        "failed_limit_50": lambda offset: praxis.list_runs(
            status=[RunStatus.FAILED], limit=50, offset=offset
        ),
        "by_plate_limit_50": lambda offset: praxis.list_runs(
            filters=by_plate, limit=50, offset=offset
        ),
    }
    figures: dict[str, Any] = {"runs": HISTORY}
    for label, query in queries.items():
        ms, size, total = [], 0, HISTORY
        limit = 1000 if label == "limit_1000" else 50
        for page in range(10):  # ten pages in, wrapping at the end (total: from the first)
            elapsed, runs = await _timed(query(page * limit % max(total, 1)))
            ms.append(elapsed)
            size, total = len(runs.model_dump_json()), runs.total
        figures[label] = {"total": total, "bytes": size, "ms": summary(ms)}
    return figures


async def measure_scale() -> dict[str, Any]:
    """The scale phase (see the module's docstring), on a stack of its own."""
    with tempfile.TemporaryDirectory(prefix="praxis-bench-scale-") as base:
        stack = Stack(base_dir=Path(base), fast=True, workcell=WORKCELL)
        try:
            await stack.start()
            await stack.seed()
            assert stack.infra is not None
            async with stack.client(timeout=120.0) as praxis:
                report = {"workcell": await _workcell(praxis), "runs": await _runs(praxis)}
                report["history"] = await _history(praxis, stack.infra.database_url)
            return report
        finally:
            await stack.stop()


if __name__ == "__main__":  # python -m praxis_devstack.bench_scale
    import json

    print(json.dumps(asyncio.run(measure_scale()), indent=2))
