"""A local proof of the production shape: a 3-node NATS cluster (everything at R3), two workcells
with an orchestrator each, a contended workload across both; then, one at a time:

1. ``nats-node-kill``: SIGKILL the nats-server leading the lease bucket (the busiest stream)
   mid-workload; ``nats-node-rejoin``: start it again on its ports and data, wait until the
   cluster is healthy (every node current);
2. every central service restarted in turn (SIGTERM, start again, ready);
3. each edge (orchestrator) restarted while a ``protocol_seconds`` protocol (``incubate``) runs
   on it: SIGTERM (it hands back unstarted runs, lets the running one finish) and a new
   instance started at once beside the draining one (a rolling update).

The workload (``chaos_assay`` / ``chaos_hold`` of :mod:`praxis_devstack.chaos`, every asset pinned,
spread over both workcells) goes on until every fault is done and ``runs`` have been submitted.

Checks: every run completed (none lost, failed or held for an operator), no asset ever held by
two runs at once (the lease history replayed: :func:`praxis_devstack.chaos.find_overlaps`), and
per fault the *stall*: the longest time, from the fault until it is over (plus a margin), in
which a workcell made no progress at all (no protocol-function call recorded, no run entering
``running`` or ``completed``); bound ``stall_bound`` seconds, ``leader_stall_bound`` when the
killed node led the busy streams. Times are the JetStream server timestamps of the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from nats.js.api import DeliverPolicy

from praxis_client import ConnectionFailed, status_of
from praxis_contracts.errors import NotFound, PraxisError
from praxis_devstack.chaos import (
    ACTIVE,
    INTERVENTION,
    LEASE_STREAM,
    PROGRESS,
    SERVICE_ENV,
    TERMINAL,
    Observer,
    Planned,
    find_overlaps,
    plan_workload,
)
from praxis_devstack.cluster import ClusterStack, NatsCluster
from praxis_devstack.stack import DEMO_WORKCELL, SERVICES, orchestrator_name
from praxis_plr.layout import demo_workcell

WORKCELLS = (DEMO_WORKCELL, "b")
BUSY_STREAMS = (LEASE_STREAM, "PRAXIS_COMMANDS", "PRAXIS_EVENTS")
CENTRAL = tuple(s for s in SERVICES if s != "orchestrator")
LONG_PROTOCOL = "incubate"
CALLS_SUBJECT = "praxis.evt.orchestrator.call.recorded.>"
STATUS_SUBJECT = "praxis.evt.scheduler.run.status_changed.>"


@dataclass(frozen=True)
class ProofOptions:
    runs: int = 80
    """At least this many workload runs (both workcells together); more while faults go on."""
    in_flight: int = 4
    """Active workload runs per workcell at most."""
    seed: int = 1
    protocol_seconds: float = 30.0
    """How long the protocol running on an edge while it restarts lasts."""
    workcells: tuple[str, ...] = WORKCELLS
    base_dir: Path | None = None
    keep: bool = False
    database_url: str | None = None
    """An external PostgreSQL database (a test's); default: embedded."""
    admin_token: str | None = None
    stall_bound: float = 5.0
    leader_stall_bound: float = 10.0
    margin: float = 3.0
    """Seconds after a fault is over that still count towards its stall."""
    spacing: float = 4.0
    """Seconds of normal work between two faults."""
    outage_seconds: float = 5.0
    """How long the killed nats-server stays dead."""
    settle_timeout: float = 240.0
    """After the last fault: how long the workload has to finish."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra service environment, over :data:`praxis_devstack.chaos.SERVICE_ENV`."""


@dataclass
class Fault:
    name: str
    workcells: tuple[str, ...]
    started: float
    ended: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)
    stall: dict[str, float] = field(default_factory=dict)
    bound: float = 0.0

    def row(self) -> dict[str, Any]:
        return {
            "fault": self.name,
            "took_s": round(self.ended - self.started, 2),
            "stall_s": {w: round(s, 2) for w, s in self.stall.items()},
            "max_stall_s": round(max(self.stall.values(), default=0.0), 2),
            "bound_s": self.bound,
            **self.detail,
        }


