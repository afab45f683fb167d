"""``make bench``: submit->first-line latency and end-to-end throughput of no-op runs.

Latency: the client notes the wall clock just before ``POST /protocols/runs``; the ``noop``
protocol returns the wall clock of its first line (same machine, same clock). Throughput: N runs
submitted with bounded concurrency; the clock stops when the scheduler has recorded every one as
completed. Completion is pushed to the benchmark by NATS subscriptions, never polled.
The run list is then read at pages of 50 and 1,000 (time and bytes), and the audit trail with a
million events stored (``bench_audit``). Then the other services
stop and the reservation figures are taken against the asset-manager
alone (``bench_reservations``). Last, in-process, what isolating protocols costs: the zygote's
cold start, a runner process per run, the lease guard and the round trip per instrument command
(``bench_isolation``), and
recording a checkpoint's state (``bench_snapshots``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any, TypeVar

import nats

from praxis_client import AsyncClient
from praxis_devstack.bench_audit import measure_audit
from praxis_devstack.bench_isolation import measure_isolation
from praxis_devstack.bench_reservations import measure_reservations
from praxis_devstack.bench_scale import measure_scale
from praxis_devstack.bench_snapshots import measure_snapshots
from praxis_devstack.cost import Meter, per_run
from praxis_devstack.stack import DEMO_WORKCELL, Stack
from praxis_devstack.stats import summary

T = TypeVar("T")

STATEMENT_COUNTS = {"shared_preload_libraries": "pg_stat_statements"}
"""The benchmark's PostgreSQL counts statements (``praxis_devstack.cost``)."""


class RunWatcher:
    """Futures resolved by pushed events: orchestrator finished, scheduler status changes.

    An event may arrive before the client has read the run id from the HTTP reply, so futures
    are created by whichever side comes first.
    """

    def __init__(self) -> None:
        self.finished: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.completed: dict[str, asyncio.Future[str]] = {}

    @staticmethod
    def _future(table: dict[str, asyncio.Future[Any]], run_id: str) -> asyncio.Future[Any]:
        if run_id not in table:
            table[run_id] = asyncio.get_running_loop().create_future()
        return table[run_id]

    def run_finished(self, run_id: str) -> asyncio.Future[dict[str, Any]]:
        return self._future(self.finished, run_id)

    def run_completed(self, run_id: str) -> asyncio.Future[str]:
        return self._future(self.completed, run_id)

    async def on_finished(self, msg: Any) -> None:
        data = json.loads(msg.data)
        future = self.run_finished(data["run_id"])
        if not future.done():
            future.set_result(data)

    async def on_status(self, msg: Any) -> None:
        data = json.loads(msg.data)
        if data["status"] in ("completed", "failed", "cancelled"):
            future = self.run_completed(data["run_id"])
            if not future.done():
                future.set_result(data["status"])


async def _within(future: asyncio.Future[T], seconds: float = 60.0) -> T:
    """A run that does not finish within a minute is a failure of the benchmark, not a hang."""
    return await asyncio.wait_for(future, seconds)


async def _submit(praxis: AsyncClient) -> tuple[str, int, float]:
    t0 = time.time_ns()
    run = await praxis.submit_run("noop", workcell=DEMO_WORKCELL)
    http_ms = (time.time_ns() - t0) / 1e6
    return str(run.accession_id), t0, http_ms


