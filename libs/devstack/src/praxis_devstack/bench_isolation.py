"""``make bench``'s isolation figures: what running each protocol in a process of its own costs.

In-process supervisor, no services, real sandbox (``praxis_runtime.sandbox``), real zygote and
runners (``praxis_orchestrator.isolation``), real chatterbox PyLabRobot objects:

* cold start: the zygote started and its first run (a protocol that returns at once) ended,
  beside a fresh interpreter importing what the zygote preloads (what each run would pay
  without the zygote);
* per run: fork, prepare (import the code, check the parameters, build the copies), call, end:
  a trivial protocol on the demo workcell's liquid handler, tip rack and two plates;
* per instrument command: aspirate and dispense, each timed alone, first on a plain set-up
  ``LiquidHandler``, then guarded with a run's ``WorkcellView`` current (fence, machine, every
  op's resources checked), then as a protocol sends them from its runner (timed inside the
  runner: the message to the supervisor, the guarded command on the live object, the answer
  with what changed, loaded into the copies).

The orchestrator is imported from the workspace, as ``Stack`` runs the services from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from pylabrobot.resources import Plate, TipRack

from praxis_devstack.stats import summary
from praxis_plr import (
    LiveWorkcell,
    WorkcellView,
    current_view,
    demo_liquid_handler,
    demo_workcell,
    enable_tracking,
)
from praxis_plr.guard import guard_machine
from praxis_plr.layout import layout_from_drafts

PROTOCOLS = '''"""The isolation bench's protocols."""

import time

from pylabrobot.liquid_handling import LiquidHandler
from pylabrobot.resources import Plate, TipRack

from praxis_sdk import protocol_function


@protocol_function(version="1.0.0")
async def nothing(lh: LiquidHandler, tips: TipRack, source: Plate, dest: Plate) -> int:
    return len(source.get_all_items())


@protocol_function(version="1.0.0")
async def commands(
    lh: LiquidHandler, tips: TipRack, source: Plate, dest: Plate, pairs: int
) -> list[float]:
    us = []
    await lh.pick_up_tips([tips.get_item("A1")])
    wells = source.get_all_items()
    for index in range(pairs):
        well = wells[index % len(wells)].get_identifier()
        for act, plate in ((lh.aspirate, source), (lh.dispense, dest)):
            t0 = time.perf_counter()
            await act([plate.get_well(well)], vols=[1.0])
            us.append((time.perf_counter() - t0) * 1e6)
    await lh.return_tips()
    return us