class Progress:
    """Per workcell, when anything moved (a protocol-function call recorded, a run entering
    ``running`` or ``completed``): ``work`` at the time the event says it happened (the edge's
    or scheduler's clock: the work itself), ``stored`` at the JetStream server's timestamp of
    the event (when the rest of the system could see it)."""

    KINDS = ("work", "stored")

    def __init__(self) -> None:
        self.times: dict[str, dict[str, list[float]]] = {k: {} for k in self.KINDS}
        self.run_workcell: dict[str, str] = {}
        self.pending_status: list[tuple[str, float, float]] = []
        self.errors: Counter[str] = Counter()

    def add(self, workcell: str, work: float, stored: float) -> None:
        self.times["work"].setdefault(workcell, []).append(work)
        self.times["stored"].setdefault(workcell, []).append(stored)

    async def on_call(self, msg: Any) -> None:
        try:
            workcell, run_id = msg.subject.split(".")[-2:]
            data = json.loads(msg.data)
            self.run_workcell.setdefault(run_id, workcell)
            at = data.get("finished_at") or data["started_at"]
            self.add(workcell, _epoch(at), msg.metadata.timestamp.timestamp())
        except Exception as exc:
            self.errors[type(exc).__name__] += 1

    async def on_status(self, msg: Any) -> None:
        try:
            data = json.loads(msg.data)
            if data["status"] in PROGRESS:
                stored = msg.metadata.timestamp.timestamp()
                self.pending_status.append((str(data["run_id"]), _epoch(data["at"]), stored))
        except Exception as exc:
            self.errors[type(exc).__name__] += 1

    def resolve(self) -> None:
        left = []
        for run_id, work, stored in self.pending_status:
            workcell = self.run_workcell.get(run_id)
            if workcell is None:
                left.append((run_id, work, stored))
            else:
                self.add(workcell, work, stored)
        self.pending_status = left

    def stall(
        self, workcell: str, start: float, end: float, kind: str = "work", limit: float = 0.0
    ) -> float:
        """The longest time within ``[start, end]`` (or until the first progress after ``end``,
        but never past ``limit``, e.g. the next fault) without progress on ``workcell``."""
        limit = limit or float("inf")
        times = sorted(self.times[kind].get(workcell, []))
        longest, last = 0.0, start
        for t in times:
            if t <= start:
                continue
            longest = max(longest, min(t, limit) - last)
            last = t
            if t >= end or t >= limit:
                return longest
        return max(longest, min(time.time(), limit) - last)  # nothing since: still stalled


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class Proof:
    def __init__(self, options: ProofOptions) -> None:
        self.options = options
        self.base_dir = options.base_dir or Path(tempfile.mkdtemp(prefix="praxis-proof-"))
        environ = {"DATABASE_URL": options.database_url} if options.database_url else {}
        extra: dict[str, Any] = {"admin_token": options.admin_token} if options.admin_token else {}
        first, *others = options.workcells
        self.stack = ClusterStack(
            base_dir=self.base_dir,
            fast=True,
            environ=environ,
            service_env={**SERVICE_ENV, **options.env},
            workcell=first,
            workcells=tuple(others),
            **extra,
        )
        per = max(options.runs // len(options.workcells), 1) * 20
        self.planned: dict[str, list[Planned]] = {
            w: plan_workload(per, options.seed * 100 + i) for i, w in enumerate(options.workcells)
        }
        everything = [p for ps in self.planned.values() for p in ps]
        self.tag_workcell = {p.tag: w for w, ps in self.planned.items() for p in ps}
        self.api = self.stack.client(timeout=30.0)  # its address is the stack's once started
        self.observer = Observer(everything)
        self.observer.api = self.api
        self.progress = Progress()
        self.submitted: dict[str, str] = {}  # run id -> workcell
        self.long_runs: dict[str, str] = {}  # run id -> edge
        self.rejected: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.faults_done = False
        self.errors: list[str] = []

    @property
    def cluster(self) -> NatsCluster:
        assert self.stack.cluster is not None
        return self.stack.cluster

    # -- run ------------------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        report: dict[str, Any] = {"base_dir": str(self.base_dir)}
        started = time.monotonic()
        try:
            await self._start()
            report["started_s"] = round(time.monotonic() - started, 1)
            workload = asyncio.create_task(self._workload())
            try:
                await self._faults()
                self.faults_done = True
                await asyncio.wait_for(workload, self.options.settle_timeout)
            finally:
                self.faults_done = True
                workload.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await workload
            await self._settle()
            report.update(await self._check())
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            report["faults"] = [f.row() for f in self.faults]
        finally:
            report["errors"] = self.errors
            report["ok"] = not self.errors and not any(
                (report.get("violations") or {"unchecked": True}).values()
            )
            report["took_s"] = round(time.monotonic() - started, 1)
            with contextlib.suppress(OSError):
                text = json.dumps(report, indent=2, default=str)
                (self.base_dir / "report.json").write_text(text + "\n")
            await self.observer.close()
            await self.api.aclose()
            with contextlib.suppress(Exception):
                await self.stack.stop()
            if report["ok"] and not self.options.keep and self.options.base_dir is None:
                shutil.rmtree(self.base_dir, ignore_errors=True)
        return report

    async def _start(self) -> None:
        await self.stack.start()
        await self.api.aclose()
        self.api = self.observer.api = self.stack.client(timeout=30.0)
        await self.stack.seed()
        for workcell in self.options.workcells:
            try:
                await self.api.get_workcell(workcell)
            except NotFound:
                await self.api.register_workcell(workcell, assets=demo_workcell())
        for protocol in ("chaos_assay", "chaos_hold", LONG_PROTOCOL):
            for _ in range(120):
                if (await self.api.list_definitions(name=protocol)).items:
                    break
                await asyncio.sleep(0.5)
            else:
                raise RuntimeError(f"protocol {protocol} was not discovered")
        # The harness connects with the member list: a killed node is a reconnection away.
        await self.observer.connect(cast(str, self.cluster.operator_urls))
        js = self.observer.nc.jetstream()
        for subject, callback in (
            (CALLS_SUBJECT, self.progress.on_call),
            (STATUS_SUBJECT, self.progress.on_status),
        ):
            await js.subscribe(
                subject,
                stream="PRAXIS_EVENTS",
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
                idle_heartbeat=1.0,
                cb=callback,
            )

    # -- workload ---------------------------------------------------------------------------
    def _active(self, workcell: str) -> int:
        return sum(
            1
            for run_id, w in self.submitted.items()
            if w == workcell
            and run_id not in self.long_runs
            and (run := self.observer.runs.get(run_id)) is not None
            and run.status in ACTIVE
        )

    async def _workload(self) -> None:
        queues = {w: list(ps) for w, ps in self.planned.items()}
        count = 0
        while not (self.faults_done and count >= self.options.runs):
            free = [w for w in queues if queues[w] and self._active(w) < self.options.in_flight]
            if not free:
                if not any(queues.values()):
                    self.errors.append("the planned workload ran out before the faults ended")
                    return
                await self.observer.until(
                    lambda: any(self._active(w) < self.options.in_flight for w in queues), 5.0
                )
                continue
            workcell = min(free, key=self._active)
            planned = queues[workcell].pop(0)
            body = {**planned.body(), "workcell": workcell}
            if await self._submit(body, planned, workcell) is not None:
                count += 1

    async def _submit(
        self, body: dict[str, Any], planned: Planned | None, workcell: str
    ) -> str | None:
        """POST a run, retried (bounded) while the gateway or the bus is down."""
        delay, deadline = 0.2, time.monotonic() + 90.0
        while True:
            try:
                view = await self.api.submit_run(**body)
                run_id = str(view.accession_id)
                self.submitted[run_id] = workcell
                self.progress.run_workcell[run_id] = workcell
                self.observer.note_view(view.model_dump(mode="json"), planned)
                return run_id
            except ConnectionFailed as exc:
                problem = type(exc.__cause__).__name__
            except PraxisError as exc:
                status = status_of(exc) or 500
                problem = f"HTTP {status}: {exc.message[:300]}"
                if status < 500:
                    self.rejected.append({"body": body, "problem": problem})
                    return None
            if time.monotonic() > deadline:
                self.rejected.append({"body": body, "problem": problem})
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # -- faults ---------------------------------------------------------------------------
    async def _faults(self) -> None:
        # Work is under way on both workcells before the first fault.
        await self._quiet_for(self.options.spacing, need_progress=True)
        await self._nats_node()
        for service in CENTRAL:
            await self._quiet_for(self.options.spacing)
            await self._restart_central(service)
        for workcell in self.options.workcells:
            await self._quiet_for(self.options.spacing)
            await self._restart_edge(workcell)
        await self._quiet_for(self.options.spacing)

    async def _quiet_for(self, seconds: float, need_progress: bool = False) -> None:
        await asyncio.sleep(seconds)
        if need_progress:
            for workcell in self.options.workcells:
                ok = await self.observer.until(
                    lambda w=workcell: any(  # type: ignore[misc]
                        r.status == "completed" and self.submitted.get(r.run_id) == w
                        for r in self.observer.runs.values()
                    ),
                    120.0,
                )
                if not ok:
                    raise RuntimeError(f"no run completed on workcell {workcell} before faults")

    async def _resumed(self, since: float, timeout: float) -> bool:
        """Wait until every workcell made progress after ``since``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.progress.resolve()
            if all(
                any(t > since for t in self.progress.times["work"].get(w, []))
                for w in self.options.workcells
            ):
                return True
            await asyncio.sleep(0.2)
        return False

    async def _nats_node(self) -> None:
        leaders = await asyncio.to_thread(self.cluster.stream_leaders)
        target = leaders.get(LEASE_STREAM) or self.cluster.nodes[0].server_name
        index = self.cluster.index_of(target)
        led = sorted(s for s, leader in leaders.items() if leader == target)
        busy = [s for s in BUSY_STREAMS if s in led]
        bound = self.options.leader_stall_bound if busy else self.options.stall_bound
        fault = Fault("nats-node-kill", self.options.workcells, time.time(), bound=bound)
        fault.detail = {"node": target, "led_busy_streams": busy, "led_streams": len(led)}
        await self.stack.kill_nats_node(index)
        fault.ended = time.time()
        self.faults.append(fault)
        meta = await asyncio.to_thread(self.cluster.meta_leader)
        await asyncio.sleep(self.options.outage_seconds)
        # Rejoin only once both workcells work again on two nodes (the stalls stay apart).
        if not await self._resumed(time.time(), 60.0):
            self.errors.append("a workcell made no progress on two nodes for 60 s after the kill")
        new_leaders = await asyncio.to_thread(self.cluster.stream_leaders)
        fault.detail["new_lease_leader"] = new_leaders.get(LEASE_STREAM)
        fault.detail["meta_leader_after"] = meta
        rejoin = Fault(
            "nats-node-rejoin", self.options.workcells, time.time(), bound=self.options.stall_bound
        )
        await self.stack.restart_nats_node(index)
        rejoin.ended = time.time()
        rejoin.detail = {"node": target, "healthy_after_s": round(rejoin.ended - rejoin.started, 2)}
        self.faults.append(rejoin)

    async def _restart_central(self, service: str) -> None:
        fault = Fault(
            f"restart {service}",
            self.options.workcells,
            time.time(),
            bound=self.options.stall_bound,
        )
        code = await self.stack.kill_service(service, signal.SIGTERM)
        self.stack.start_service(service, note="proof: restarted")
        await self.stack.wait_ready(service)
        fault.ended = time.time()
        fault.detail = {"exit": code}
        self.faults.append(fault)

    async def _restart_edge(self, workcell: str) -> None:
        """Start a ``protocol_seconds`` protocol on ``workcell``; once it runs, SIGTERM its edge,
        let it finish the protocol and exit, then start the new one (Recreate)."""
        name = "orchestrator" if workcell == self.stack.workcell else orchestrator_name(workcell)
        step = 1.0
        steps = max(int(self.options.protocol_seconds / step), 2)
        body = {
            "protocol_name": LONG_PROTOCOL,
            "workcell": workcell,
            "parameters": {"steps": steps, "step_seconds": step},
            "assets": {},
        }
        run_id = await self._submit(body, None, workcell)
        if run_id is None:
            raise RuntimeError(f"the long protocol on {workcell} was not accepted")
        self.long_runs[run_id] = name
        running = await self.observer.until(
            lambda: (r := self.observer.runs.get(run_id)) is not None and r.status == "running",
            120.0,
        )
        if not running:
            raise RuntimeError(f"the long protocol on {workcell} did not start")
        await asyncio.sleep(min(2.0, self.options.protocol_seconds / 4))
        fault = Fault(
            f"restart edge {workcell}", (workcell,), time.time(), bound=self.options.stall_bound
        )
        # As the deployment upgrades an edge (one orchestrator per workcell: Recreate): SIGTERM
        # to the old one, which takes no new run, hands back what it has not started and
        # finishes the running protocol; then the new one starts and takes what waited.
        old = self.stack.service(name)
        old.process.send_signal(signal.SIGTERM)
        left = self.options.protocol_seconds + 60.0
        try:
            code = await asyncio.to_thread(old.process.wait, left)
        except subprocess.TimeoutExpired:
            code = None
            self.errors.append(f"the old {name} did not exit within {left:.0f}s of SIGTERM")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(old.process.pid, signal.SIGKILL)  # never left behind
            await asyncio.to_thread(old.process.wait, 30)
        drained = time.time()
        status = self.observer.runs[run_id].status if run_id in self.observer.runs else None
        self.stack.start_service(name, note="proof: the upgraded orchestrator")
        await self.stack.wait_ready(name)
        new_ready = time.time()
        fault.ended = new_ready
        fault.detail = {
            "long_run": run_id,
            "long_run_status_when_old_exited": status,
            "old_exit": code,
            "old_drained_s": round(drained - fault.started, 1),
            "new_ready_s": round(new_ready - fault.started, 2),
        }
        self.faults.append(fault)

    # -- checks ---------------------------------------------------------------------------
    async def _settle(self) -> None:
        ids = set(self.submitted)

        def done() -> bool:
            return all(
                (r := self.observer.runs.get(i)) is not None
                and r.status in TERMINAL | {INTERVENTION}
                for i in ids
            )

        if not await self.observer.until(done, self.options.settle_timeout):
            self.errors.append("runs still active after the settle timeout")

    async def _check(self) -> dict[str, Any]:
        await self.observer.caught_up(30.0)
        await asyncio.sleep(1.0)  # the last events of the tap
        self.progress.resolve()
        final: dict[str, str] = {}
        not_completed: dict[str, Any] = {}
        for run_id, workcell in self.submitted.items():
            try:
                view = (await self.api.get_run(run_id)).model_dump(mode="json")
            except PraxisError:
                view = {}
            final[run_id] = str(view.get("status", "?"))
            if final[run_id] != "completed":
                not_completed[run_id] = {
                    "status": final[run_id],
                    "workcell": workcell,
                    "protocol": view.get("protocol_name"),
                    "error": view.get("error"),
                    "updated_at": view.get("updated_at"),
                }
        statuses = Counter(final.values())
        for i, fault in enumerate(self.faults):
            end = fault.ended + self.options.margin
            limit = self.faults[i + 1].started if i + 1 < len(self.faults) else 0.0
            fault.stall = {
                w: self.progress.stall(w, fault.started, end, limit=limit) for w in fault.workcells
            }
            fault.detail["stall_seen_s"] = {
                w: round(self.progress.stall(w, fault.started, end, "stored", limit), 2)
                for w in fault.workcells
            }
        stalls = [f.row() for f in self.faults if max(f.stall.values(), default=0.0) > f.bound]
        overlaps = find_overlaps(self.observer.leases, self.observer.unobserved)
        per_workcell = Counter(self.submitted.values())
        try:
            info = await self.observer.nc.jetstream().stream_info("PRAXIS_DEAD_LETTERS")
            dead_letters: int | str = info.state.messages
        except Exception as exc:
            dead_letters = f"unknown: {type(exc).__name__}"
        return {
            "runs": {
                "submitted": len(self.submitted),
                "per_workcell": dict(per_workcell),
                "long_protocol_runs": len(self.long_runs),
                "statuses": dict(statuses),
            },
            "faults": [f.row() for f in self.faults],
            "leases": {
                "messages": len(self.observer.leases),
                "unobserved": self.observer.unobserved,
            },
            "violations": {
                "runs_not_completed": not_completed,
                "rejected_submissions": self.rejected,
                "assets_held_twice": overlaps,
                "stalls_over_bound": stalls,
            },
            "dead_letters": dead_letters,
            "tap_errors": dict(self.progress.errors + self.observer.nats_errors),
            "timeline": {
                "faults": [(f.name, round(f.started, 3), round(f.ended, 3)) for f in self.faults],
                "progress": {
                    kind: {w: sorted(round(t, 3) for t in ts) for w, ts in by_workcell.items()}
                    for kind, by_workcell in self.progress.times.items()
                },
            },
        }


def figures_table(report: dict[str, Any]) -> str:
    """The measured figures, one line per fault, then the totals."""
    lines = [
        f"{'fault':<24} {'took s':>7} {'max stall s':>12} {'bound s':>8} {'seen s':>7}"
        "  stall per workcell"
    ]
    for row in report.get("faults") or []:
        per = ", ".join(f"{w}={s}" for w, s in (row.get("stall_s") or {}).items())
        seen = max((row.get("stall_seen_s") or {}).values(), default="-")
        lines.append(
            f"{row['fault']:<24} {row['took_s']:>7} {row.get('max_stall_s', '-'):>12} "
            f"{row['bound_s']:>8} {seen:>7}  {per}"
        )
    runs = report.get("runs") or {}
    violations = report.get("violations") or {}
    lines.append(
        f"runs: {runs.get('submitted')} submitted {runs.get('per_workcell')}, "
        f"statuses {runs.get('statuses')}; not completed: "
        f"{len(violations.get('runs_not_completed') or {})}; assets held twice: "
        f"{len(violations.get('assets_held_twice') or [])}; "
        f"lease messages replayed: {(report.get('leases') or {}).get('messages')}; "
        f"dead letters: {report.get('dead_letters')}"
    )
    lines.append(f"ok: {report.get('ok')}  errors: {report.get('errors')}")
    return "\n".join(lines)


async def run_proof(options: ProofOptions) -> dict[str, Any]:
    """Run the proof; returns the report (``report["ok"]``: nothing violated, no error)."""
    return await Proof(options).run()


async def proof(args: Any) -> int:
    """``python -m praxis_devstack proof``: the figures table, then the JSON report (to
    ``args.output`` if given); 0 only if everything held."""
    options = ProofOptions(
        runs=getattr(args, "runs", 80),
        in_flight=getattr(args, "in_flight", 4),
        seed=getattr(args, "seed", 1),
        protocol_seconds=getattr(args, "protocol_seconds", 30.0),
        base_dir=Path(args.base_dir) if getattr(args, "base_dir", None) else None,
        keep=getattr(args, "keep", False),
    )
    report = await run_proof(options)
    text = json.dumps(report, indent=2, default=str)
    print(figures_table(report), flush=True)
    if getattr(args, "output", None):
        await asyncio.to_thread(Path(args.output).write_text, text + "\n")
    else:
        print(text, flush=True)
    return 0 if report["ok"] else 1


__all__ = ["ProofOptions", "figures_table", "proof", "run_proof"]
