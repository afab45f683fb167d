"""``make chaos``: kill every part of the system in turn under a contended workload, then check
that no run got stuck and that no asset was ever held by two runs at once.

In order:

1. Start the stack (embedded nats-server and PostgreSQL, fast mode) under its own base directory
   with short recovery timings in the services' environment (:data:`SERVICE_ENV`); seed it.
2. Tail, from their first message, the lease bucket's stream (every lease write, renewal, hold,
   tombstone and expiry marker, with its revision and the server's timestamp) and the
   scheduler's run-status events. Both are ordered consumers: they resume after a nats-server
   restart. The lease tail reads as messages arrive: lease messages carry a TTL and the bucket
   keeps 64 per key, so reading the history only at the end would miss most of it.
3. Submit a seeded workload of ``chaos_assay`` (every asset of the demo workcell, nested steps)
   and ``chaos_hold`` (one plate) runs, every asset pinned, at most ``in_flight`` active at once
   (a run queued behind an asset held for an intervention does not count: it waits for an
   operator, not for the system).
4. Meanwhile, fault ``i`` of ``F`` once ``i / (F + 1)`` of the runs have settled and a protocol is
   executing: SIGKILL and restart each service in turn, then stop and start nats-server, then
   PostgreSQL, on the same ports and data. After each: how long until the readiness probe(s)
   answer again, and until a run is recorded as ``running`` or ``completed`` again.
5. Wait (bounded) until every run is terminal, ``requires_intervention``, or queued behind an
   asset held for an intervention; every other run is stuck.
6. Resolve every ``requires_intervention`` run as an operator would (``resolve_during``: also
   as they appear during the workload), wait (bounded) for the queue to drain; every run must
   then be terminal and ``GET /locks`` empty. An intervention for a run on an orchestrator that
   was not killed (its heartbeat was live) is reported as a violation.
7. Replay the lease history: a key must never go from one run's live lease to another run's
   while the first lease (its ``Nats-TTL``; none when held) was still running, with no tombstone
   or expiry marker in between.

Waiting is pushed (events, lease messages) under a bounded deadline, with the HTTP API read as a
backstop and as the source of truth for the checks. The only sleep is the outage itself: how long
a server stays down (and back-off between retries while the API is down).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import nats
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from pydantic import BaseModel

from praxis_client import AsyncClient, ConnectionFailed, calls, status_of
from praxis_contracts.common import SearchFilters
from praxis_contracts.errors import NotFound, PayloadTooLarge, PraxisError, Timeout
from praxis_devstack.stack import DEMO_WORKCELL, SERVICES, Stack

TERMINAL = frozenset({"completed", "failed", "cancelled"})
INTERVENTION = "requires_intervention"
ACTIVE = frozenset(
    {"queued", "pending", "preparing", "running", "pausing", "paused", "resuming", "canceling"}
)
STATUSES = (*sorted(ACTIVE), INTERVENTION, *sorted(TERMINAL))
PROGRESS = frozenset({"running", "completed"})
"""A run entering one of these after a fault shows the system doing work again."""

NATS_FAULT = "nats-server"
POSTGRES_FAULT = "postgresql"
NATS_PHASES = ("dispatching", "preparing", "starting", "running", "finishing")
"""The phases of a run in which nats-server is stopped and started (see ``phase_of``)."""


def faults(nats_phase_repeats: int = 2) -> tuple[str, ...]:
    """Every service SIGKILLed in turn, nats-server stopped and started in each phase of a run
    (``nats-server@<phase>``, each ``nats_phase_repeats`` times), then PostgreSQL."""
    phases = [f"{NATS_FAULT}@{p}" for _ in range(nats_phase_repeats) for p in NATS_PHASES]
    return (*SERVICES, *phases, POSTGRES_FAULT)


FAULTS = faults()

SERVICE_ENV = {
    "EDGE_GRACE_SECONDS": "10",
    "EDGE_HEARTBEAT_TTL_SECONDS": "3",
    "ASSET_LOCK_TIMEOUT_SECONDS": "10",
    "DISCOVERY_TIMEOUT_SECONDS": "5",
    "LOG_FORMAT": "json",
}
"""Short timings, and a lease TTL (10 s) *shorter* than the time it takes to declare a killed edge
lost (its heartbeat key's 3 s TTL, then 10 s of grace): its runs' leases run out first, and must
be held for an operator, never handed on. A NATS outage (2 s, plus reconnection) fits within a
lease renewed every 3.3 s. A protocol module gets 5 s of running time at discovery. JSON logs:
every line has its time and run id."""

HOSTILE_SOURCES = 8
DISCOVERY_BOUND_SECONDS = 10.0
"""A normal source registered while ``HOSTILE_SOURCES`` sources loop at import must be
discovered within this long."""
LOOPING_MODULE = "while True:\n    pass\n"
NORMAL_MODULE = """
from praxis_sdk import protocol_function


@protocol_function(version="1.0.0")
async def chaos_discovery_probe(value: int = 1) -> int:
    return value
"""

LEASE_BUCKET = "praxis_asset_leases"
LEASE_STREAM = f"KV_{LEASE_BUCKET}"
EVENTS_STREAM = "PRAXIS_EVENTS"
STATUS_SUBJECT = "praxis.evt.scheduler.run.status_changed.*"
DEAD_LETTER_STREAM = "PRAXIS_DEAD_LETTERS"
EDGES_BUCKET = "praxis_edges"

WELLS = [f"{row}{col}" for row in "ABCDEFGH" for col in range(1, 13)]
PLATES = ("source_plate", "dest_plate")
ASSAY_PINS = {
    "lh": "liquid_handler",
    "tips": "tip_rack",
    "source_plate": "source_plate",
    "dest_plate": "dest_plate",
    "reader": "plate_reader",
}
HOLD_SHARE = 0.35
"""Share of ``chaos_hold`` runs (one plate each) in the workload; the rest are ``chaos_assay``."""

REFRESH_EVERY = 2.0
"""Seconds between reads of the API while waiting (a backstop: events push every change)."""

RESOLVE_REASON = "chaos: operator resolved"


@dataclass(frozen=True)
class ChaosOptions:
    runs: int = 100
    in_flight: int = 8
    seed: int = 1
    base_dir: Path | None = None
    """Where the stack keeps its data and logs; default a new temporary folder."""
    keep: bool = False
    """Keep the base directory even when the run passes (it is always kept when it fails)."""
    outage_seconds: float = 2.0
    """How long nats-server and PostgreSQL stay down (the fault itself)."""
    recover_timeout: float = 90.0
    """Per fault: readiness, then progress, each waited for at most this long."""
    spacing_timeout: float = 60.0
    """At most this long between a fault's recovery and the next fault."""
    settle_timeout: float = 150.0
    """After the workload: how long every run has to become terminal or requires_intervention."""
    drain_timeout: float = 120.0
    """After resolving interventions: how long the queue has to drain."""
    workload_timeout: float = 1200.0
    """Submitting every run must be done by then (from the first submission)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra service environment, over :data:`SERVICE_ENV`."""
    resolve_during: bool = False
    """Resolve interventions as they appear during the workload (so the runs queued behind them
    go on under the remaining faults), not only once the workload is over."""
    deadline: float | None = None
    """The whole run (start, workload, faults, checks) ends by then, with what it has found
    so far and an error saying so: a test's own time limit never cuts the report off."""
    nats_phase_repeats: int = 2
    """How many times nats-server is restarted in each phase of a run."""
    hostile_sources: int = HOSTILE_SOURCES
    """Sources whose module loops at import, registered beside a normal one (0: none)."""


@dataclass(frozen=True)
class Planned:
    """One run of the workload: what is submitted and which assets (by name) it needs."""

    index: int
    protocol: str
    parameters: dict[str, Any]
    assets: dict[str, str]

    @property
    def tag(self) -> str:
        return str(self.parameters["tag"])

    def body(self) -> dict[str, Any]:
        return {
            "protocol_name": self.protocol,
            "workcell": DEMO_WORKCELL,
            "parameters": self.parameters,
            "assets": self.assets,
        }


def plan_workload(runs: int, seed: int) -> list[Planned]:
    """The seeded workload: ``chaos_assay`` runs (every asset) and ``chaos_hold`` runs (one plate),
    every requirement pinned, so who contends with whom is known in advance."""
    rng = random.Random(seed)
    planned = []
    for index in range(runs):
        tag = f"s{seed}-{index:04d}"
        if rng.random() < HOLD_SHARE:
            plate = rng.choice(PLATES)
            parameters: dict[str, Any] = {
                "steps": rng.randint(2, 4),
                "step_seconds": 0.2,
                "tag": tag,
            }
            planned.append(Planned(index, "chaos_hold", parameters, {"plate": plate}))
        else:
            wells = sorted(rng.sample(WELLS, rng.randint(1, 3)))
            parameters = {"wells": wells, "volume": 1.0, "settle_seconds": 0.5, "tag": tag}
            planned.append(Planned(index, "chaos_assay", parameters, dict(ASSAY_PINS)))
    return planned


# ------------------------------------------------------------------------------------ records


@dataclass
class Run:
    """What the harness knows of one run (from events, HTTP replies and API reads)."""

    run_id: str
    status: str
    at: float
    created: float
    planned: Planned | None = None
    error: Any = None
    updated_at: str | None = None

    @property
    def assets(self) -> frozenset[str]:
        return frozenset(self.planned.assets.values()) if self.planned else frozenset()


@dataclass(frozen=True)
class LeaseRecord:
    """One message of the lease bucket's stream."""

    seq: int
    key: str
    at: float
    op: str  # put | del | purge | marker
    run_id: str | None = None
    ttl: float | None = None  # seconds; None: the message never expires
    reason: str | None = None
    edge: str | None = None  # the edge process that claimed the lease (accepted the run)

    @property
    def live(self) -> bool:
        return self.op == "put"

    @property
    def expires(self) -> float | None:
        return None if self.ttl is None else self.at + self.ttl


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_ttl(value: str | None) -> float | None:
    """A ``Nats-TTL`` header in seconds: ``30``, ``30s``, ``1m30s``; None for none or ``never``."""
    if value is None:
        return None
    text = value.strip().lower()
    if not text or text == "never":
        return None
    if text.isdigit():
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def lease_record(msg: Msg, bucket: str = LEASE_BUCKET) -> LeaseRecord:
    """Decode one stream message of the lease bucket (delivered or fetched)."""
    meta = msg.metadata
    headers = msg.headers or {}
    key = (msg.subject or "").removeprefix(f"$KV.{bucket}.")
    seq, at = meta.sequence.stream, meta.timestamp.timestamp()
    operation = headers.get("KV-Operation")
    if operation in ("DEL", "PURGE"):
        reason = headers.get("Praxis-Force-Release-Reason")
        return LeaseRecord(seq, key, at, operation.lower(), reason=reason)
    if "Nats-Marker-Reason" in headers:
        return LeaseRecord(seq, key, at, "marker", reason=headers["Nats-Marker-Reason"])
    if not msg.data:
        return LeaseRecord(seq, key, at, "del")
    try:
        value = json.loads(msg.data)
        run_id, edge = str(value["run_id"]), value.get("edge")
    except (ValueError, KeyError, TypeError):
        run_id, edge = None, None
    ttl = parse_ttl(headers.get("Nats-TTL"))
    return LeaseRecord(seq, key, at, "put", run_id, ttl, edge=str(edge) if edge else None)


def find_overlaps(
    records: Iterable[LeaseRecord], unobserved: Iterable[tuple[int, int]] = ()
) -> list[dict[str, Any]]:
    """Every moment a key passed from one run's live lease to another run's while the first was
    still running: no tombstone or expiry marker between them and the second written before the
    first's TTL (counted from its last write) was up. A lease without a TTL (held for an
    intervention) runs until a tombstone. ``unobserved``: ranges of stream sequences deleted
    before they were read; an overlap with one of them in between is flagged (the missing message
    may have been this key's tombstone)."""
    gaps = list(unobserved)
    by_key: dict[str, list[LeaseRecord]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record)
    overlaps = []
    for key, history in sorted(by_key.items()):
        holder: LeaseRecord | None = None  # the holder's last write
        since: LeaseRecord | None = None  # its first write of this tenure
        for record in sorted(history, key=lambda r: r.seq):
            if not record.live:
                holder = since = None
                continue
            if (
                holder is not None
                and since is not None
                and (holder.expires is None or record.at < holder.expires)
            ):
                if holder.run_id == record.run_id:
                    holder = record  # a renewal: same tenure
                    continue
                between = sum(1 for lo, hi in gaps if lo < record.seq and hi > holder.seq)
                overlaps.append(
                    {
                        "key": key,
                        "held_by": holder.run_id,
                        "held_since": _iso(since.at),
                        "holder_revision": holder.seq,
                        "holder_expires_at": _iso(holder.expires) if holder.expires else None,
                        "taken_by": record.run_id,
                        "taken_at": _iso(record.at),
                        "taken_revision": record.seq,
                        "lease_left_s": (
                            round(holder.expires - record.at, 3) if holder.expires else None
                        ),
                        "unobserved_messages_between": between,
                    }
                )
            holder = since = record  # a new tenure (the key was free, or the lease had run out)
    return overlaps


def find_lapsed_handovers(records: Iterable[LeaseRecord]) -> list[dict[str, Any]]:
    """Every moment a key went to another run after a lease an edge had *claimed* (accepted
    its run) ran out, with no release or force-release in between: an asset handed on while
    the run holding it was in an unknown state. Only a tombstone (``del``) ends a claimed
    lease; an expiry (a marker, or the TTL passing) must be followed by the same run's lease,
    held for an operator."""
    by_key: dict[str, list[LeaseRecord]] = {}
    for record in records:
        by_key.setdefault(record.key, []).append(record)
    found = []
    for key, history in sorted(by_key.items()):
        claimed: LeaseRecord | None = None  # the last live write, if claimed and not ended
        for record in sorted(history, key=lambda r: r.seq):
            if record.op == "del":
                claimed = None
            elif record.live:
                if claimed is not None and record.run_id != claimed.run_id:
                    found.append(
                        {
                            "key": key,
                            "claimed_by": claimed.run_id,
                            "edge": claimed.edge,
                            "claimed_revision": claimed.seq,
                            "ran_out_at": _iso(claimed.expires) if claimed.expires else None,
                            "taken_by": record.run_id,
                            "taken_at": _iso(record.at),
                            "taken_revision": record.seq,
                        }
                    )
                claimed = record if record.edge is not None else None
    return found


def blocked_behind_interventions(runs: Iterable[Run], held: set[str]) -> set[str]:
    """Queued runs that wait, directly or behind an earlier queued run that does, for an asset
    held for a run requiring intervention (``held``: those assets' names). Those legitimately
    wait until an operator resolves the run."""
    claimed = set(held)
    blocked: set[str] = set()
    for run in sorted(runs, key=lambda r: (r.created, r.run_id)):
        if run.status == "queued" and run.assets & claimed:
            blocked.add(run.run_id)
            claimed |= run.assets
    return blocked


def _json(model: BaseModel) -> dict[str, Any]:
    """A reply as the harness keeps it: its JSON form."""
    return model.model_dump(mode="json")


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def phase_of(subject: str, event: dict[str, Any]) -> str | None:
    """The phase an orchestrator event (subject without ``praxis.evt.orchestrator.``) shows its
    run entering: ``preparing`` (accepted), ``starting`` (the protocol is called), ``running``
    (a nested step completed), ``finishing`` (the protocol function itself returned)."""
    if subject.startswith("run.preparing."):
        return "preparing"
    if subject.startswith("run.started."):
        return "starting"
    if subject.startswith("call.recorded.") and event.get("status") == "completed":
        return "running" if event.get("parent_call_id") else "finishing"
    return None


# ----------------------------------------------------------------------------------- observer


class Observer:
    """The harness's view of the system: run statuses pushed by the scheduler's events (and read
    from the API as a backstop), and the lease bucket's whole history."""

    def __init__(self, planned: list[Planned]) -> None:
        self.api: AsyncClient
        self.by_tag = {p.tag: p for p in planned}
        self.runs: dict[str, Run] = {}
        self.leases: list[LeaseRecord] = []
        self.current: dict[str, LeaseRecord] = {}  # key -> its last message
        self.next_seq = 1
        self.unobserved: list[tuple[int, int]] = []
        self.progress: list[float] = []
        self.nats_errors: Counter[str] = Counter()
        self.api_errors: Counter[str] = Counter()
        self.names: dict[str, str] = {}  # lease key -> asset name
        self._waiters: set[asyncio.Future[None]] = set()
        self._refresh_lock = asyncio.Lock()
        self._last_refresh = 0.0
        self.nc: Any = None
        self.lease_sub: Any = None
        self.supervise: Callable[[], Any] | None = None
        self.signals: dict[str, list[tuple[float, str]]] = {p: [] for p in NATS_PHASES}
        """Per phase of a run, when (arrival time) a run was seen entering it, and which."""
        self.lease_expiries: Counter[str] = Counter()  # "held" / "freed"

    # -- NATS -----------------------------------------------------------------------------
    async def connect(self, nats_url: str) -> None:
        async def on_error(exc: Exception) -> None:
            self.nats_errors[type(exc).__name__] += 1

        self.nc = await nats.connect(
            nats_url,
            name="praxis-chaos",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            error_cb=on_error,
        )
        js = self.nc.jetstream()
        self.lease_sub = await js.subscribe(
            f"$KV.{LEASE_BUCKET}.>",
            stream=LEASE_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            idle_heartbeat=1.0,
            cb=self._on_lease,
        )
        await js.subscribe(
            STATUS_SUBJECT,
            stream=EVENTS_STREAM,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            idle_heartbeat=1.0,
            cb=self._on_status,
        )
        # Live only (core subscriptions): the phases runs enter now, and lease expiries.
        await self.nc.subscribe("praxis.evt.orchestrator.>", cb=self._on_edge_event)
        await self.nc.subscribe("praxis.evt.asset.lease.expired.*", cb=self._on_expiry)

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 10)

    async def _on_lease(self, msg: Msg) -> None:
        try:
            record = lease_record(msg)
        except Exception as exc:  # never let one odd message stop the tail
            self.nats_errors[f"lease message: {type(exc).__name__}"] += 1
            return
        if record.seq < self.next_seq:
            return  # redelivered after a consumer reset
        if record.seq > self.next_seq:
            self.unobserved.append((self.next_seq, record.seq - 1))
        self.next_seq = record.seq + 1
        self.leases.append(record)
        self.current[record.key] = record
        self.notify()

    async def _on_status(self, msg: Msg) -> None:
        try:
            data = json.loads(msg.data)
            self.note(str(data["run_id"]), str(data["status"]), _epoch(data["at"]))
            if data["status"] == "pending":
                self._signal("dispatching", str(data["run_id"]))
        except (ValueError, KeyError, TypeError):
            self.nats_errors["status event"] += 1

    async def _on_edge_event(self, msg: Msg) -> None:
        """A run entering a phase on its edge: accepted, started, in its steps, returning."""
        try:
            data = json.loads(msg.data)
            subject = msg.subject.removeprefix("praxis.evt.orchestrator.")
            phase = phase_of(subject, data)
            if phase is not None:
                self._signal(phase, str(data["run_id"]))
        except (ValueError, KeyError, TypeError):
            self.nats_errors["edge event"] += 1

    async def _on_expiry(self, msg: Msg) -> None:
        with contextlib.suppress(ValueError, TypeError):
            self.lease_expiries["held" if json.loads(msg.data).get("held") else "freed"] += 1

    def _signal(self, phase: str, run_id: str) -> None:
        self.signals[phase].append((time.time(), run_id))
        self.notify()

    def entered(self, phase: str, since: float) -> tuple[float, str] | None:
        """The first run seen entering ``phase`` at or after ``since``."""
        return next(((at, run) for at, run in self.signals[phase] if at >= since), None)

    async def caught_up(self, timeout: float) -> bool:
        """Wait until the lease tail has every message the stream holds now."""
        try:
            info = await self.nc.jetstream().stream_info(LEASE_STREAM)
        except Exception as exc:
            self.nats_errors[f"stream_info: {type(exc).__name__}"] += 1
            return False
        last = info.state.last_seq
        if await self.until(lambda: self.next_seq > last, timeout):
            return True
        # The stream's last messages may be gone before the tail read them (lease messages and
        # expiry markers carry TTLs): caught up if the consumer has nothing left to deliver.
        # What was never seen is counted as unobserved, so the overlap check says so.
        try:
            pending = (await self.lease_sub.consumer_info()).num_pending
        except Exception as exc:
            self.nats_errors[f"consumer_info: {type(exc).__name__}"] += 1
            return False
        if pending or self.lease_sub.pending_msgs:
            return False
        if self.next_seq <= last:
            self.unobserved.append((self.next_seq, last))
            self.next_seq = last + 1
        return True

    def lease_holder(self, key: str, now: float) -> str | None:
        """The run holding ``key`` according to the tail (a live lease whose TTL has not run
        out), or None."""
        record = self.current.get(key)
        if record is None or not record.live:
            return None
        return record.run_id if record.expires is None or record.expires > now else None

    # -- runs -----------------------------------------------------------------------------
    def note(
        self,
        run_id: str,
        status: str,
        at: float,
        view: dict[str, Any] | None = None,
        planned: Planned | None = None,
    ) -> None:
        """Record a run's status as of ``at`` (older news than what is known is ignored)."""
        run = self.runs.get(run_id)
        if view is not None and planned is None:
            tag = (view.get("parameters") or {}).get("tag")
            planned = self.by_tag.get(tag) if isinstance(tag, str) else None
        if run is None:
            created = _epoch(view["created_at"]) if view and view.get("created_at") else at
            run = Run(run_id, status, at, created, planned)
            self.runs[run_id] = run
            if status in PROGRESS:
                self.progress.append(at)
        elif at >= run.at:
            if status != run.status and status in PROGRESS:
                self.progress.append(at)
            run.status, run.at = status, at
        if planned is not None and run.planned is None:
            run.planned = planned
        if view is not None:
            run.error = view.get("error")
            run.updated_at = view.get("updated_at")
        self.notify()

    def note_view(self, view: dict[str, Any], planned: Planned | None = None) -> None:
        self.note(
            str(view["accession_id"]),
            str(view["status"]),
            _epoch(view["updated_at"]),
            view,
            planned,
        )

    def held_for_intervention(self, now: float) -> set[str]:
        """Assets (by name) the tail shows leased to a run requiring intervention."""
        held = set()
        for key in self.current:
            holder = self.lease_holder(key, now)
            run = self.runs.get(holder) if holder else None
            if run is not None and run.status == INTERVENTION:
                held.add(self.names.get(key, key))
        return held

    def blocked(self) -> set[str]:
        return blocked_behind_interventions(
            self.runs.values(), self.held_for_intervention(time.time())
        )

    def count(self, statuses: Iterable[str]) -> int:
        wanted = set(statuses)
        return sum(1 for run in self.runs.values() if run.status in wanted)

    def active_unblocked(self) -> int:
        blocked = self.blocked()
        return sum(1 for r in self.runs.values() if r.status in ACTIVE and r.run_id not in blocked)

    def settled(self) -> int:
        return self.count(TERMINAL | {INTERVENTION})

    def progressed_since(self, moment: float) -> float | None:
        later = [at for at in self.progress if at >= moment]
        return min(later) if later else None

    # -- waiting --------------------------------------------------------------------------
    def notify(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``predicate()`` holds, re-checking on every pushed change and after every
        API read (one each ``REFRESH_EVERY`` seconds); False once ``timeout`` has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if predicate():
                return True
            now = loop.time()
            if now >= deadline:
                return False
            if now - self._last_refresh >= REFRESH_EVERY:
                await self.refresh()
                continue
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            wait = min(deadline, self._last_refresh + REFRESH_EVERY) - now
            try:
                # Not ``wait_for``: on Python 3.11 it swallows a cancellation that arrives as
                # the waiter completes, and a cancelled operator task then waited out its hour.
                await asyncio.wait({waiter}, timeout=max(wait, 0.01))
            finally:
                self._waiters.discard(waiter)
                waiter.cancel()

    async def refresh(self) -> None:
        """Read the runs that are not terminal from the API (the events' backstop), and each run
        known here as not terminal that the API no longer lists as such."""
        loop = asyncio.get_running_loop()
        async with self._refresh_lock:
            if loop.time() - self._last_refresh < REFRESH_EVERY / 4:
                return
            try:
                if self.supervise is not None:
                    await self.supervise()
                views = await self.list_runs(sorted(ACTIVE | {INTERVENTION}))
                listed = {str(v["accession_id"]) for v in views}
                for view in views:
                    self.note_view(view)
                gone = [
                    run_id
                    for run_id, run in self.runs.items()
                    if run.status not in TERMINAL and run_id not in listed
                ]
                for run_id in gone[:50]:
                    with contextlib.suppress(NotFound):
                        self.note_view(_json(await self.api.get_run(run_id)))
            except (PraxisError, ValueError, KeyError) as exc:
                self.api_errors[type(exc).__name__] += 1
            finally:
                self._last_refresh = loop.time()

    async def list_runs(self, statuses: list[str]) -> list[dict[str, Any]]:
        """Every run with one of ``statuses``, page by page; raises on an HTTP failure.

        A finished run's view carries its assets' PyLabRobot state (about 0.5 MB for an assay),
        and a page over NATS's 1 MB payload limit is refused (507): pages start small and
        halve on it. The harness lists only unfinished runs (their views are small)."""
        items: list[dict[str, Any]] = []
        offset: int | None = 0
        limit = 25
        oldest_first = SearchFilters(sort_by="created_at")
        while offset is not None:
            try:
                page = await self.api.list_runs(
                    status=statuses, filters=oldest_first, limit=limit, offset=offset
                )
            except (PayloadTooLarge, Timeout):
                if limit == 1:
                    raise
                limit //= 2
                continue
            items.extend(_json(run) for run in page.items)
            offset = calls.next_offset(page, offset)
        return items

    async def count_runs(self, status: str) -> int:
        """How many runs the API has with ``status`` (the page's total)."""
        return (await self.api.list_runs(status=[status], limit=1)).total


# ------------------------------------------------------------------------------------- harness


class Chaos:
    def __init__(self, options: ChaosOptions) -> None:
        self.options = options
        self.planned = plan_workload(options.runs, options.seed)
        chosen = options.base_dir or Path(tempfile.mkdtemp(prefix="praxis-chaos-"))
        self.base_dir = chosen.absolute()
        self.stack = Stack(
            base_dir=self.base_dir,
            fast=True,
            environ={},  # always embedded servers: the harness stops and starts them
            service_env={**SERVICE_ENV, **options.env},
        )
        self.api = self.stack.client(timeout=15.0)  # its address is the stack's once started
        self.observer = Observer(self.planned)
        self.observer.api = self.api
        self.began = time.time()
        self.started = time.time()
        self.kills: list[dict[str, Any]] = []
        self.crashes: list[dict[str, Any]] = []
        self.submitted: list[str] = []
        self.rejected: list[dict[str, Any]] = []
        self.uncertain_submissions = 0
        self.submitting = True
        self.stalled: str | None = None
        self.faulting: set[str] = set()
        self.errors: list[str] = []
        self.restarted_at: dict[str, float] = {}
        self.interventions: dict[str, dict[str, Any]] = {}
        self.killed_edges: set[str] = set()
        self.discovery: dict[str, Any] = {}
        self.last_fault: str | None = None
        self.fault_times: list[tuple[float, str]] = []

    # -- the whole thing ------------------------------------------------------------------
    async def run(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        try:
            async with asyncio.timeout(self.options.deadline):
                await self._start()
                submitter = asyncio.create_task(self._submit_all())
                operator = None
                if self.options.resolve_during:
                    operator = asyncio.create_task(self._operator())
                try:
                    await self._faults()
                    await submitter
                finally:
                    for task in (submitter, operator):
                        if task is not None and not task.done():
                            task.cancel()
                            with contextlib.suppress(asyncio.CancelledError):
                                await task
                report = await self._check()
        except TimeoutError:
            self.errors.append(f"the run passed its deadline of {self.options.deadline:.0f}s")
            report = report or self._partial_report()
        except Exception as exc:  # the harness reports, it does not crash
            self.errors.append(f"{type(exc).__name__}: {exc}")
            report = report or self._partial_report()
        finally:
            await self.observer.close()
            await self.api.aclose()
            with contextlib.suppress(Exception):
                await self.stack.stop()
        report["errors"] = self.errors
        report["ok"] = _ok(report)
        report["duration_s"] = round(time.time() - self.began, 1)
        report["workload_and_checks_s"] = round(time.time() - self.started, 1)
        report["base_dir"] = str(self.base_dir)
        text = json.dumps(report, indent=2, default=str)
        if self.base_dir.exists():
            (self.base_dir / "chaos-report.json").write_text(text + "\n")
        if report["ok"] and not self.options.keep and self.options.base_dir is None:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            report["base_dir"] = None
        return report

    async def _start(self) -> None:
        await self.stack.start()
        await self.stack.seed()
        await self.api.aclose()
        self.api = self.observer.api = self.stack.client(timeout=15.0)
        self.observer.supervise = self._supervise
        layout = await self.api.get_workcell(DEMO_WORKCELL)
        self.observer.names = {
            f"asset.{DEMO_WORKCELL}.{asset.accession_id}": asset.name for asset in layout.assets
        }
        for protocol in {p.protocol for p in self.planned}:
            if not (await self.api.list_definitions(name=protocol)).items:
                raise RuntimeError(f"protocol {protocol} was not discovered in examples/protocols")
        assert self.stack.infra is not None
        await self.observer.connect(self.stack.infra.nats_operator_url)
        self.discovery = await self._hostile_discovery()
        self.started = time.time()

    async def _hostile_discovery(self) -> dict[str, Any]:
        """``hostile_sources`` sources whose only module loops at import are registered at
        once, then a normal source: it must be discovered within ``DISCOVERY_BOUND_SECONDS``
        (the looping modules get their budget of running time each, and delay only their own
        sources). Every registration is awaited, so the workload starts on a quiet machine."""
        count = self.options.hostile_sources
        if not count:
            return {}
        folder = self.base_dir / "chaos-sources"
        hostile = [
            asyncio.create_task(
                self._register(
                    await asyncio.to_thread(_git_repo, folder / f"loops{i}", LOOPING_MODULE),
                    f"chaos-loops-{i}",
                )
            )
            for i in range(count)
        ]
        normal = await asyncio.to_thread(_git_repo, folder / "normal", NORMAL_MODULE)
        started = time.monotonic()
        outcome = await self._register(normal, "chaos-normal")
        took = time.monotonic() - started
        hostile_outcomes = await asyncio.gather(*hostile)
        return {
            "hostile_sources": count,
            "hostile_outcomes": dict(Counter(o["status"] for o in hostile_outcomes)),
            "normal_source_s": round(took, 2),
            "normal_source": outcome,
            "bound_s": DISCOVERY_BOUND_SECONDS,
        }

    async def _register(self, url: str, name: str) -> dict[str, Any]:
        call = replace(calls.register_source(name, url, kind="git"), timeout=600.0)
        try:
            source = await self.api.send(call)
        except ConnectionFailed as exc:
            return {"status": type(exc.__cause__).__name__}
        except PraxisError as exc:
            return {"http": status_of(exc), "status": str(exc.code)}
        return {"http": 201, "status": source.status}

    # -- workload -------------------------------------------------------------------------
    async def _submit_all(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.workload_timeout
        try:
            for planned in self.planned:
                room = await self.observer.until(
                    lambda: self.observer.active_unblocked() < self.options.in_flight,
                    deadline - loop.time(),
                )
                if not room:
                    self.stalled = (
                        f"submission stalled at run {planned.index} of {len(self.planned)}: "
                        f"{self.options.in_flight} runs active for {self.options.workload_timeout}s"
                    )
                    return
                await self._submit(planned)
        finally:
            self.submitting = False
            self.observer.notify()

    async def _submit(self, planned: Planned) -> None:
        """POST the run, retried while the gateway or the bus is down (bounded). A retry after
        an answer that never came may create a second run: the checks read every run the API
        knows, so such a run is checked like the others."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.recover_timeout
        delay = 0.2
        while True:
            uncertain = False
            try:
                view = await self.api.submit_run(**planned.body())
                self.submitted.append(str(view.accession_id))
                self.observer.note_view(_json(view), planned)
                return
            except ConnectionFailed as exc:
                uncertain = exc.maybe_done
                problem = type(exc.__cause__).__name__
            except PraxisError as exc:
                status = status_of(exc) or 500
                if status < 500:
                    rejected = {"index": planned.index, "status": status, "body": exc.message}
                    self.rejected.append(rejected)
                    return
                uncertain = status in (500, 504)
                problem = f"HTTP {status}"
            self.uncertain_submissions += int(uncertain)
            if loop.time() + delay > deadline:
                self.rejected.append({"index": planned.index, "status": None, "body": problem})
                return
            await asyncio.sleep(delay)  # retry back-off while the gateway is down
            delay = min(delay * 2, 2.0)

    # -- faults ---------------------------------------------------------------------------
    async def _faults(self) -> None:
        """Fault ``i`` of ``F`` once ``(i + 1) / (F + 1)`` of the runs have settled (or nothing
        is left to do, or ``spacing_timeout`` has passed): spread over the whole workload. A
        service dies while a protocol is executing; nats-server stops the moment a run enters
        the fault's phase (``nats-server@<phase>``)."""
        targets = faults(self.options.nats_phase_repeats)
        for number, target in enumerate(targets, start=1):
            threshold = max(1, round(number * self.options.runs / (len(targets) + 1)))
            await self.observer.until(
                lambda: self.observer.settled() >= threshold or not self._work_left(),  # noqa: B023
                self.options.spacing_timeout,
            )
            _, _, phase = target.partition("@")
            hit: tuple[float, str] | None = None
            if phase:
                since = time.time()
                await self.observer.until(
                    lambda: (
                        self.observer.entered(phase, since) is not None  # noqa: B023
                        or not self._work_left()
                    ),
                    self.options.spacing_timeout,
                )
                hit = self.observer.entered(phase, since)
            else:
                await self.observer.until(
                    lambda: self.observer.count({"running"}) > 0 or not self._work_left(),
                    self.options.spacing_timeout,
                )
            record = await self._inject(target)
            if phase:
                record["phase"] = phase
                record["phase_run"] = hit[1] if hit else None
                record["phase_entered_before_s"] = (
                    round(_epoch(record["at"]) - hit[0], 3) if hit else None
                )
            self.kills.append(record)

    def _work_left(self) -> bool:
        return self.submitting or self.observer.active_unblocked() > 0

    async def _inject(self, target: str) -> dict[str, Any]:
        at = time.time()
        record: dict[str, Any] = {
            "target": target,
            "action": "SIGKILL, restart" if target in SERVICES else "stop, start",
            "at": _iso(at),
            "t_s": round(at - self.started, 2),
            "runs_active": self.observer.count(ACTIVE),
            "runs_running": self.observer.count({"running"}),
            "runs_settled": self.observer.settled(),
            "ready_s": None,
            "progress_s": None,
        }
        self.faulting.add(target)
        self.last_fault = target
        self.fault_times.append((at, target))
        try:
            if target.startswith(NATS_FAULT):
                record["action"] = "stop, start"
                await self.stack.stop_nats()
                await asyncio.sleep(self.options.outage_seconds)  # the outage itself
                await self.stack.start_nats()
                record["down_s"] = round(time.time() - at, 2)
                await asyncio.gather(
                    *(self.stack.wait_ready(n, self.options.recover_timeout) for n in SERVICES)
                )
            elif target in SERVICES:
                if target == "orchestrator":
                    record["edge_instances"] = await self._edge_instances()
                    self.killed_edges.update(record["edge_instances"])
                record["exit_status"] = await self.stack.kill_service(target)
                self.stack.start_service(target, note=f"chaos: SIGKILLed at {_iso(at)}, restarted")
                await self.stack.wait_ready(target, self.options.recover_timeout)
            else:
                await self.stack.stop_postgres()
                await asyncio.sleep(self.options.outage_seconds)  # the outage itself
                await self.stack.start_postgres()
                record["down_s"] = round(time.time() - at, 2)
                await asyncio.gather(
                    *(self.stack.wait_ready(n, self.options.recover_timeout) for n in SERVICES)
                )
            ready = time.time()
            record["ready_s"] = round(ready - at, 2)
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            return record
        finally:
            self.faulting.discard(target)
        # Progress: a run recorded as running or completed once the restarted part is ready
        # (counted from then, so news the dead process sent before dying does not count).
        await self._supervise()
        progressed = await self.observer.until(
            lambda: self.observer.progressed_since(ready) is not None or not self._work_left(),
            self.options.recover_timeout,
        )
        first = self.observer.progressed_since(ready)
        if first is not None:
            record["progress_s"] = round(first - at, 2)
        elif not progressed:
            record["note"] = f"no run progressed within {self.options.recover_timeout:.0f}s"
        elif self.observer.count(ACTIVE):
            record["note"] = "nothing to progress: every active run waits behind an intervention"
        else:
            record["note"] = "nothing to progress: every run had settled"
        return record

    def _fault_before(self, moment: float) -> str | None:
        """The last fault injected at or before ``moment``."""
        before = [target for at, target in self.fault_times if at <= moment]
        return before[-1] if before else None

    async def _edge_instances(self) -> list[str]:
        """The orchestrator processes beating in the edges bucket now (``edge.<wc>.<instance>``)."""
        try:
            kv = await self.observer.nc.jetstream().key_value(EDGES_BUCKET)
            keys = await kv.keys()
        except Exception:  # no bucket, no keys: runs then cannot be told apart by edge
            return []
        return sorted(str(key).rsplit(".", 1)[-1] for key in keys)

    async def _supervise(self) -> None:
        """A service that died on its own (not one the harness is killing) is a finding; it is
        restarted, as its supervisor would, so the rest of the run still means something."""
        for name in self.stack.dead():
            if name in self.faulting or time.time() - self.restarted_at.get(name, 0.0) < 2.0:
                continue  # being killed by the harness, or restarted a moment ago (back-off)
            self.restarted_at[name] = time.time()
            service = self.stack.service(name)
            code = service.process.returncode
            self.crashes.append(
                {
                    "service": name,
                    "exit_status": code,
                    "at": _iso(time.time()),
                    "after_fault": self.last_fault,
                    "log_tail": _tail(self.base_dir / "logs" / f"{name}.log", 15),
                }
            )
            self.stack.start_service(name, note=f"chaos: exited with {code} on its own, restarted")

    # -- checks ---------------------------------------------------------------------------
    async def _check(self) -> dict[str, Any]:
        options = self.options
        observer = self.observer
        # 1. everything settles: terminal, requires_intervention, or queued behind one
        await observer.until(self._quiet, options.settle_timeout)
        before = await self._snapshot()
        stuck_before = self._stuck(before, allow_blocked=True)
        # 2. the operator resolves every intervention; the queue drains
        interventions = await self._resolve_all()
        after = await self._snapshot()
        stuck_after = self._stuck(after, allow_blocked=False)
        leases_left = [
            {
                "asset": lease.get("asset_name"),
                "run_id": lease.get("run_id"),
                "run_status": after["statuses"].get(str(lease.get("run_id"))),
                "held_for_intervention": lease.get("held_for_intervention"),
                "seconds_left": lease.get("seconds_left"),
            }
            for lease in after["locks"]
        ]
        not_ready = await self._readiness()
        # 3. the lease history, read to its end
        if not await observer.caught_up(30.0):
            self.errors.append("the lease tail did not catch up with the bucket's stream")
        overlaps = find_overlaps(observer.leases, observer.unobserved)
        for overlap in overlaps:
            overlap["asset"] = observer.names.get(overlap["key"], overlap["key"])
            for role in ("held_by", "taken_by"):
                overlap[f"{role}_status"] = await self._status(str(overlap[role]))
        handovers = find_lapsed_handovers(observer.leases)
        for handover in handovers:
            handover["asset"] = observer.names.get(handover["key"], handover["key"])
        stuck = [*stuck_before, *stuck_after]
        live_edge = [dict(r) for r in interventions["runs"] if r.get("edge_was_killed") is False]
        failed_by_faults = [
            {"run_id": run.run_id, "status": run.status, "error": run.error}
            for run in observer.runs.values()
            if run.status in ("failed", "cancelled") and run.run_id not in self.interventions
        ]
        self._add_log_lines(stuck[:10] + overlaps[:5] + live_edge[:5] + failed_by_faults[:5])
        return {
            "runs_planned": len(self.planned),
            "runs_submitted": len(self.submitted),
            "runs_seen": sum(after["counts"].values()),
            "in_flight": options.in_flight,
            "seed": options.seed,
            "service_env": {**SERVICE_ENV, **options.env},
            "by_status": after["counts"],
            "by_status_before_resolve": before["counts"],
            "kills": self.kills,
            "interventions": interventions,
            "edge_loss": self._edge_loss(interventions),
            "nats_phases": [k for k in self.kills if k.get("phase")],
            "discovery": self.discovery,
            "violations": {
                "overlaps": overlaps,
                "handed_on_while_unknown": handovers,
                "failed_by_faults": failed_by_faults,
                "discovery_starved": self._discovery_problems(),
                "stuck": stuck,
                "not_ready": not_ready,
                "leases_left": leases_left,
                "crashed": self.crashes,
                "interventions_on_live_edge": live_edge,
                "submission": self._submission_problems(),
                "api_unreadable": [s for s in (before, after) if s.get("error")],
                "audit_trail": await self._audit_problems(),
            },
            "lease_history": {
                "messages": len(observer.leases),
                "keys": len({r.key for r in observer.leases}),
                "unobserved_messages": sum(hi - lo + 1 for lo, hi in observer.unobserved),
            },
            "dead_letters": await self._dead_letters(),
            "uncertain_submissions": self.uncertain_submissions,
            "nats_client_errors": dict(observer.nats_errors),
            "api_errors": dict(observer.api_errors),
        }

    def _edge_loss(self, interventions: dict[str, Any]) -> dict[str, Any]:
        """How runs on a killed edge came to an operator: their claimed leases ran out first
        (``lease_lapsed``) or the edge was declared lost (``edge_lost``)."""
        env = {**SERVICE_ENV, **self.options.env}
        detection = float(env["EDGE_HEARTBEAT_TTL_SECONDS"]) + float(env["EDGE_GRACE_SECONDS"])
        codes = Counter((r.get("error") or {}).get("code") or "none" for r in interventions["runs"])
        return {
            "lease_ttl_s": float(env["ASSET_LOCK_TIMEOUT_SECONDS"]),
            "edge_loss_detection_s": detection,
            "leases_ran_out": dict(self.observer.lease_expiries),
            "interventions_by_cause": dict(codes),
        }

    def _discovery_problems(self) -> list[dict[str, Any]]:
        found = self.discovery
        if not found:
            return []
        normal = found.get("normal_source") or {}
        if normal.get("status") == "synced" and found["normal_source_s"] < found["bound_s"]:
            return []
        return [{"normal_source": normal, "took_s": found.get("normal_source_s")}]

    def _quiet(self) -> bool:
        """Every run is terminal, requires intervention, or is queued behind one; every planned
        run was submitted (or given up on)."""
        if self.submitting:
            return False
        blocked = self.observer.blocked()
        return all(
            r.status not in ACTIVE or r.run_id in blocked for r in self.observer.runs.values()
        )

    def _partial_report(self) -> dict[str, Any]:
        return {
            "runs_planned": len(self.planned),
            "runs_submitted": len(self.submitted),
            "by_status": dict(Counter(r.status for r in self.observer.runs.values())),
            "kills": self.kills,
            "violations": {"crashed": self.crashes, "submission": self._submission_problems()},
        }

    def _submission_problems(self) -> list[Any]:
        return [*([self.stalled] if self.stalled else []), *self.rejected]

    async def _snapshot(self) -> dict[str, Any]:
        """From the HTTP API (retried while it is down): every unfinished run, how many runs
        have each status, every live lease and the status of each lease's holder."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.recover_timeout
        error = ""
        while loop.time() < deadline:
            try:
                views = await self.observer.list_runs(sorted(ACTIVE | {INTERVENTION}))
                counts = {s: await self.observer.count_runs(s) for s in STATUSES}
                locks = [_json(lease) for lease in (await self.api.list_locks()).items]
                for view in views:
                    self.observer.note_view(view)
                runs = {str(v["accession_id"]): v for v in views}
                statuses = {run_id: str(v["status"]) for run_id, v in runs.items()}
                for lock in locks:
                    holder = str(lock.get("run_id"))
                    if holder not in statuses:
                        try:
                            statuses[holder] = str((await self.api.get_run(holder)).status)
                        except NotFound as exc:
                            statuses[holder] = f"HTTP {status_of(exc)}"
                return {
                    "runs": runs,
                    "counts": {s: n for s, n in counts.items() if n},
                    "locks": locks,
                    "statuses": statuses,
                }
            except (PraxisError, ValueError, KeyError) as exc:
                error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(1.0)  # retry back-off while the API is down
        return {"runs": {}, "counts": {}, "locks": [], "statuses": {}, "error": error}

    def _stuck(self, snapshot: dict[str, Any], *, allow_blocked: bool) -> list[dict[str, Any]]:
        views = snapshot["runs"]
        runs = [self.observer.runs[i] for i in views if i in self.observer.runs]
        statuses = snapshot["statuses"]
        holders = {
            str(lock.get("asset_name")): str(lock.get("run_id")) for lock in snapshot["locks"]
        }
        held = {asset for asset, run_id in holders.items() if statuses.get(run_id) == INTERVENTION}
        blocked = blocked_behind_interventions(runs, held) if allow_blocked else set()
        stuck = []
        for run_id, view in views.items():
            status = view["status"]
            if status in TERMINAL or (allow_blocked and status == INTERVENTION):
                continue
            if run_id in blocked:
                continue
            run = self.observer.runs.get(run_id)
            waiting_on = {
                asset: {"run_id": holder, "status": statuses.get(holder)}
                for asset in sorted(run.assets if run else ())
                if (holder := holders.get(asset)) and holder != run_id
            }
            stuck.append(
                {
                    "run_id": run_id,
                    "status": status,
                    "phase": "before_resolve" if allow_blocked else "after_resolve",
                    "protocol": view.get("protocol_name"),
                    "tag": (view.get("parameters") or {}).get("tag"),
                    "updated_at": view.get("updated_at"),
                    "error": view.get("error"),
                    "waiting_on": waiting_on,
                }
            )
        return stuck

    def _new_interventions(self) -> list[Run]:
        """Runs requiring intervention that no operator has resolved yet: never seen, or seen
        by an operator task that was stopped before its resolve was answered."""
        return [
            r
            for r in self.observer.runs.values()
            if r.status == INTERVENTION and "resolved" not in self.interventions.get(r.run_id, {})
        ]

    async def _intervene(self, phase: str) -> None:
        """Resolve, as an operator would, every run that requires intervention and was not seen
        yet; note which edge it was on and why it needed an operator."""
        for run in self._new_interventions():
            if run.run_id in self.interventions:  # an earlier operator task was interrupted
                record = self.interventions[run.run_id]
                outcome = await self._resolve(run.run_id)
                record["resolved"] = outcome is None or "ended_without_operator" in outcome
                record.update(outcome or {})
                continue
            record = {
                "run_id": run.run_id,
                "phase": phase,
                "since": _iso(run.at),
                "seen_at": _iso(time.time()),
                "after_fault": self._fault_before(run.at),
            }
            self.interventions[run.run_id] = record
            with contextlib.suppress(PraxisError, ValueError):
                view = _json(await self.api.get_run(run.run_id))
                record["tag"] = (view.get("parameters") or {}).get("tag")
                record["edge_instance"] = view.get("edge_instance")
                record["error"] = view.get("error")
            outcome = await self._resolve(run.run_id)
            record["resolved"] = outcome is None or "ended_without_operator" in outcome
            record.update(outcome or {})

    async def _operator(self) -> None:
        """``resolve_during``: an operator resolving interventions as they appear, so the
        workload behind them flows on through the remaining faults."""
        while True:
            await self.observer.until(lambda: bool(self._new_interventions()), 3600.0)
            await self._intervene("during workload")

    async def _resolve_all(self) -> dict[str, Any]:
        """Resolve every run requiring intervention (and any that comes to require it while the
        queue drains), then wait (bounded) for every run to be terminal."""
        observer = self.observer
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.drain_timeout

        def done() -> bool:
            return all(r.status in TERMINAL for r in observer.runs.values())

        while True:
            await self._intervene("after workload")
            if done() or loop.time() >= deadline:
                break
            await observer.until(
                lambda: done() or bool(self._new_interventions()),
                max(0.0, deadline - loop.time()),
            )
        for run_id, record in self.interventions.items():
            run = observer.runs.get(run_id)
            if "resolved" not in record and run is not None and run.status in TERMINAL:
                # The operator task was stopped after sending its resolve, before the answer.
                record["resolved"] = True
                record["ended_as"] = run.status
        records = list(self.interventions.values())
        for record in records:
            edge = record.get("edge_instance")
            known = bool(edge and self.killed_edges)
            record["edge_was_killed"] = (edge in self.killed_edges) if known else None
        return {
            "found": len(records),
            "resolved": sum(1 for r in records if r.get("resolved")),
            "ended_without_operator": sum(1 for r in records if "ended_without_operator" in r),
            "failed": [r for r in records if not r.get("resolved")],
            "runs": records,
        }

    async def _resolve(self, run_id: str) -> dict[str, Any] | None:
        """POST the resolve action (retried while the API is down); None when accepted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.recover_timeout
        delay = 0.2
        while True:
            try:
                view = await self.api.resolve_run(run_id, "failed", reason=RESOLVE_REASON)
                self.observer.note_view(_json(view))
                return None
            except ConnectionFailed as exc:
                if loop.time() + delay > deadline:
                    return {"http_status": None, "body": type(exc.__cause__).__name__}
            except PraxisError as exc:
                code = status_of(exc) or 500
                if code == 409:  # it may have ended on its own meanwhile
                    status = await self._status(run_id)
                    if status in TERMINAL:
                        return {"ended_without_operator": status}
                if code < 500 or loop.time() + delay > deadline:
                    return {"http_status": code, "body": exc.message[:500]}
            await asyncio.sleep(delay)  # retry back-off while the gateway is down
            delay = min(delay * 2, 2.0)

    async def _readiness(self) -> list[dict[str, Any]]:
        """Every service answers its readiness probe (each waited for, bounded)."""
        await self._supervise()
        results = await asyncio.gather(
            *(self.stack.wait_ready(n, 30.0) for n in SERVICES), return_exceptions=True
        )
        return [
            {"service": name, "error": f"{type(result).__name__}: {result}"}
            for name, result in zip(SERVICES, results, strict=True)
            if isinstance(result, BaseException)
        ]

    async def _status(self, run_id: str) -> str | None:
        """One run's status from the API (None if it cannot be read)."""
        try:
            return str((await self.api.get_run(run_id)).status)
        except PraxisError:
            return None

    async def _audit_problems(self) -> list[dict[str, Any]]:
        """The audit trail (killed with the rest) holds every event of the stream once: every
        sequence up to the stream's last, none twice."""
        try:
            info = await self.observer.nc.jetstream().stream_info("PRAXIS_EVENTS")
            last, messages = info.state.last_seq, info.state.messages
            await self.api.list_events(limit=1, stored_through=last)  # caught up, or 503
            assert self.stack.infra is not None
            url = self.stack.infra.database_url_for("audit")
            assert url is not None
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            try:
                row = await conn.fetchrow(
                    "SELECT count(*) AS stored, count(DISTINCT (epoch, stream_seq)) AS distinct_"
                    " FROM audit.events WHERE stream_seq <= $1",
                    last,
                )
            finally:
                await conn.close()
        except Exception as exc:
            return [{"error": f"{type(exc).__name__}: {exc}"}]
        assert row is not None
        if row["stored"] == row["distinct_"] == messages:
            return []
        return [{"stream": messages, "stored": row["stored"], "distinct": row["distinct_"]}]

    async def _dead_letters(self) -> dict[str, Any]:
        """How many messages were dead-lettered, with the first few subjects and reasons."""
        try:
            js = self.observer.nc.jetstream()
            info = await js.stream_info(DEAD_LETTER_STREAM)
            first, last = info.state.first_seq, info.state.last_seq
            samples = []
            for seq in range(first, min(last, first + 9) + 1) if info.state.messages else ():
                try:
                    msg = await js.get_msg(DEAD_LETTER_STREAM, seq)
                except Exception:  # deleted meanwhile
                    continue
                reason = (msg.headers or {}).get("Praxis-Dead-Letter-Reason", "")
                samples.append({"subject": msg.subject, "reason": reason[:300]})
            return {"count": info.state.messages, "first": samples}
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _add_log_lines(self, items: list[dict[str, Any]]) -> None:
        """The last lines each service logged about the runs in ``items`` (bug reports)."""
        logs = {name: (self.base_dir / "logs" / f"{name}.log") for name in SERVICES}
        texts = {}
        for name, path in logs.items():
            with contextlib.suppress(OSError):
                texts[name] = path.read_text(errors="replace").splitlines()
        for item in items:
            keys = ("run_id", "held_by", "taken_by", "edge_instance")
            ids = [str(item[k]) for k in keys if item.get(k)]
            lines: dict[str, list[str]] = {}
            for name, text in texts.items():
                found = [line[:400] for line in text if any(i in line for i in ids)]
                if found:
                    lines[name] = found[-4:]
            item["log"] = lines


def _git_repo(path: Path, module: str) -> str:
    """A git repository with one protocol module, committed (a source to register)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "protocols.py").write_text(module)
    git = ["git", "-C", str(path), "-c", "user.name=Praxis", "-c", "user.email=praxis@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "chaos"], check=True)
    return str(path)


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return [line[:400] for line in path.read_text(errors="replace").splitlines()[-lines:]]
    except OSError:
        return []


def _ok(report: dict[str, Any]) -> bool:
    violations = report.get("violations") or {}
    return not report.get("errors") and bool(violations) and not any(violations.values())


async def run_chaos(options: ChaosOptions) -> dict[str, Any]:
    """Run the harness; returns the report (``report["ok"]``: no violation, no harness error)."""
    return await Chaos(options).run()


async def chaos(args: Any) -> int:
    """``python -m praxis_devstack chaos``: print the JSON report; 0 only if it found nothing."""
    env = dict(item.split("=", 1) for item in args.env)
    options = ChaosOptions(
        runs=args.runs,
        in_flight=args.in_flight,
        seed=args.seed,
        base_dir=Path(args.base_dir) if args.base_dir else None,
        keep=args.keep,
        outage_seconds=args.outage,
        recover_timeout=args.recover_timeout,
        settle_timeout=args.settle_timeout,
        drain_timeout=args.drain_timeout,
        env=env,
        resolve_during=args.resolve_during,
        nats_phase_repeats=args.nats_phase_repeats,
        hostile_sources=args.hostile_sources,
    )
    report = await run_chaos(options)
    text = json.dumps(report, indent=2, default=str)
    print(text, flush=True)
    if args.output:
        await asyncio.to_thread(Path(args.output).write_text, text + "\n")
    return 0 if report["ok"] else 1


__all__ = [
    "FAULTS",
    "SERVICE_ENV",
    "ChaosOptions",
    "LeaseRecord",
    "Planned",
    "blocked_behind_interventions",
    "find_lapsed_handovers",
    "find_overlaps",
    "parse_ttl",
    "phase_of",
    "plan_workload",
    "run_chaos",
]