'''
BINDINGS = {
    "lh": "liquid_handler",
    "tips": "tip_rack",
    "source": "source_plate",
    "dest": "dest_plate",
}


class _Bench:
    """A supervisor of its own: the demo workcell's live objects, a zygote, runs on it."""

    def __init__(self, folder: Path, live: LiveWorkcell) -> None:
        from praxis_orchestrator.isolation import Zygote  # the workspace's orchestrator
        from praxis_runtime.sandbox import Sandbox

        self.code = folder / "code"
        self.code.mkdir(mode=0o755)
        (self.code / "bench_protocols.py").write_text(PROTOCOLS)
        self.code.chmod(0o755)
        folder.chmod(0o755)
        self.live = live
        self.zygote = Zygote(Sandbox(), self.code, folder / "scratch", 1024)
        self.locks: dict[str, asyncio.Lock] = {}

    async def run(self, qualname: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """One run of ``qualname`` on the bound assets, from fork to end; its ``finished``."""
        from praxis_plr.remote import RunObjects, copy_layout, run_assets

        run_id = uuid.uuid4()
        leased = list(BINDINGS.values())
        names = run_assets(self.live.layout, leased)
        link = await self.zygote.fork(run_id)
        try:
            view = self.live.view(run_id, leased, lambda: None)
            objects = RunObjects(
                {n: self.live.get(n) for n in names},
                ["liquid_handler"],
                others=[self.live.get(n) for n in self.live.names()],
                run_id=run_id,
                leased=leased,
                view=view,
            )
            link.attach(objects, view, self.locks)
            answer = await link.prepare(
                {
                    "run_id": str(run_id),
                    "code_root": str(self.code),
                    "code_identity": "bench",
                    "module": "bench_protocols",
                    "qualname": qualname,
                    "parameters": parameters,
                    "bindings": BINDINGS,
                    "layout": copy_layout(self.live.layout, names).model_dump(mode="json"),
                    "states": self.live.snapshot(names),
                    "initial_state": {},
                    "tick": 1.0,
                }
            )
            if answer.get("op") != "ready":
                raise RuntimeError(f"the bench run could not start: {answer}")
            await link.send("go")
            ended: dict[str, Any] = await link.ended
        finally:
            await link.close()
        if ended.get("outcome") != "completed":
            raise RuntimeError(f"the bench run did not complete: {ended}")
        return ended


def fresh_interpreter_ms(repeats: int) -> dict[str, float]:
    """A new interpreter importing what the zygote preloads: a run's start without the zygote."""
    from praxis_orchestrator.zygote import PRELOAD

    code = f"import importlib\nfor m in {PRELOAD!r}:\n    importlib.import_module(m)"
    ms: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        ms.append((time.perf_counter() - t0) * 1000)
    return summary(ms)


async def measure_runners(runs: int, pairs: int) -> dict[str, Any]:
    layout = layout_from_drafts(demo_workcell())
    with (
        tempfile.TemporaryDirectory(prefix="praxis-bench-isolation-") as tmp,
        contextlib.redirect_stdout(io.StringIO()),  # the chatterbox prints every command
    ):
        async with await LiveWorkcell.build(layout) as live:
            bench = _Bench(Path(tmp), live)
            try:
                t0 = time.perf_counter()
                await bench.zygote.start()
                await bench.run("nothing", {})
                cold_ms = (time.perf_counter() - t0) * 1000
                per_run: list[float] = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    await bench.run("nothing", {})
                    per_run.append((time.perf_counter() - t0) * 1000)
                ended = await bench.run("commands", {"pairs": pairs})
            finally:
                await bench.zygote.stop()
    return {
        "cold_start_ms": round(cold_ms, 1),
        "per_run": {"runs": runs, "fork_prepare_call_end_ms": summary(per_run)},
        "in_runner_us": [float(v) for v in ended["result"]],
    }


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


async def measure_guard(pairs: int) -> dict[str, list[float]]:
    enable_tracking()
    lh = demo_liquid_handler()
    tips: TipRack = lh.deck.get_resource("tip_rack")
    source: Plate = lh.deck.get_resource("source_plate")
    dest: Plate = lh.deck.get_resource("dest_plate")
    with contextlib.redirect_stdout(io.StringIO()):
        await lh.setup()
        try:
            await lh.pick_up_tips([tips.get_item("A1")])
            plain = await _command_us(lh, source, dest, pairs)
            guard_machine(lh, "liquid_handler")
            assets = {id(r): r.name for r in (lh, lh.deck, tips, source, dest)}
            leased = {r.name: r for r in (lh, tips, source, dest)}
            token = current_view.set(WorkcellView("bench", leased, assets, fence=lambda: None))
            try:
                guarded = await _command_us(lh, source, dest, pairs)
            finally:
                current_view.reset(token)
            await lh.return_tips()
        finally:
            await lh.stop()
    return {"plain": plain, "guarded": guarded}


async def measure_isolation(runs: int = 100, pairs: int = 300, fresh: int = 5) -> dict[str, Any]:
    """Cold start, per-run and per-command costs (see the module's docstring)."""
    guard = await measure_guard(pairs)
    runners = await measure_runners(runs, pairs)
    plain = summary(guard["plain"])["p50"]
    in_runner = summary(runners["in_runner_us"])
    return {
        "cold_start": {
            "zygote_and_first_run_ms": runners["cold_start_ms"],
            "fresh_interpreter_imports_ms": fresh_interpreter_ms(fresh),
        },
        "per_run": runners["per_run"],
        "per_command": {
            "commands": len(guard["plain"]),
            "unguarded_us": summary(guard["plain"]),
            "guarded_us": summary(guard["guarded"]),
            "guard_overhead_us_median": round(summary(guard["guarded"])["p50"] - plain, 2),
            "in_runner_us": in_runner,
            "isolation_overhead_us_median": round(in_runner["p50"] - plain, 2),
        },
    }
