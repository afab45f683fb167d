"""Reservations: bind a run's requirements, lease them all or none, wait without polling.

Fast path: a request that can be granted now costs one concurrent round of compare-and-set
writes to the lease bucket and one event; nothing is written to PostgreSQL (the bucket is the
source of truth for who holds what, and each lease records its requirement, so bindings can be
rebuilt from it). A request that must wait is stored, so a restarted asset-manager resumes it,
and is retried when the bucket's watcher reports one of the assets it wants released, expired or
force-released, or when a waiter ahead of it leaves the queue.

Expiry is learnt two ways: the server's expiry marker (pushed by the watcher), and a deadline per
live lease (``Deadlines``) for the keys whose expiry the server does not mark (any key with an
earlier revision). Both end in ``_expired``, once per lease. A lease an edge had claimed
(``Holder.claimed``: the edge accepted the run) never expires into freedom: the state of its run
is unknown, so the lease is written back held for an operator (``_lapsed``) and the mirror shows
it busy throughout, so no grant can slip in between.

Every change to a stored request commits together with the event it causes, through the unit
of work (``_store``, ``_settle``): a crash between the two can lose neither. Events that change
no row (a grant on the fast path, a refusal, the release of leases alone) are published
directly: the command that caused them is acknowledged only after, so a crash before the publish
redelivers it, and the redelivery finds the same state and says the same thing again.

Commands for one run are handled one at a time (``_exclusive``): a run's reserve, release and
hold reach different consumers, JetStream may deliver a command twice, and copies may be handled
at the same time; the later command then finds the earlier one's outcome.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert

from praxis_asset_manager.inventory import Inventory, Site
from praxis_asset_manager.lease_index import Change, Deadlines, LeaseIndex
from praxis_asset_manager.matching import Binding, Match, explained, match
from praxis_asset_manager.orm import ReservationRow
from praxis_asset_manager.waiters import Waiter, WaitQueue
from praxis_contracts.assets import (
    AssetBinding,
    AssetsHeld,
    AssetsReleased,
    AssetsReserved,
    AssetStatus,
    CheckReservation,
    HoldAssets,
    Lease,
    LeaseExpired,
    LeaseForceReleased,
    LeaseList,
    ReleaseAssets,
    RequirementOptions,
    ReservationCheck,
    ReservationFailed,
    ReservationWaiting,
    ReserveAssets,
    WaitReason,
    Workcell,
    WorkcellLayout,
    WorkcellMatch,
)
from praxis_contracts.base import Event
from praxis_contracts.errors import (
    AssetsUnavailable,
    DeadlinePassed,
    NoMatchingAssets,
    NotFound,
    PraxisError,
    Timeout,
)
from praxis_runtime.bus import INFRA_RETRY_CAP, is_infrastructure, retry_delay
from praxis_runtime.db import Database
from praxis_runtime.leases import (
    Claim,
    Holder,
    KeyState,
    LeaseConflict,
    LeaseStore,
    decode_holder,
    lease_key,
)
from praxis_runtime.logging import system_context
from praxis_runtime.metrics import (
    LEASE_GRANTS,
    RESERVATION_OLDEST_SECONDS,
    RESERVATION_QUEUE,
    RESERVATION_WAIT_SECONDS,
)
from praxis_runtime.outbox import SqlUnitOfWork
from praxis_runtime.recent import RecentIds

log = logging.getLogger(__name__)

Publish = Callable[..., Awaitable[object]]
StatusUpdate = tuple[uuid.UUID, AssetStatus, str, uuid.UUID | None]
StatusSink = Callable[[list[StatusUpdate]], None]
Plan = tuple[WorkcellLayout, list[Binding]]
Unit = Callable[[], SqlUnitOfWork]


DECIDING_RECHECK = 0.05
"""A waiter's time limit that falls while its grant commits is looked at again this soon."""


def now() -> datetime:
    return datetime.now(UTC)


class Placement(Protocol):
    """Where orchestrators accept runs (``edges.EdgeWatch``)."""

    def accepting(self, workcell: str) -> bool: ...


@dataclass(frozen=True)
class Planned:
    """What planning a request found: a grant to make now (``plan``), or why it waits."""

    plan: Plan | None
    wanted: frozenset[uuid.UUID]
    reason: WaitReason
    hosts: list[Workcell]


def _why_not(hosts: list[Workcell], is_open: Callable[[Workcell], bool]) -> WaitReason:
    """Why a request that could be hosted by ``hosts`` is not granted now."""
    if any(is_open(w) for w in hosts) or not hosts:
        return WaitReason.ASSETS_BUSY
    if all(w.drained for w in hosts):
        return WaitReason.WORKCELL_DRAINED
    return WaitReason.WAITING_FOR_EDGE