async def measure(
    stack: Stack, nats_url: str, runs: int, concurrency: int, meter: Meter | None = None
) -> dict[str, Any]:
    """Latency one run at a time, then throughput with ``concurrency`` in flight; ``meter``
    measures what the throughput phase cost each process per run (``praxis_devstack.cost``)."""
    nc = await nats.connect(nats_url)
    watcher = RunWatcher()
    await nc.subscribe("praxis.evt.orchestrator.run.finished.>", cb=watcher.on_finished)
    await nc.subscribe("praxis.evt.scheduler.run.status_changed.*", cb=watcher.on_status)
    async with stack.client(max_connections=concurrency) as client:
        for _ in range(5):  # warm-up: code cache, connections
            run_id, _, _ = await _submit(client)
            await _within(watcher.run_completed(run_id))

        latencies: list[float] = []
        http_ms: list[float] = []
        for _ in range(runs):  # latency: one run at a time, nothing else in flight
            run_id, t0, ms = await _submit(client)
            finished = await _within(watcher.run_finished(run_id))
            latencies.append((finished["result"]["started_ns"] - t0) / 1e6)
            http_ms.append(ms)
            await _within(watcher.run_completed(run_id))

        gate = asyncio.Semaphore(concurrency)
        ids: list[str] = []

        async def one() -> None:
            async with gate:
                run_id, _, _ = await _submit(client)
                ids.append(run_id)
                await _within(watcher.run_finished(run_id))

        before = await meter.sample() if meter is not None else None
        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(runs)))
        statuses = await asyncio.gather(*(_within(watcher.run_completed(r)) for r in ids))
        elapsed = time.perf_counter() - started
        after = await meter.sample() if meter is not None else None
    await nc.close()
    cost = per_run(before, after, runs) if before is not None and after is not None else None
    return {
        "runs": runs,
        "concurrency": concurrency,
        "submit_to_first_line_ms": summary(latencies),
        "http_submit_ms": summary(http_ms),
        "throughput_runs_per_s": round(runs / elapsed, 1),
        "throughput_elapsed_s": round(elapsed, 3),
        "throughput_failed": sum(1 for s in statuses if s != "completed"),
        **({"per_run_cost": cost} if cost is not None else {}),
    }


async def measure_run_list(stack: Stack, repeats: int = 5) -> dict[str, Any]:
    """``GET /protocols/runs`` at the default page (50) and the largest (1,000): time and bytes.

    The runs the phases before left behind are listed; every page must be a 200 (a page too
    large for one NATS message was once a 504 after 5 s).
    """
    figures: dict[str, Any] = {}
    async with stack.client(timeout=30.0) as praxis:
        for limit in (50, 1000):
            ms: list[float] = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                page = await praxis.list_runs(limit=limit)  # decoded: the client's whole cost
                ms.append((time.perf_counter() - t0) * 1000)
            figures[f"limit_{limit}"] = {
                "items": len(page.items),
                "total": page.total,
                "bytes": len(page.model_dump_json()),
                "ms": summary(ms),
            }
    return figures


async def bench(args: argparse.Namespace) -> int:
    stack = Stack(fast=True, postgres_settings=STATEMENT_COUNTS)
    try:
        await stack.start()
        await stack.seed()
        assert stack.infra is not None
        nats = stack.infra.nats_operator_url
        meter = stack.meter()
        await meter.start()
        report = await measure(stack, nats, args.runs, args.concurrency, meter)
        report["run_list"] = await measure_run_list(stack)  # needs the scheduler
        report["audit"] = await measure_audit(stack)  # a million events in the trail
        # The asset-manager alone: the scheduler would otherwise take every benchmark grant
        # for a run it does not know and dead-letter it, on the same two cores. Restarted to
        # place runs without an orchestrator (EDGE_PLACEMENT=false, as its own tests run it):
        # the benchmark's workcell has none, and its runs would wait for one forever.
        await stack.stop_services(keep=("asset-manager",))
        await stack.kill_service("asset-manager", signal.SIGTERM)
        stack.service_env["EDGE_PLACEMENT"] = "false"
        stack.start_service("asset-manager", "the reservation benchmark: no edge placement")
        await stack.wait_ready("asset-manager")
        report["reservations"] = await measure_reservations(nats, args.runs)
        report["isolation"] = await measure_isolation()
        report["snapshots"] = await measure_snapshots()
        report["id"] = str(uuid.uuid4())
    finally:
        await stack.stop()
    if not args.no_scale:
        report["scale"] = await measure_scale()  # a stack of its own, one at a time
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        await asyncio.to_thread(Path(args.output).write_text, text + "\n")
    return 0 if report["throughput_failed"] == 0 else 1
