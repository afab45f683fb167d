"""Keeps a run's leases alive while it executes, and fences the run when one is lost.

The holder renews each lease at a third of its TTL (a compare-and-set on its current token, which
moves the token forward). It also watches its keys: the bucket pushes every change, so a lease
that expires, is force-released or is taken over is noticed at once, not at the next renewal
(with the default one-hour TTL that would be twenty minutes of driving an instrument that is no
longer the run's). Either way the run is fenced: its next protocol-function call raises
``LeaseLost`` before touching an instrument, and nothing it does can disturb the successor,
whose token differs.

What counts as lost: any revision of a key that this keeper did not write itself. Holding the run
for an operator (the asset-manager rewrites the lease without a TTL, ``ttl_seconds`` 0) is such a
write, and so is a second process renewing the same run's lease (a redelivered command prepared
twice). The keeper recognises its own writes by their value (each renewal stamps a fresh
``renewed_at``), not by the revision ``renew`` returns: the watcher often reports a renewal
before the publish's ack arrives, and an ack lost to a disconnect leaves only the value to go by.

The first renewal is the *claim* (``claim``): it stamps this process (``edge``) into every lease
at the tokens the grant carried, the moment the edge accepts the run. From then on the leases say
whose the run is: of two processes handed the same command only the first claims it (the other
finds ``ClaimedElsewhere``), and a claimed lease that runs out is held for an operator by the
asset-manager, never handed to another run.

NATS being away is not a lost lease: a renewal that fails for that reason is retried with backoff
(capped at ``INFRA_RETRY_CAP``) until it succeeds or the lease really is gone. Watchers are
re-created when they end or when NATS comes back (``resync``); a new watcher first reports the
key's current state, so a change missed while disconnected is still seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from dataclasses import replace
from datetime import UTC, datetime

from nats.js.errors import APIError
from nats.js.kv import KeyValue

from praxis_contracts.assets import AssetBinding
from praxis_contracts.errors import LeaseLost
from praxis_runtime.bus import INFRA_RETRY_CAP, retry_delay
from praxis_runtime.leases import (
    CAS_CONFLICT_CODES,
    EXPECTED_LAST_SUBJECT_SEQ,
    Holder,
    KeyState,
    LeaseStore,
    state_of,
)
from praxis_runtime.publisher import Outgoing

log = logging.getLogger(__name__)

ATTEMPT_TIMEOUT_CAP = 2.0
"""Longest wait for one renewal attempt (a shorter TTL's third is used when smaller)."""

OWN_WRITES_REMEMBERED = 8
"""Renewals per key whose outcome may still be unknown; older ones are settled long since."""


class ClaimedElsewhere(Exception):
    """Another edge process claimed the run's leases first: the run is that process's."""

    def __init__(self, edge: str) -> None:
        super().__init__(f"the run was claimed by edge process {edge}")
        self.edge = edge


class LeaseKeeper:
    def __init__(
        self,
        leases: LeaseStore,
        run_id: uuid.UUID,
        bindings: list[AssetBinding],
        edge: str,
        ttl_seconds: int = 0,
    ) -> None:
        self.leases = leases
        self.run_id = run_id
        self.edge = edge
        self.tokens = {b.lease_key: b.token for b in bindings}
        self.names = {b.lease_key: b.asset_name for b in bindings}
        self.ttl_seconds = ttl_seconds
        self.interval = max(0.2, ttl_seconds / 3)
        # A renewal attempt is a read and a write, milliseconds on a live server: one that has
        # no answer after this long is treated as failed and retried, rather than waiting for
        # the client's 5 s time-outs while the lease runs out.
        self.attempt_timeout = min(max(1.0, self.interval), ATTEMPT_TIMEOUT_CAP)
        self.lost: LeaseLost | None = None
        self.fenced = asyncio.Event()  # set when a lease is lost
        self.renewal_failures = 0  # attempts that failed for want of NATS (not lost leases)
        self._written: dict[str, deque[Holder]] = {
            key: deque(maxlen=OWN_WRITES_REMEMBERED) for key in self.tokens
        }
        self._renewing = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._handing_back = False
        self._task: asyncio.Task[None] | None = None
        self._watching: list[asyncio.Task[None]] = []
        self._watchers: dict[str, KeyValue.KeyWatcher] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self.tokens and self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._heartbeat())
            self._watching = [loop.create_task(self._watch(key)) for key in self.tokens]

    async def stop(self) -> None:
        """Stop renewing and watching; a renewal under way completes, so the tokens stay
        current."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        await self._stop_watchers()
        for task in self._watching:
            task.cancel()
        await asyncio.gather(*self._watching, return_exceptions=True)

    async def resync(self) -> None:
        """NATS came back: re-create the watchers. Each new one reports the key's current
        state first, so a change made while this process was disconnected is judged too."""
        if not self._stopping.is_set() and self.lost is None:
            await self._stop_watchers()  # their tasks create new ones

    async def _stop_watchers(self) -> None:
        for watcher in list(self._watchers.values()):
            # Stopping ends the watcher's iterator; a cancellation alone can be swallowed by
            # CPython 3.11's wait_for inside nats-py.
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    async def _pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; whether the keeper was stopped meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return False
        return True

    # -- the fence ----------------------------------------------------------------------------
    async def check(self) -> None:
        """The fence: raise before the protocol acts again if any lease was lost."""
        self.check_now()

    def check_now(self) -> None:
        """The fence, from any thread (the guard calls it before every instrument command): the
        keeper's local state only, no round trip."""
        lost = self.lost
        if lost is not None:
            raise lost

    async def hand_back(self) -> None:
        """The run ended and its report is queued: keep renewing until the scheduler takes the
        leases back (the first change this keeper did not write: a release, or a hold), then
        stop. Returns at once if a lease was lost already."""
        self._handing_back = True
        if self._task is not None and self.lost is None:
            await self.fenced.wait()
        await self.stop()

    def _lose(self, lost: LeaseLost) -> None:
        if self.lost is None:
            self.lost = lost
            self.fenced.set()
            if self._handing_back:
                log.info("run %s handed its leases back: %s", self.run_id, lost.message)
            else:
                log.warning("run %s lost a lease: %s", self.run_id, lost.message)

    def _observe(self, key: str, state: KeyState) -> None:
        """Judge a state of ``key`` (pushed by the watcher or read): a revision this keeper
        wrote becomes its token; any other newer revision, or no lease at all, fences."""
        holder, revision = state.holder, state.revision
        if holder is not None and revision <= self.tokens[key]:
            return  # the state we know, or an older one delivered late
        if holder is not None and holder.run_id == self.run_id and holder in self._written[key]:
            self.tokens[key] = revision  # our renewal, possibly before renew() heard its ack
            return

        self._lose(
            LeaseLost(f"lease {key} {_why(holder, self.run_id)} (revision {revision})", key=key)
        )

    async def _watch(self, key: str) -> None:
        """The push side of the fence, kept alive: a watcher that ends (stopped by ``resync``,
        or failed to start while NATS is away) is created again."""
        attempt = 0
        while not self._stopping.is_set() and self.lost is None:
            try:
                watcher = await self.leases.watch(key)
            except Exception as exc:
                attempt += 1
                log.warning("watching %s failed (attempt %d), will retry: %s", key, attempt, exc)
                if await self._pause(retry_delay(attempt, INFRA_RETRY_CAP)):
                    return
                continue
            attempt = 0
            self._watchers[key] = watcher
            try:
                if not self._stopping.is_set():
                    await self._follow(key, watcher)
            finally:
                if self._watchers.get(key) is watcher:
                    del self._watchers[key]
                with contextlib.suppress(Exception):
                    await watcher.stop()  # type: ignore[no-untyped-call]

    async def _follow(self, key: str, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # the current state came first; from here on, changes
                continue
            try:
                state = state_of(entry)
            except (ValueError, KeyError) as exc:
                self._lose(LeaseLost(f"lease {key} holds an unreadable value: {exc}", key=key))
            else:
                self._observe(key, state)
            if self.lost is not None:
                return

    # -- renewal ------------------------------------------------------------------------------
    async def renew(self) -> bool:
        """Renew every lease once; whether all were renewed. A lost lease fences the run; a
        failure for want of NATS is logged and left to the caller to retry."""
        async with self._renewing:
            if self.lost is not None:
                return False
            keys = list(self.tokens)
            results = await asyncio.gather(*map(self._renew_bounded, keys), return_exceptions=True)
        renewed = True
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, BaseException):  # a lost lease fenced already, not raised
                self.renewal_failures += 1
                renewed = False
                log.warning("renewing %s failed, will retry: %s", key, type(result).__name__)
        return renewed and self.lost is None

    async def claim(self) -> None:
        """Stamp this process into every lease, at the granted tokens, retrying while NATS is
        away: from then on the leases are this process's, so a second process handed the same
        command (a redelivery) cannot claim them too, and they are renewed from here on.

        Raises ``ClaimedElsewhere`` if another process claimed the run first, ``LeaseLost`` if a
        lease is gone or another run's."""
        attempt = 0
        while self.tokens:  # a run that needs no asset has nothing to claim
            try:
                states = await asyncio.gather(*map(self.leases.read, self.tokens))
            except Exception as exc:
                attempt += 1
                log.warning("reading the leases to claim failed (attempt %d): %s", attempt, exc)
                await asyncio.sleep(retry_delay(attempt, INFRA_RETRY_CAP))
                continue
            for key, state in zip(self.tokens, states, strict=True):
                self._check_claimable(key, state)
            if self.ttl_seconds == 0:  # the lease's own TTL paces the renewals
                self._pace(min(s.holder.ttl_seconds for s in states if s.holder is not None))
            if await self.renew():
                return
            if self.lost is not None:
                raise self.lost
            attempt += 1
            await asyncio.sleep(retry_delay(attempt, INFRA_RETRY_CAP))

    async def unclaim(self) -> None:
        """Withdraw the claim of a run that never started here (this process is stopping):
        each lease still stamped with this process is written back without the stamp, at its
        token, so the next process handed the command can claim it. Call after ``stop``. Best
        effort: a lease that changed, or a write that fails, is left as it is (it then runs
        out claimed and is held for an operator)."""
        for key in self.tokens:
            try:
                state = await self.leases.read(key)
                holder = state.holder
                if holder is None or holder.run_id != self.run_id or holder.edge != self.edge:
                    continue
                free = replace(holder, renewed_at=datetime.now(UTC), edge=None)
                write = Outgoing(
                    self.leases.subject(key),
                    free.encode(),
                    {EXPECTED_LAST_SUBJECT_SEQ: str(state.revision)},
                    free.ttl_seconds,
                )
                (result,) = await self.leases.publisher.publish_all([write])
                if isinstance(result, Exception):
                    raise result
            except Exception as exc:
                log.warning("could not withdraw the claim on %s: %r", key, exc)

    def _check_claimable(self, key: str, state: KeyState) -> None:
        """Whether this process may claim ``key``: the run's lease, claimed by nobody (at the
        granted token, or later if a stopping process withdrew its claim) or by itself."""
        holder, name = state.holder, self.names[key]
        if holder is None or holder.run_id != self.run_id or state.revision < self.tokens[key]:
            raise LeaseLost(
                f"lease on {name} is no longer held at token {self.tokens[key]}", asset=name
            )
        if holder.held:
            raise LeaseLost(f"lease on {name} is held for an intervention", asset=name)
        if holder.edge is None:
            self.tokens[key] = state.revision
        elif holder.edge != self.edge:
            raise ClaimedElsewhere(holder.edge)
        # else our own claim, whose ack was lost: ``renew`` knows it by its value

    def _pace(self, ttl_seconds: int) -> None:
        self.ttl_seconds = ttl_seconds
        self.interval = max(0.2, ttl_seconds / 3)
        self.attempt_timeout = min(max(1.0, self.interval), ATTEMPT_TIMEOUT_CAP)

    async def _heartbeat(self) -> None:
        """Renew every ``interval``; after a failure, retry with backoff instead of waiting a
        whole interval (the lease is running out), and re-create the watchers once it works
        again: whatever broke the renewal may have cut them off too."""
        while self.lost is None:
            if await self._pause(self.interval):
                return
            attempt = 0
            while not await self.renew():
                if self.lost is not None:
                    return
                attempt += 1
                if await self._pause(retry_delay(attempt, INFRA_RETRY_CAP)):
                    return
            if attempt:
                log.info("run %s renewed its leases again after %d failures", self.run_id, attempt)
                await self.resync()

    async def _renew_bounded(self, key: str) -> None:
        async with asyncio.timeout(self.attempt_timeout):
            await self._renew(key)

    async def _renew(self, key: str) -> None:
        """One compare-and-set renewal of ``key`` at its token; raises what NATS said."""
        state = await self.leases.read(key)
        self._observe(key, state)  # an earlier renewal whose ack was lost may have moved it
        if self.lost is not None or state.holder is None:
            return
        token = self.tokens[key]
        renewed = replace(state.holder, renewed_at=datetime.now(UTC), edge=self.edge)
        self._written[key].append(renewed)  # before sending: the watcher may echo it first
        write = Outgoing(
            self.leases.subject(key),
            renewed.encode(),
            {EXPECTED_LAST_SUBJECT_SEQ: str(token)},
            renewed.ttl_seconds,
        )
        (result,) = await self.leases.publisher.publish_all([write])
        if isinstance(result, int):
            self.tokens[key] = max(self.tokens[key], result)
            return
        if isinstance(result, APIError) and result.err_code in CAS_CONFLICT_CODES:
            # Changed under us: judge what is there now. A spurious conflict (replicated
            # buckets) leaves our lease as it was, and the next attempt renews it.
            self._observe(key, await self.leases.read(key))
            if self.lost is not None:
                return
        raise result


def _why(holder: Holder | None, run_id: uuid.UUID) -> str:
    if holder is None:
        return "was released or expired"
    if holder.run_id != run_id:
        return "was taken by another run"
    if holder.ttl_seconds == 0:
        return "is held for intervention (its run needs an operator)"
    return "was rewritten by another writer for this run"