class Reservations:
    def __init__(
        self,
        db: Database,
        inventory: Inventory,
        leases: LeaseStore,
        default_ttl: int,
        publish: Publish,
        unit: Unit,
        status: StatusSink | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.placement = placement
        """Which workcells have an orchestrator accepting runs (None: place on any)."""
        self.db = db
        self.inventory = inventory
        self.leases = leases
        self.default_ttl = default_ttl
        self.publish = publish
        """Events that change no row (see the module's docstring)."""
        self.unit = unit
        """A stored request's changes and their events, committed together."""
        self.status: StatusSink = status or (lambda _: None)
        self.index = LeaseIndex()
        self.deadlines = Deadlines(self._deadline_passed)
        self.queue = WaitQueue()
        self._busy: dict[uuid.UUID, asyncio.Event] = {}  # runs with a command being handled
        self._serving = asyncio.Lock()
        self._freed: set[uuid.UUID] = set()  # freed by others, not yet served
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retries: set[asyncio.TimerHandle] = set()  # serves to try again (NATS failed)
        # Runs released in this process's lifetime: a late duplicate ReserveAssets (a
        # redelivery) must not lease again. After a restart the scheduler covers the gap: it
        # releases any grant to a run that is no longer queued.
        self._released = RecentIds()
        # Waiters whose outcome (a grant from the queue, a failure) is being committed: the
        # commit is awaited with the waiter still queued, and nothing else may decide it
        # meanwhile (a waiter failing at its time limit was also granted, and held its leases).
        self._deciding: set[uuid.UUID] = set()
        self._gauged: set[str] = set()  # workcells whose queue gauges were set
        # Runs submitted to start later (``not_before``): not waiters (they must not hold back
        # runs queued behind them), each with the timer that plans it when due.
        self._deferred: dict[uuid.UUID, asyncio.TimerHandle] = {}

    def _exclusive(self, run_id: uuid.UUID) -> _Turn:
        """One command of a run at a time, so the later one finds the earlier one's outcome.

        A run's commands reach different consumers, and a command may be delivered twice; each
        handler reads the mirror, then writes the bucket. Handled together, a ReleaseAssets
        found nothing to release while the grant it should end was being written, and the run
        kept its leases (reproduced in ``test_idempotent_consumers``); a second copy of a
        ReserveAssets could take the first copy's half-mirrored grant for an interrupted
        attempt and release it."""
        return _Turn(self._busy, run_id)

    def _mirror(self, key: str, state: KeyState) -> Change | None:
        """Record a key's state in the mirror and keep its expiry deadline in step."""
        change = self.index.apply(key, state)
        if change is not None:
            self.deadlines.track(key, change.current)
        return change

    # -- requests -----------------------------------------------------------------------------
    async def request(self, cmd: ReserveAssets) -> None:
        """Grant now, fail (nothing could ever match), or queue the request as a waiter."""
        async with self._exclusive(cmd.run_id):
            await self._request(cmd)

    async def _request(self, cmd: ReserveAssets, *, stored: bool = False) -> None:
        """``stored``: the request has a row (a deferred one come due); every outcome settles
        it in the same commit as the event that announces it."""
        run_id = cmd.run_id
        if run_id in self.queue or run_id in self._deferred or run_id in self._released:
            return  # a redelivered command for a run that already waits, or already ended
        held = self.index.held_by(run_id)
        if held and await self._reannounce(cmd, held, stored=stored):
            return  # a redelivered command for a granted run: the same answer again
        if held:  # a partial set left by an interrupted attempt: never hold while waiting
            await self._release_keys(run_id, held)
        if cmd.deadline is not None and now() >= cmd.deadline:
            await self._fail(cmd, _deadline_passed(cmd), stored=stored)
            return
        try:
            planned = await self._plan(cmd)  # a run that could never be placed fails now
        except PraxisError as exc:
            await self._fail(cmd, exc, stored=stored)
            return
        if cmd.not_before is not None and now() < cmd.not_before:
            await self._defer(cmd, now(), persist=True)
            return
        ahead = self.queue.ahead_of((-cmd.priority, sys.maxsize), planned.wanted)  # after all
        if (
            planned.plan is not None
            and not ahead
            and await self._grant(cmd, planned.plan, stored=stored)
        ):
            return
        if cmd.immediate:
            await self._refuse(cmd, planned, ahead, stored=stored)
            return
        await self._wait(cmd, planned, now(), persist=True)

    async def _say(self, run_id: uuid.UUID, event: Event, settle: str | None) -> None:
        """Announce ``event``; with ``settle``, commit it with the stored request's new status
        (the unit of work's outbox publishes it), else publish it now."""
        if settle is None:
            await self.publish(event)
        else:
            await self._settle(run_id, settle, event)

    async def _refuse(
        self, cmd: ReserveAssets, planned: Planned, ahead: list[uuid.UUID], *, stored: bool
    ) -> None:
        """An immediate run that cannot be placed now: failed, naming what stands in its way;
        it never waits (nothing is stored, nothing is held)."""
        holders = {h.run_id for a in planned.wanted if (h := self.index.holder(a)) is not None}
        holders.discard(cmd.run_id)
        blocked_by = sorted({str(r) for r in holders | set(ahead)})
        closed = [w.name for w in planned.hosts if not self._open(w)]
        if planned.reason == WaitReason.ASSETS_BUSY:
            said = f"held or queued for by run(s) {', '.join(blocked_by)}" if blocked_by else ""
            message = f"the assets this run needs are not free now: {said or 'busy'}"
        else:
            message = f"no workcell can take the run now ({planned.reason}: {', '.join(closed)})"
        error = AssetsUnavailable(
            message, reason=str(planned.reason), blocked_by=blocked_by, workcells=closed
        )
        event = ReservationFailed(run_id=cmd.run_id, error=error.to_reply())
        await self._say(cmd.run_id, event, "failed" if stored else None)
        self._released.add(cmd.run_id)  # a redelivered copy must not grant it after all

    async def _defer(self, cmd: ReserveAssets, since: datetime, *, persist: bool) -> None:
        """Hold the request, planning nothing, until its ``not_before``; stored so that a
        restart keeps the appointment."""
        assert cmd.not_before is not None
        run_id = cmd.run_id
        if persist:
            waiting = ReservationWaiting(run_id=run_id, blocked_by=[], reason=WaitReason.NOT_BEFORE)
            await self._store(cmd, since, "deferred", waiting)
        delay = max(0.0, (cmd.not_before - now()).total_seconds())
        self._deferred[run_id] = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._due(run_id, cmd))
        )

    async def _store(
        self, cmd: ReserveAssets, since: datetime, status: str, event: ReservationWaiting
    ) -> None:
        """Keep the request in PostgreSQL (a restart reloads it, ``resume``) and announce
        ``event`` in the same commit. A row already there (the request was deferred) keeps its
        time and takes the new status."""
        async with self.unit() as uow:
            row = {
                "run_id": cmd.run_id,
                "request": cmd.model_dump(mode="json"),
                "status": status,
                "priority": cmd.priority,
                "bindings": [],
                "created_at": since,
            }
            stmt = insert(ReservationRow).values(**row)
            await uow.session.execute(
                stmt.on_conflict_do_update(index_elements=["run_id"], set_={"status": status})
            )
            uow.emit(event)

    async def _due(self, run_id: uuid.UUID, cmd: ReserveAssets) -> None:
        """A deferred request's ``not_before`` came: planned as if it arrived now."""
        async with self._exclusive(run_id):
            if self._deferred.pop(run_id, None) is None:
                return  # released meanwhile
            try:  # its outcome settles the row: a restart no longer defers it
                await self._request(cmd.model_copy(update={"not_before": None}), stored=True)
            except Exception:
                log.exception("planning run %s at its not_before failed; retried", run_id)
                self._defer_again(run_id, cmd)

    def _defer_again(self, run_id: uuid.UUID, cmd: ReserveAssets) -> None:
        self._deferred[run_id] = asyncio.get_running_loop().call_later(
            INFRA_RETRY_CAP, lambda: self._spawn(self._due(run_id, cmd))
        )

    def _open(self, workcell: Workcell) -> bool:
        """Whether a run may be placed on ``workcell`` now: not drained, and an orchestrator
        of it accepts runs."""
        if workcell.drained:
            return False
        return self.placement is None or self.placement.accepting(workcell.name)

    async def _plan(self, cmd: ReserveAssets) -> Planned:
        """A grantable binding now on an open workcell (or None and why not), and every asset
        the request could use anywhere."""
        if cmd.workcell:
            sites = [await self.inventory.site(cmd.workcell)]
        else:
            sites = await self.inventory.sites()

        def is_busy(asset_id: uuid.UUID) -> bool:
            holder = self.index.holder(asset_id)
            return holder is not None and holder.run_id != cmd.run_id

        plan: Plan | None = None
        wanted: set[uuid.UUID] = set()
        hosts: list[Workcell] = []
        error: PraxisError | None = NoMatchingAssets("there is no workcell to run on")
        for site in sites:
            layout = site.layout
            try:
                found = match(
                    cmd.requirements,
                    layout.assets,
                    cmd.pins,
                    cmd.properties,
                    site.by_ref,
                    held=is_busy,
                )
            except NoMatchingAssets as exc:
                error = error and exc
                continue
            error = None  # this workcell could host the run (a run may need no assets at all)
            wanted |= found.wanted
            hosts.append(layout.workcell)
            closed = plan is not None or not self._open(layout.workcell)
            if not closed and (bindings := found.now(is_busy)) is not None:
                plan = (layout, bindings)
        if error is not None:
            raise error
        return Planned(plan, frozenset(wanted), _why_not(hosts, self._open), hosts)

    async def check(self, query: CheckReservation) -> ReservationCheck:
        """Where the request could be granted once its assets are free; ``NoMatchingAssets``
        naming the workcell, requirement or pin at fault if it never could. Leases nothing and
        ignores who holds what: a busy asset is a reason to wait, not to refuse."""
        if query.workcell:
            try:
                sites = [await self.inventory.site(query.workcell)]
            except NotFound as exc:
                raise NoMatchingAssets(
                    f"workcell {query.workcell!r} not found", workcell=query.workcell
                ) from exc
        else:
            sites = await self.inventory.sites()
        hosts: list[WorkcellMatch] = []
        refusals: dict[str, NoMatchingAssets] = {}
        for site in sites:
            try:
                found = match(
                    query.requirements,
                    site.layout.assets,
                    query.pins,
                    query.properties,
                    site.by_ref,
                    held=lambda asset_id: self.index.holder(asset_id) is not None,
                )
            except NoMatchingAssets as exc:
                refusals[site.layout.workcell.name] = exc
                continue
            hosts.append(_workcell_match(site, found))
        if not hosts:
            raise _nowhere(refusals)
        return ReservationCheck(workcells=hosts)

    async def _grant(self, cmd: ReserveAssets, plan: Plan, *, stored: bool) -> bool:
        """Lease the plan's assets all or none; announce the grant (settling a stored request
        with it). False if another writer took one first."""
        layout, bindings = plan
        claims = [Claim(b.asset.accession_id, b.requirement.name) for b in bindings]
        try:
            states = await self.leases.acquire_all(
                cmd.run_id,
                claims,
                cmd.ttl_seconds or self.default_ttl,
                workcell=layout.workcell.name,
                workcell_id=layout.workcell.accession_id,
                known=self.index.states,
            )
        except LeaseConflict as exc:
            log.debug("run %s must wait: %s taken", cmd.run_id, exc)
            return False
        workcell = layout.workcell.name
        for asset_id, state in states.items():
            self._mirror(lease_key(workcell, asset_id), state)
        granted = _in_order(
            cmd, [_binding(workcell, b, states[b.asset.accession_id]) for b in bindings]
        )
        # Queued before the grant is announced: once it is out, the run may start at once, and
        # its RunStarted (in use) must not be overtaken by this change (seen in tests: the
        # assets of a running run were left "reserved").
        reason = f"reserved for run {cmd.run_id}"
        self.status([(b.asset_id, AssetStatus.RESERVED, reason, cmd.run_id) for b in granted])
        await self._announce_grant(cmd, layout, granted, stored=stored)
        LEASE_GRANTS.labels("queued" if stored else "fast").inc()
        return True

    async def _announce_grant(
        self,
        cmd: ReserveAssets,
        layout: WorkcellLayout,
        bindings: list[AssetBinding],
        *,
        stored: bool,
    ) -> None:
        """``AssetsReserved``; a stored request is settled ``granted`` with it."""
        event = AssetsReserved(
            run_id=cmd.run_id,
            workcell_id=layout.workcell.accession_id,
            workcell_name=layout.workcell.name,
            bindings=bindings,
        )
        await self._say(cmd.run_id, event, "granted" if stored else None)

    async def _reannounce(
        self, cmd: ReserveAssets, held: dict[str, KeyState], *, stored: bool = False
    ) -> bool:
        holders = [s.holder for s in held.values() if s.holder is not None]
        needed = {r.name for r in cmd.requirements if not r.optional}
        if not needed <= {h.requirement for h in holders} or not holders:
            return False
        workcell_id = holders[0].workcell_id
        layout = await self.inventory.layout(str(workcell_id))
        assets = {a.accession_id: a for a in layout.assets}
        held_by = {h.asset_id: state for state in held.values() if (h := state.holder) is not None}
        found = explained(
            [
                Binding(_requirement(cmd, h.requirement), assets[h.asset_id])
                for state in held.values()
                if (h := state.holder) is not None
            ],
            {a.accession_id: a.parent_id for a in layout.assets},
            cmd.pins,
        )
        bindings = _in_order(
            cmd,
            [_binding(layout.workcell.name, b, held_by[b.asset.accession_id]) for b in found],
        )
        await self._announce_grant(cmd, layout, bindings, stored=stored)
        return True

    # -- waiting ------------------------------------------------------------------------------
    async def _wait(
        self, cmd: ReserveAssets, planned: Planned, since: datetime, *, persist: bool
    ) -> Waiter:
        waiter = self.queue.add(cmd, since, planned.wanted)
        if persist:  # stored with its first ReservationWaiting, or not queued at all
            try:
                await self._store(cmd, since, "waiting", self._waiting(waiter, planned))
            except BaseException:
                self.queue.remove(cmd.run_id)
                raise
        else:
            await self._tell_waiting(waiter, planned)
        limits = []
        if cmd.wait_timeout_seconds is not None:
            limits.append(cmd.wait_timeout_seconds - (now() - since).total_seconds())
        if cmd.deadline is not None:
            limits.append((cmd.deadline - now()).total_seconds())
        if limits:
            left = min(limits)
            loop = asyncio.get_running_loop()
            run_id = cmd.run_id  # the coroutine is made when the timer fires, not before
            waiter.timer = loop.call_later(
                max(0.0, left), lambda: self._spawn(self._time_out(run_id))
            )
        return waiter

    async def _tell_waiting(self, waiter: Waiter, planned: Planned) -> None:
        """``ReservationWaiting``, once per reason a run waits for (it says why)."""
        if waiter.reason != planned.reason:
            await self.publish(self._waiting(waiter, planned))

    def _waiting(self, waiter: Waiter, planned: Planned) -> ReservationWaiting:
        """What ``waiter`` waits for now (and note it as said)."""
        waiter.reason = planned.reason
        wanted = waiter.wanted
        holders = {h.run_id for a in wanted if (h := self.index.holder(a)) is not None}
        blocked_by = sorted(holders | set(self.queue.ahead_of(waiter.order, wanted)), key=str)
        closed = [w.name for w in planned.hosts if not self._open(w)]
        return ReservationWaiting(
            run_id=waiter.cmd.run_id,
            blocked_by=blocked_by,
            reason=planned.reason,
            workcells=closed if planned.reason != WaitReason.ASSETS_BUSY else [],
        )

    async def serve(self, freed: Iterable[uuid.UUID] | None, attempt: int = 0) -> None:
        """Try the waiters that want any of ``freed`` (every waiter: None), in service order.
        If NATS fails under it
        (a cluster electing a lease bucket's leader: seconds), it is tried again with backoff
        until it gets through: nothing else would wake these waiters (a workcell stalled a
        minute until an unrelated lease changed)."""
        chosen = None if freed is None else frozenset(freed)
        try:
            await self._serve(chosen)
        except Exception as exc:
            if not is_infrastructure(exc):
                raise
            attempt += 1
            delay = retry_delay(attempt, INFRA_RETRY_CAP)
            log.warning("serving the waiters failed (%r); again in %.1f s", exc, delay)
            self._retry_later(delay, chosen, attempt)

    def _retry_later(self, delay: float, freed: frozenset[uuid.UUID] | None, attempt: int) -> None:
        """``serve`` again after ``delay``; the timer is forgotten once it fired (``close``
        cancels those still pending)."""

        def fire() -> None:
            self._retries.discard(timer)
            self._spawn(self.serve(freed, attempt))

        timer = asyncio.get_running_loop().call_later(delay, fire)
        self._retries.add(timer)

    async def _serve(self, freed: frozenset[uuid.UUID] | None) -> None:
        async with self._serving:
            waiters = self.queue.all() if freed is None else self.queue.wanting(freed)
            for waiter in waiters:
                run_id = waiter.cmd.run_id
                if run_id not in self.queue or run_id in self._released or run_id in self._deciding:
                    continue  # granted, failed or being released or failed meanwhile
                if self.queue.ahead_of(waiter.order, waiter.wanted):
                    continue
                self._deciding.add(run_id)  # its time limit waits for the outcome
                try:
                    await self._serve_one(waiter)
                finally:
                    self._deciding.discard(run_id)

    async def _serve_one(self, waiter: Waiter) -> None:
        run_id = waiter.cmd.run_id
        try:
            planned = await self._plan(waiter.cmd)
        except PraxisError as exc:
            await self._fail(waiter.cmd, exc)
            return
        if planned.plan is not None and await self._grant(waiter.cmd, planned.plan, stored=True):
            self.queue.remove(run_id)
            RESERVATION_WAIT_SECONDS.observe((now() - waiter.since).total_seconds())
        else:
            await self._tell_waiting(waiter, planned)

    async def _time_out(self, run_id: uuid.UUID) -> None:
        async with self._exclusive(run_id):
            waiter = self.queue.get(run_id)
            if waiter is None:
                return
            if run_id in self._deciding:  # being granted or failed now: look again after
                waiter.timer = asyncio.get_running_loop().call_later(
                    DECIDING_RECHECK, lambda: self._spawn(self._time_out(run_id))
                )
                return
            cmd = waiter.cmd
            if cmd.deadline is not None and now() >= cmd.deadline:
                error: PraxisError = _deadline_passed(cmd)
            else:
                seconds = cmd.wait_timeout_seconds
                error = Timeout(f"assets not available within {seconds} s")
            try:
                await self._fail(cmd, error)
            except Exception:  # PostgreSQL away: it still waits, and times out again shortly
                log.exception("failing run %s at its time limit failed; retried", run_id)
                waiter.timer = asyncio.get_running_loop().call_later(
                    INFRA_RETRY_CAP, lambda: self._spawn(self._time_out(run_id))
                )

    async def _fail(self, cmd: ReserveAssets, error: PraxisError, *, stored: bool = False) -> None:
        """Announce the failure; a stored request (waiting, or reloaded) is settled with it,
        and only then leaves the queue (a failed commit leaves it waiting, to try again)."""
        event = ReservationFailed(run_id=cmd.run_id, error=error.to_reply())
        waiter = self.queue.get(cmd.run_id)
        self._deciding.add(cmd.run_id)  # not granted while its failure commits
        try:
            await self._say(cmd.run_id, event, "failed" if stored or waiter else None)
        finally:
            self._deciding.discard(cmd.run_id)
        if waiter is not None and self.queue.remove(cmd.run_id) is not None:
            self._spawn(self.serve(waiter.wanted))  # whoever queued behind it may go now

    async def _settle(self, run_id: uuid.UUID, status: str, event: Event) -> None:
        """A stored request's new status and the event saying so, in one commit."""
        async with self.unit() as uow:
            stmt = update(ReservationRow).where(ReservationRow.run_id == run_id)
            await uow.session.execute(stmt.values(status=status))
            uow.emit(event)

    async def resume(self) -> int:
        """Reload stored waiters after a restart (call once the lease index is current)."""
        waiting = (
            select(ReservationRow)
            .where(ReservationRow.status.in_(("waiting", "deferred")))
            .order_by(ReservationRow.created_at)
        )
        async with self.db.transaction() as session:
            rows = (await session.scalars(waiting)).all()
        stored = [(ReserveAssets.model_validate(r.request), r.created_at, r.status) for r in rows]
        for cmd, since, status in stored:
            if status == "deferred" and cmd.not_before is not None:
                await self._defer(cmd, since, persist=False)  # its appointment stands
                continue
            try:
                planned = await self._plan(cmd)
            except PraxisError as exc:
                await self._fail(cmd, exc, stored=True)
                continue
            await self._wait(cmd, planned, since, persist=False)
        return len(stored)

    def queue_gauges(self) -> None:
        """``praxis_reservation_queue`` and its oldest wait, by requested workcell (at a
        scrape)."""
        depth: dict[str, int] = {}
        oldest: dict[str, float] = {}
        moment = now()
        for waiter in self.queue.all():
            workcell = waiter.cmd.workcell or "any"
            depth[workcell] = depth.get(workcell, 0) + 1
            waited = (moment - waiter.since).total_seconds()
            oldest[workcell] = max(oldest.get(workcell, 0.0), waited)
        for workcell in self._gauged | set(depth):  # an emptied queue shows 0
            RESERVATION_QUEUE.labels(workcell).set(depth.get(workcell, 0))
            RESERVATION_OLDEST_SECONDS.labels(workcell).set(oldest.get(workcell, 0.0))
        self._gauged |= set(depth)

    async def serve_all(self) -> None:
        """Try every waiter: also those that want no asset (a run waiting only for its
        workcell's edge, or for the workcell to be resumed), which no freed asset wakes."""
        await self.serve(None)

    def workcells_opened(self, workcells: Iterable[str]) -> None:
        """An orchestrator of each of ``workcells`` accepts runs again, or one was resumed:
        the runs waiting for it are placed (in service order)."""
        log.info("placing the runs waiting for %s", ", ".join(sorted(workcells)))
        self._spawn(self.serve_all())

    # -- release ------------------------------------------------------------------------------
    async def release(self, cmd: ReleaseAssets) -> None:
        """Release every lease of the run (idempotent); a waiting request is withdrawn."""
        async with self._exclusive(cmd.run_id):
            await self._release(cmd)

    async def _release(self, cmd: ReleaseAssets) -> None:
        """The leases go first, then a stored request is settled ``cancelled`` with the
        ``AssetsReleased`` that says so, and only then leaves the queue: a commit that fails
        leaves it queued (never served: it is released), so the redelivered command finds it
        and settles it."""
        run_id = cmd.run_id
        self._released.add(run_id)  # no grant from now on (``_serve``, ``_request``)
        waiter, deferred = self.queue.get(run_id), self._deferred.get(run_id)
        released = await self._release_keys(run_id, self.index.held_by(run_id))
        stored = waiter is not None or deferred is not None
        if not released and not stored:
            return  # nothing held, nothing waiting: a duplicate release changes nothing
        reason = cmd.reason or f"released by run {run_id}"
        event = AssetsReleased(run_id=run_id, asset_ids=released, reason=reason)
        if stored:
            await self._settle(run_id, "cancelled", event)
            self.queue.remove(run_id)
            if (timer := self._deferred.pop(run_id, None)) is not None:
                timer.cancel()
        self.status([(a, AssetStatus.AVAILABLE, reason, run_id) for a in released])
        # Waiters first: their grant should not queue behind our own announcement.
        await self.serve(set(released) | (waiter.wanted if waiter else set()))
        if not stored:
            await self.publish(event)

    async def _release_keys(self, run_id: uuid.UUID, held: dict[str, KeyState]) -> list[uuid.UUID]:
        released = []
        for key, (state, tombstone) in (await self.leases.release_all(run_id, held)).items():
            self._mirror(key, KeyState(tombstone, None))
            assert state.holder is not None
            released.append(state.holder.asset_id)
        return released

    async def force_release(
        self, asset_id: uuid.UUID, reason: str, actor: str | None = None
    ) -> Lease:
        """Release a lease whoever holds it; audited as ``LeaseForceReleased``."""
        key = self.index.key_of(asset_id)
        if key is None:
            raise NotFound(f"asset {asset_id} has no live lease", asset_id=str(asset_id))
        result = await self.leases.force_release(key, reason)
        if result is None or result[0].holder is None:
            raise NotFound(f"asset {asset_id} has no live lease", asset_id=str(asset_id))
        state, tombstone = result
        holder = result[0].holder
        self._mirror(key, KeyState(tombstone, None))
        view = _lease_view(key, KeyState(state.revision, holder), await self._asset_names())
        await self.publish(
            LeaseForceReleased(
                asset_id=asset_id,
                run_id=holder.run_id,
                lease_key=key,
                token=state.revision,
                reason=reason,
                at=now(),
                actor=actor,
            )
        )
        self.status([(asset_id, AssetStatus.AVAILABLE, f"force-released: {reason}", None)])
        await self.serve([asset_id])
        return view

    async def hold(self, cmd: HoldAssets) -> None:
        """Keep every lease of the run until it is released: rewritten without a TTL, which
        also moves the fencing token, so the edge that held them cannot renew them any more.

        Idempotent: a held lease is left as it is, and a run holding nothing is no-op. While the
        run holds held leases, ``AssetsHeld`` is announced (again, for a redelivery: the message
        id makes the stream keep one), so a crash between the writes and the event loses
        nothing."""
        async with self._exclusive(cmd.run_id):
            known = self.index.held_by(cmd.run_id)
            for key, state in (await self.leases.hold_all(cmd.run_id, known)).items():
                self._mirror(key, state)
            mine = self.index.held_by(cmd.run_id).values()
            held = [s.holder.asset_id for s in mine if s.holder is not None and s.holder.held]
            if not held:
                return  # a run holding nothing (or only leases that just expired): no effect
            reason = cmd.reason or f"run {cmd.run_id} needs an operator"
            await self.publish(
                AssetsHeld(run_id=cmd.run_id, asset_ids=sorted(held, key=str), reason=reason),
                msg_id=f"held:{cmd.run_id}",
            )

    def mark_in_use(self, run_id: uuid.UUID, workcell: str) -> None:
        """The run's protocol started on ``workcell`` (the key its orchestrator published
        under): its leased assets there are in use. Another workcell's orchestrator naming
        the run marks nothing."""
        reason = f"in use by run {run_id}"
        prefix = lease_key(workcell, uuid.UUID(int=0)).rpartition(".")[0] + "."
        held = [s for k, s in self.index.held_by(run_id).items() if k.startswith(prefix)]
        self.status(
            [(s.holder.asset_id, AssetStatus.IN_USE, reason, run_id) for s in held if s.holder]
        )

    # -- the bucket's watcher -----------------------------------------------------------------
    def observe(
        self, key: str, revision: int, value: bytes | None, operation: str | None
    ) -> Change | None:
        """Mirror one watcher entry; returns the change if it was news to us."""
        known = self.index.states.get(key)
        if known is not None and known.revision >= revision:
            return None  # the echo of our own write
        deleted = operation in ("DEL", "PURGE") or not value
        if operation == "PURGE" and known is not None and _claimed(known):
            # The server's expiry marker of a lease an edge claimed: still busy, held next.
            self.index.apply(key, KeyState(revision, known.holder))
            self.deadlines.cancel(key)
            self._spawn(self._lapsed(key, known, revision))
            return None
        holder = None if deleted or value is None else decode_holder(value)
        return self._mirror(key, KeyState(revision, holder))

    def on_change(self, change: Change, operation: str | None) -> None:
        """React to a lease freed by someone else: expiry (PURGE marker), another replica."""
        previous = change.previous.holder if change.previous else None
        if previous is None or change.current.holder is not None:
            return
        if operation == "PURGE" and change.previous is not None:  # only the TTL marker purges
            self._spawn(self._expired(change.asset_id, previous.run_id, change.previous.revision))
        else:
            self._wake(change.asset_id)

    def _wake(self, asset_id: uuid.UUID) -> None:
        """Serve the waiters of a freed asset. The watcher hands over every entry of one read
        before this task runs, so a holder's whole set coming free is served once, not once
        per key (a waiter wanting four assets was planned four times)."""
        if not self.queue.wanting([asset_id]):
            return
        self._freed.add(asset_id)
        if len(self._freed) == 1:
            self._spawn(self._serve_freed())

    async def _serve_freed(self) -> None:
        freed, self._freed = self._freed, set()
        await self.serve(freed)

    def _deadline_passed(self, key: str, state: KeyState, attempt: int) -> None:
        self._spawn(self._check_expiry(key, state, attempt))

    async def _check_expiry(self, key: str, state: KeyState, attempt: int) -> None:
        """A lease's TTL has run out by its writer's clock: see whether the server expired it.

        The key's last message tells: if it is older than the lease, the lease's message is gone
        and nothing replaced it (a key with earlier revisions gets no expiry marker), so this is
        the expiry. If it is the lease itself, the server's clock is behind: look again shortly.
        If it is newer, the watcher is about to show it (a renewal, a release, a marker) and
        that moves or drops this deadline; a re-check covers a watcher that never does."""
        if self.index.states.get(key) != state:
            return  # renewed, released or marked expired meanwhile
        try:
            current = await self.leases.read(key)
        except Exception as exc:
            log.warning("reading %s at its deadline failed, will look again: %s", key, exc)
            current = state
        if self.index.states.get(key) != state:
            return
        if current.revision >= state.revision:
            self.deadlines.recheck(key, state, attempt + 1)
            return
        if _claimed(state):  # its run is on an edge that stopped renewing: held, not freed
            await self._lapsed(key, state, current.revision)
            return
        change = self.index.expire(key, state.revision)
        if change is not None and state.holder is not None:
            self.deadlines.track(key, change.current)
            await self._expired(change.asset_id, state.holder.run_id, state.revision)

    async def _lapsed(self, key: str, lease: KeyState, revision: int) -> None:
        """A claimed lease ran out (its edge stopped renewing): write it back held, over the
        key's last message ``revision``, so its asset stays with its run until an operator
        resolves it; the scheduler moves the run to ``requires_intervention`` on the event.

        The mirror shows the lease busy all along (no grant can take the asset), the run's
        commands are kept out meanwhile (a release that came first wins: nothing is held then),
        and NATS being away only delays the write."""
        holder = lease.holder
        assert holder is not None
        async with self._exclusive(holder.run_id):
            attempt = 0
            while True:
                if self.index.states.get(key, lease).holder != holder:
                    return  # released, force-released or held meanwhile: nothing lapsed
                try:
                    written = await self.leases.hold_lapsed(key, holder, revision)
                    current = None if written is not None else await self.leases.read(key)
                except Exception as exc:
                    attempt += 1
                    log.warning("holding the lapsed lease %s failed, will retry: %s", key, exc)
                    await asyncio.sleep(retry_delay(attempt, INFRA_RETRY_CAP))
                    continue
                if written is not None:
                    self._mirror(key, written)
                    break
                assert current is not None
                if current.holder is None:  # another marker, or a tombstone: hold over it
                    revision = current.revision
                    continue
                self._mirror(key, current)  # held or taken by a writer we did not expect
                if current.holder.run_id != holder.run_id:
                    log.error("lapsed lease %s was taken by run %s", key, current.holder.run_id)
                return
        log.warning(
            "lease %s of run %s ran out on edge %s: held for an operator",
            key,
            holder.run_id,
            holder.edge,
        )
        event = LeaseExpired(
            asset_id=holder.asset_id,
            run_id=holder.run_id,
            lease_key=key,
            token=lease.revision,
            at=now(),
            held=True,
            edge_instance=holder.edge,
        )
        attempt = 0
        while True:  # the scheduler must hear of it: retried until stored (the id de-duplicates)
            try:
                await self.publish(event, msg_id=f"expired:{key}:{lease.revision}")
                return
            except Exception as exc:
                attempt += 1
                log.warning("announcing the lapsed lease %s failed, will retry: %s", key, exc)
                await asyncio.sleep(retry_delay(attempt, INFRA_RETRY_CAP))

    async def _expired(self, asset_id: uuid.UUID, run_id: uuid.UUID, token: int) -> None:
        """The lease at ``token`` expired (seen by its marker or its deadline, once in this
        process; the message id keeps one event per lease in the stream across replicas)."""
        key = self.index.key_of(asset_id) or ""
        await self.publish(
            LeaseExpired(asset_id=asset_id, run_id=run_id, lease_key=key, token=token, at=now()),
            msg_id=f"expired:{key}:{token}",
        )
        reason = f"lease of run {run_id} expired"
        self.status([(asset_id, AssetStatus.AVAILABLE, reason, run_id)])
        self._wake(asset_id)  # announced first, then served

    # -- operations ---------------------------------------------------------------------------
    async def list_leases(self, run_id: uuid.UUID | None) -> LeaseList:
        names = await self._asset_names()
        items = [
            _lease_view(key, state, names)
            for key, state in self.index.states.items()
            if state.holder is not None and run_id in (None, state.holder.run_id)
        ]
        return LeaseList(items=sorted(items, key=lambda lease: lease.acquired_at))

    async def _asset_names(self) -> dict[uuid.UUID, str]:
        return {a.accession_id: a.name for lo in await self.inventory.layouts() for a in lo.assets}

    def close(self) -> None:
        """Stop the expiry deadlines and pending retries (the service is stopping)."""
        self.deadlines.close()
        for timer in [*self._retries, *self._deferred.values()]:
            timer.cancel()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Background work (serving the queue, timers) is the system's, whoever's message
        started it: a grant a release made possible does not name the releaser."""
        task = asyncio.get_running_loop().create_task(coroutine, context=system_context())
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s failed", task.get_coro(), exc_info=exc)


def _deadline_passed(cmd: ReserveAssets) -> DeadlinePassed:
    assert cmd.deadline is not None
    return DeadlinePassed(
        f"the run could not start by its deadline {cmd.deadline.isoformat()}",
        deadline=cmd.deadline.isoformat(),
    )


def _claimed(state: KeyState) -> bool:
    """A live lease an edge has claimed and nobody holds for an operator yet."""
    holder = state.holder
    return holder is not None and holder.claimed and not holder.held


def _workcell_match(site: Site, found: Match) -> WorkcellMatch:
    workcell = site.layout.workcell
    return WorkcellMatch(
        workcell_id=workcell.accession_id,
        workcell_name=workcell.name,
        requirements=[
            RequirementOptions(requirement=r.name, assets=[a.name for a in found.options[r.name]])
            for r in found.requirements
        ],
    )


def _nowhere(refusals: dict[str, NoMatchingAssets]) -> NoMatchingAssets:
    """One error for a request no workcell can host, naming each workcell's reasons."""
    if not refusals:
        return NoMatchingAssets("there is no workcell to run on")
    if len(refusals) == 1:
        ((name, only),) = refusals.items()
        return NoMatchingAssets(f"workcell {name!r}: {only.message}", workcell=name, **only.details)
    return NoMatchingAssets(
        "no workcell can host the run: "
        + "; ".join(f"{name!r}: {exc.message}" for name, exc in refusals.items()),
        workcells={name: exc.details for name, exc in refusals.items()},
    )


