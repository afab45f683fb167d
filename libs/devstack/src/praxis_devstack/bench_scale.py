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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text

from praxis_devstack.stack import Stack
from praxis_devstack.stats import summary
from praxis_devstack.testdata import bulk_runs_sql, star_labware, star_with_empty_carriers
from praxis_runtime.db import Database

WORKCELL = "star"
HISTORY = 10_000
PAIRS = [(f"plate0_{i}", f"plate{1 + i}_{i}", f"tips{i % 2}_{i}") for i in range(5)]


async def _timed(call: Any) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    response = await call
    return (time.perf_counter() - t0) * 1000, response


async def _workcell(api: httpx.AsyncClient) -> dict[str, Any]:
    t0 = time.perf_counter()
    created = await api.post(
        "/api/v1/workcells", json={"name": WORKCELL, "assets": star_with_empty_carriers(WORKCELL)}
    )
    created.raise_for_status()
    labware = star_labware()
    for body in labware:
        (
            await api.post("/api/v1/resources", json={"workcell": WORKCELL, **body})
        ).raise_for_status()
    create_s = time.perf_counter() - t0
    ms, size = [], 0
    for _ in range(5):
        elapsed, response = await _timed(api.get(f"/api/v1/workcells/{WORKCELL}"))
        response.raise_for_status()
        ms.append(elapsed)
        size = len(response.content)
    return {
        "labware": len(labware),
        "create_all_s": round(create_s, 2),
        "get_layout_ms": summary(ms),
        "layout_bytes": size,
    }


async def _finished(api: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    async with api.stream("GET", f"/api/v1/protocols/runs/{run_id}/events") as events:
        async for _ in events.aiter_lines():
            pass
    return dict((await api.get(f"/api/v1/protocols/runs/{run_id}")).json())


async def _runs(api: httpx.AsyncClient) -> dict[str, Any]:
    ms: list[float] = []
    for source, dest, tips in PAIRS:
        t0 = time.perf_counter()
        response = await api.post(
            "/api/v1/protocols/runs",
            json={
                "protocol_name": "transfer",
                "workcell": WORKCELL,
                "parameters": {"volume": 10, "wells": ["A1"]},
                "assets": {"source_plate": source, "dest_plate": dest, "tips": tips},
            },
        )
        response.raise_for_status()
        run = await _finished(api, response.json()["accession_id"])
        if run["status"] != "completed":
            raise RuntimeError(f"a transfer on the STAR deck ended {run['status']}: {run['error']}")
        ms.append((time.perf_counter() - t0) * 1000)
    return {"first_run_ms": round(ms[0], 1), "later_runs_ms": summary(ms[1:])}


async def _history(api: httpx.AsyncClient, database_url: str) -> dict[str, Any]:
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
    queries: dict[str, dict[str, Any]] = {
        "limit_50": {"limit": 50},
        "limit_1000": {"limit": 1000},
        "failed_limit_50": {"limit": 50, "status": "failed"},
        "by_plate_limit_50": {"limit": 50, "resource_accession_id": str(plates[7])},
    }
    figures: dict[str, Any] = {"runs": HISTORY}
    for label, params in queries.items():
        ms, size, total = [], 0, HISTORY
        for page in range(10):  # ten pages in, wrapping at the end (total: from the first)
            query = {**params, "offset": page * int(params["limit"]) % max(total, 1)}
            elapsed, response = await _timed(api.get("/api/v1/protocols/runs", params=query))
            response.raise_for_status()
            ms.append(elapsed)
            size, total = len(response.content), response.json()["total"]
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
            async with httpx.AsyncClient(
                base_url=stack.api, timeout=120.0, headers=stack.auth_headers
            ) as api:
                report = {"workcell": await _workcell(api), "runs": await _runs(api)}
                report["history"] = await _history(api, stack.infra.database_url)
            return report
        finally:
            await stack.stop()


if __name__ == "__main__":  # python -m praxis_devstack.bench_scale
    import json

    print(json.dumps(asyncio.run(measure_scale()), indent=2))
