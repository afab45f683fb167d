"""``make bench``'s isolation figures: what running protocols off the orchestrator's loop costs.

In-process, no services, a few seconds:

* per run: a ``RunThread`` (the worker thread and event loop each run's protocol gets) started,
  handed one trivial coroutine whose result the caller awaits, stopped and joined;
* per instrument command: aspirate and dispense on a set-up chatterbox ``LiquidHandler``, each
  timed alone, first with a plain backend, then with the backend guarded and a run's
  ``WorkcellView`` current (fence, machine and every op's resources checked before the backend),
  then guarded on a ``RunThread`` as a run sends them (with the worker's yielding profile).

The orchestrator is imported from the workspace, as ``Stack`` runs the services from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from typing import Any

from pylabrobot.resources import Plate, TipRack

from praxis_devstack.stats import summary
from praxis_plr import WorkcellView, current_view, demo_liquid_handler, enable_tracking
from praxis_plr.guard import guard_machine


async def _nothing() -> int:
    return 0


async def measure_run_threads(runs: int) -> dict[str, Any]:
    from praxis_orchestrator.isolation import RunThread  # the workspace's orchestrator

    ms: list[float] = []
    for index in range(runs):
        t0 = time.perf_counter()
        worker = RunThread(f"bench-{index}")
        worker.start()
        await asyncio.wrap_future(worker.submit(_nothing()))
        worker.stop()
        await asyncio.to_thread(worker.join)
        ms.append((time.perf_counter() - t0) * 1000)
    return {"runs": runs, "start_run_stop_ms": summary(ms)}


async def _command_us(lh: Any, source: Plate, dest: Plate, pairs: int) -> list[float]:
    us: list[float] = []
    wells = source.get_all_items()
    for index in range(pairs):
        well = wells[index % len(wells)].get_identifier()
        for act, plate in ((lh.aspirate, source), (lh.dispense, dest)):
            t0 = time.perf_counter()
            await act([plate.get_well(well)], vols=[1.0])
            us.append((time.perf_counter() - t0) * 1e6)
    return us


async def measure_guard(pairs: int) -> dict[str, Any]:
    enable_tracking()
    lh = demo_liquid_handler()
    tips: TipRack = lh.deck.get_resource("tip_rack")
    source: Plate = lh.deck.get_resource("source_plate")
    dest: Plate = lh.deck.get_resource("dest_plate")
    with contextlib.redirect_stdout(io.StringIO()):  # the chatterbox prints every command
        await lh.setup()
        try:
            await lh.pick_up_tips([tips.get_item("A1")])
            plain = await _command_us(lh, source, dest, pairs)
            guard_machine(lh, "liquid_handler")
            assets = {id(r): r.name for r in (lh, lh.deck, tips, source, dest)}
            leased = {r.name: r for r in (lh, tips, source, dest)}
            view = WorkcellView("bench", leased, assets, fence=lambda: None)
            token = current_view.set(view)
            try:
                guarded = await _command_us(lh, source, dest, pairs)
            finally:
                current_view.reset(token)
            in_worker = await _in_worker(view, lh, source, dest, pairs)
            await lh.return_tips()
        finally:
            await lh.stop()
    plain_median = summary(plain)["p50"]
    guarded_median = summary(guarded)["p50"]
    return {
        "commands": len(plain),
        "unguarded_us": summary(plain),
        "guarded_us": summary(guarded),
        "guard_overhead_us_median": round(guarded_median - plain_median, 2),
        "in_worker_us": summary(in_worker),
        "isolation_overhead_us_median": round(summary(in_worker)["p50"] - plain_median, 2),
    }


async def _in_worker(
    view: WorkcellView, lh: Any, source: Plate, dest: Plate, pairs: int
) -> list[float]:
    """The guarded commands as a run sends them: on a ``RunThread``, whose yielding profile
    hooks every Python call of the worker."""
    from praxis_orchestrator.isolation import RunThread

    async def commands() -> list[float]:
        token = current_view.set(view)
        try:
            return await _command_us(lh, source, dest, pairs)
        finally:
            current_view.reset(token)

    worker = RunThread("bench-commands")
    worker.start()
    try:
        return await asyncio.wrap_future(worker.submit(commands()))
    finally:
        worker.stop()
        await asyncio.to_thread(worker.join)


async def measure_isolation(runs: int = 200, pairs: int = 300) -> dict[str, Any]:
    """Per-run worker cost and per-command guard cost (see the module's docstring)."""
    return {
        "per_run": await measure_run_threads(runs),
        "per_command": await measure_guard(pairs),
    }