class _Turn:
    """A run's turn (``Reservations._exclusive``): a plain async context manager, on the grant
    path twice per reservation, cheaper than a generator-based one."""

    __slots__ = ("busy", "run_id")

    def __init__(self, busy: dict[uuid.UUID, asyncio.Event], run_id: uuid.UUID) -> None:
        self.busy = busy
        self.run_id = run_id

    async def __aenter__(self) -> None:
        while (waiting := self.busy.get(self.run_id)) is not None:
            await waiting.wait()
        self.busy[self.run_id] = asyncio.Event()

    async def __aexit__(self, *_: object) -> None:
        self.busy.pop(self.run_id).set()


def _lease_view(key: str, state: KeyState, names: dict[uuid.UUID, str]) -> Lease:
    holder: Holder | None = state.holder
    assert holder is not None
    at = now()
    expires_at = holder.expires_at
    return Lease(
        asset_id=holder.asset_id,
        asset_name=names.get(holder.asset_id, ""),
        lease_key=key,
        run_id=holder.run_id,
        token=state.revision,
        acquired_at=holder.acquired_at,
        renewed_at=holder.renewed_at,
        expires_at=expires_at,
        age_seconds=round((at - holder.acquired_at).total_seconds(), 3),
        seconds_left=None
        if expires_at is None
        else round(max(0.0, (expires_at - at).total_seconds()), 3),
        held_for_intervention=holder.held,
    )


def _in_order(cmd: ReserveAssets, bindings: list[AssetBinding]) -> list[AssetBinding]:
    """Bindings in the order of the command's requirements, so that a grant announced again
    (a redelivered command) is the same event as the first."""
    order = {r.name: i for i, r in enumerate(cmd.requirements)}
    return sorted(bindings, key=lambda b: order.get(b.requirement, len(order)))


def _requirement(cmd: ReserveAssets, name: str) -> Any:
    return next(r for r in cmd.requirements if r.name == name)


def _binding(workcell: str, binding: Binding, state: KeyState) -> AssetBinding:
    asset = binding.asset
    return AssetBinding(
        requirement=binding.requirement.name,
        asset_id=asset.accession_id,
        asset_name=asset.name,
        kind=asset.kind,
        fqn=asset.fqn,
        lease_key=lease_key(workcell, asset.accession_id),
        token=state.revision,
        reason=binding.reason,
    )
