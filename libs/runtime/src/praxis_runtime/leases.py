"""Leases on assets in a NATS KV bucket: one key per asset, revision = fencing token.

All-or-nothing without hold-and-wait: a run's keys are written with per-key compare-and-set
(``Nats-Expected-Last-Subject-Sequence``), all at once; if any key is taken, every key this attempt
wrote is rolled back (compare-and-set delete on our own revision) before the request waits. A run
therefore never holds part of its set while waiting for the rest, so no deadlock can form.

Why not ADR-50 atomic batches: on file storage each batch commit is synced to disk and commits
serialise per stream, which caps the whole bucket below the reservation rate we need (README,
Design measurements). Per-key CAS writes of one request go out together and are awaited under
one deadline (``Publisher.publish_all``). A key the caller's mirror shows held fails the request
before anything is written.
The price is that a competing reader can briefly see keys of a set that is then rolled back; it
never sees an asset with two live holders, which is the guarantee that matters (and the one the
concurrency test checks from the bucket's history).

The revision of the current lease message is the fencing token: renewing is a CAS write on it
(the token moves forward), releasing a CAS delete on it. A holder whose lease expired, was
force-released or was taken over can neither renew nor release, because its token is stale.

A lease can be held for an intervention (``hold_all``): rewritten at its token without a TTL, the
key stops expiring (a TTL belongs to each write, not to the key) and the token moves, so the edge
that held it can no longer renew it; only a release or force-release ends it.

A lease records the edge process that *claimed* it (``Holder.edge``): the orchestrator that
accepted the run stamps its instance into the lease with its first renewal. From then on the
run's state lives on that edge, so a claimed lease that runs out is not freed: its asset may be
mid-transfer on an edge that stopped answering. The asset-manager holds it for an operator
instead (``hold_lapsed``), and only an unclaimed lease (granted, never accepted by an edge)
expires into freedom.

Reads use the stream's last message per subject rather than ``kv.get`` (nats-py 2.16 reports a
TTL expiry marker as a live entry); tombstones and markers are recognised from headers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from nats.js.errors import APIError, NotFoundError
from nats.js.kv import KeyValue

from praxis_contracts.errors import LeaseLost
from praxis_runtime.publisher import Outgoing, Publisher

log = logging.getLogger(__name__)

CAS_CONFLICT_CODES = frozenset({10071, 10164})
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
FORCE_RELEASE_REASON = "Praxis-Force-Release-Reason"


HELD = 0
"""``Holder.ttl_seconds`` of a lease held for an intervention: written without a TTL, it stays
until released (a real TTL is at least 1 s)."""


@dataclass(frozen=True)
class Holder:
    """The value of a live lease key."""

    run_id: uuid.UUID
    asset_id: uuid.UUID
    requirement: str
    workcell_id: uuid.UUID | None
    acquired_at: datetime
    renewed_at: datetime
    ttl_seconds: int
    edge: str | None = None
    """The edge process (``EdgeHeartbeat.instance``) that accepted the run; None until then."""

    @property
    def claimed(self) -> bool:
        """An edge accepted the run: the asset's state is that edge's to know."""
        return self.edge is not None

    @property
    def held(self) -> bool:
        """Held for an intervention: the key has no TTL and nobody renews it."""
        return self.ttl_seconds == HELD

    @property
    def expires_at(self) -> datetime | None:
        """When the lease runs out by the writer's clock (the server's decides); None if held."""
        if self.held:
            return None
        return self.renewed_at + timedelta(seconds=self.ttl_seconds)

    def encode(self) -> bytes:
        # Written by hand: four of these per grant, and json.dumps of the dict was a visible
        # share of the asset-manager's CPU (README, Design measurements). Only the requirement
        # name needs escaping.
        acquired = self.acquired_at.isoformat()
        renewed = acquired if self.renewed_at == self.acquired_at else self.renewed_at.isoformat()
        workcell = f'"{self.workcell_id}"' if self.workcell_id else "null"
        edge = "" if self.edge is None else f',"edge":{json.dumps(self.edge)}'
        return (
            f'{{"run_id":"{self.run_id}","asset_id":"{self.asset_id}",'
            f'"requirement":{json.dumps(self.requirement)},"workcell_id":{workcell},'
            f'"acquired_at":"{acquired}","renewed_at":"{renewed}",'
            f'"ttl_seconds":{int(self.ttl_seconds)}{edge}}}'
        ).encode()


def decode_holder(data: bytes) -> Holder:
    raw: dict[str, Any] = json.loads(data)
    acquired = datetime.fromisoformat(raw["acquired_at"])
    return Holder(
        run_id=uuid.UUID(raw["run_id"]),
        asset_id=uuid.UUID(raw["asset_id"]),
        requirement=raw.get("requirement", ""),
        workcell_id=uuid.UUID(raw["workcell_id"]) if raw.get("workcell_id") else None,
        acquired_at=acquired,
        renewed_at=datetime.fromisoformat(raw.get("renewed_at") or raw["acquired_at"]),
        ttl_seconds=int(raw["ttl_seconds"]),
        edge=str(raw["edge"]) if raw.get("edge") else None,
    )


class KeyState(NamedTuple):
    """The last message of a key: its revision, and the holder unless it is a tombstone."""

    revision: int
    holder: Holder | None


@dataclass(frozen=True)
class Claim:
    """One asset a run asks to lease."""

    asset_id: uuid.UUID
    requirement: str


class LeaseConflict(Exception):
    def __init__(self, keys: list[str]) -> None:
        super().__init__(", ".join(keys))
        self.keys = keys


def lease_key(workcell: str, asset_id: uuid.UUID) -> str:
    """``asset.<workcell>.<asset id>``: the workcell's orchestrator may write only its keys."""
    return f"asset.{workcell}.{asset_id}"


def asset_of(key: str) -> uuid.UUID | None:
    """The asset a lease key is about (its last token)."""
    if not key.startswith("asset."):
        return None
    try:
        return uuid.UUID(key.rsplit(".", 1)[-1])
    except ValueError:
        return None


def is_tombstone(headers: dict[str, str] | None) -> bool:
    headers = headers or {}
    return headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers


def state_of(entry: KeyValue.Entry) -> KeyState:
    """A watcher entry as a key state (a delete, purge or expiry marker has no holder)."""
    deleted = entry.operation in ("DEL", "PURGE") or not entry.value
    return KeyState(entry.revision or 0, None if deleted else decode_holder(entry.value or b""))


def _unheld(state: KeyState, run_id: uuid.UUID) -> bool:
    """A live lease of ``run_id`` that is not held for an intervention."""
    return state.holder is not None and state.holder.run_id == run_id and not state.holder.held


def _is_conflict(exc: APIError) -> bool:
    return exc.err_code in CAS_CONFLICT_CODES


class LeaseStore:
    def __init__(self, publisher: Publisher, bucket: str) -> None:
        self.publisher = publisher
        self.js = publisher.js
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self._kv: KeyValue | None = None

    def subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{key}"

    async def watch(self, key: str) -> KeyValue.KeyWatcher:
        """Push, no polling: the key's current state first (then a None marker), then every
        change; ``state_of`` reads an entry. Stop the watcher when done."""
        if self._kv is None:
            self._kv = await self.js.key_value(self.bucket)
        return await self._kv.watch(key)

    async def read(self, key: str) -> KeyState:
        try:
            msg = await self.js.get_msg(self.stream, subject=self.subject(key))
        except NotFoundError:
            return KeyState(0, None)
        if is_tombstone(msg.headers) or not msg.data:
            return KeyState(msg.seq or 0, None)
        return KeyState(msg.seq or 0, decode_holder(msg.data))

    async def _read_all(self, keys: list[str]) -> dict[str, KeyState]:
        return dict(zip(keys, await asyncio.gather(*map(self.read, keys)), strict=True))

    def _put(self, key: str, holder: Holder, expected: int) -> Outgoing:
        """Write ``holder`` at revision ``expected``, with the lease's TTL (none if held: the
        key is then permanent until deleted)."""
        headers = {EXPECTED_LAST_SUBJECT_SEQ: str(expected)}
        ttl = None if holder.held else holder.ttl_seconds
        return Outgoing(self.subject(key), holder.encode(), headers, ttl)

    def _delete(self, key: str, expected: int, headers: dict[str, str] | None = None) -> Outgoing:
        """A tombstone at revision ``expected``."""
        tombstone = {EXPECTED_LAST_SUBJECT_SEQ: str(expected), "KV-Operation": "DEL"}
        return Outgoing(self.subject(key), b"", {**tombstone, **(headers or {})})

    async def _cas_all(self, writes: list[Outgoing]) -> list[int | Exception | None]:
        """Compare-and-set writes, all sent at once: each one's new revision, None on a CAS
        conflict, or the error that left its outcome unknown."""
        results: list[int | Exception | None] = []
        for result in await self.publisher.publish_all(writes):
            conflict = isinstance(result, APIError) and _is_conflict(result)
            results.append(None if conflict else result)
        return results

    async def _cas(self, write: Outgoing) -> int | None:
        """One compare-and-set write: the new revision, or None on a CAS conflict."""
        (result,) = await self._cas_all([write])
        if isinstance(result, Exception):
            raise result
        return result

    # -- acquire ------------------------------------------------------------------------------
    async def acquire_all(
        self,
        run_id: uuid.UUID,
        claims: list[Claim],
        ttl_seconds: int,
        *,
        workcell: str,
        workcell_id: uuid.UUID | None = None,
        known: dict[str, KeyState] | None = None,
    ) -> dict[uuid.UUID, KeyState]:
        """Lease every claimed asset to ``run_id`` or none; returns asset id -> lease state
        (its revision is the fencing token).

        ``known`` holds key states the caller already knows (from a watcher): a key it shows
        held by another run fails the request before anything is written, and a stale entry
        costs one re-read. Keys the run already holds are kept (a redelivered request).
        """
        now = datetime.now(UTC)
        by_key = {lease_key(workcell, claim.asset_id): claim for claim in claims}
        states: dict[str, KeyState | None] = {key: (known or {}).get(key) for key in by_key}
        states |= await self._read_all([key for key, state in states.items() if state is None])
        granted: dict[uuid.UUID, KeyState] = {}
        written: list[tuple[str, int]] = []
        for attempt in range(2):
            taken = [k for k, s in states.items() if s and s.holder and s.holder.run_id != run_id]
            if taken:
                await self._rollback(written)
                raise LeaseConflict(taken)
            todo: list[tuple[str, Holder]] = []
            writes: list[Outgoing] = []
            for key, state in states.items():
                assert state is not None
                if state.holder is not None:  # already ours
                    granted[state.holder.asset_id] = state
                    continue
                claim = by_key[key]
                holder = Holder(
                    run_id, claim.asset_id, claim.requirement, workcell_id, now, now, ttl_seconds
                )
                todo.append((key, holder))
                writes.append(self._put(key, holder, state.revision))
            results = await self._cas_all(writes)
            stale: list[str] = []
            failure: Exception | None = None
            for (key, holder), result in zip(todo, results, strict=True):
                if isinstance(result, Exception):
                    failure = failure or result
                elif result is None:
                    stale.append(key)
                else:
                    granted[holder.asset_id] = KeyState(result, holder)
                    written.append((key, result))
            if failure is not None:
                await self._rollback(written)
                raise failure
            if not stale:
                return granted
            if attempt:  # changed again under us: someone else is writing these keys
                await self._rollback(written)
                raise LeaseConflict(stale)
            states = {**await self._read_all(stale)}
        raise AssertionError("unreachable")

    async def _rollback(self, written: list[tuple[str, int]]) -> None:
        results = await self._cas_all([self._delete(key, token) for key, token in written])
        for (key, token), result in zip(written, results, strict=True):
            if not isinstance(result, int):
                log.warning("rollback of %s@%d failed: %s", key, token, result or "it changed")

    # -- holder operations --------------------------------------------------------------------
    async def renew(self, key: str, token: int, run_id: uuid.UUID) -> int:
        """Extend the lease held at ``token``; returns the new token. Raises ``LeaseLost``."""
        state = await self.read(key)
        holder = state.holder
        if holder is None or holder.run_id != run_id or state.revision != token:
            raise LeaseLost(f"lease {key} is no longer held at token {token}", key=key)
        if holder.held:  # kept for an operator: renewing would bring its TTL back
            raise LeaseLost(f"lease {key} is held for an intervention", key=key)
        renewed = replace(holder, renewed_at=datetime.now(UTC))
        new = await self._cas(self._put(key, renewed, token))
        if new is None:
            raise LeaseLost(f"lease {key} changed while renewing at token {token}", key=key)
        return new

    async def release(
        self, key: str, token: int, *, headers: dict[str, str] | None = None
    ) -> int | None:
        """CAS-delete the lease at revision ``token``: the tombstone's revision, or None if the
        key is no longer that lease."""
        return await self._cas(self._delete(key, token, headers))

    async def release_holder(
        self,
        key: str,
        run_id: uuid.UUID | None,
        *,
        known: KeyState | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[KeyState, int] | None:
        """Release the key if ``run_id`` holds it (any holder if None), at its current token.

        ``known`` is the caller's view of the key: tried first, it saves a read. The holder
        renews without telling anyone, so a stale view costs one re-read; a renewal racing the
        release makes the CAS fail once and is read again. Returns the released lease's last
        state and the tombstone's revision, or None if the run did not hold it.
        """
        state = known
        for _ in range(3):
            if state is None:
                state = await self.read(key)
            if state.holder is None or run_id not in (None, state.holder.run_id):
                return None
            tombstone = await self.release(key, state.revision, headers=headers)
            if tombstone is not None:
                return state, tombstone
            state = None
        raise LeaseLost(f"lease {key} kept changing while being released", key=key)

    async def release_all(
        self, run_id: uuid.UUID, known: dict[str, KeyState]
    ) -> dict[str, tuple[KeyState, int]]:
        """Release every key of ``known`` that ``run_id`` holds, all tombstones sent at once at
        the known revisions; a key whose view was stale (a renewal) gets ``release_holder``.
        Returns key -> (released state, tombstone revision)."""
        keys = [k for k, s in known.items() if s.holder and s.holder.run_id == run_id]
        results = await self._cas_all([self._delete(k, known[k].revision) for k in keys])
        released: dict[str, tuple[KeyState, int]] = {}
        stale: list[str] = []
        for key, result in zip(keys, results, strict=True):
            if isinstance(result, Exception):
                raise result  # unknown outcome: the caller retries; the watcher shows the truth
            if result is None:
                stale.append(key)
            else:
                released[key] = (known[key], result)
        for key in stale:
            if (done := await self.release_holder(key, run_id)) is not None:
                released[key] = done
        return released

    async def hold_all(self, run_id: uuid.UUID, known: dict[str, KeyState]) -> dict[str, KeyState]:
        """Rewrite every lease of ``known`` that ``run_id`` holds without a TTL, at its current
        token, all writes sent at once; a lease already held is left as it is. A stale view (a
        renewal racing the hold) costs a re-read and another try; a key the run no longer holds
        (released, expired) is skipped. Returns key -> the newly held lease's state."""
        held: dict[str, KeyState] = {}
        todo = known
        for _ in range(3):
            todo = {k: s for k, s in todo.items() if _unheld(s, run_id)}
            if not todo:
                return held
            now = datetime.now(UTC)
            values = {
                k: replace(s.holder, renewed_at=now, ttl_seconds=HELD)
                for k, s in todo.items()
                if s.holder is not None
            }
            results = await self._cas_all(
                [self._put(k, v, todo[k].revision) for k, v in values.items()]
            )
            stale: list[str] = []
            for (key, holder), result in zip(values.items(), results, strict=True):
                if isinstance(result, Exception):
                    raise result  # unknown outcome: the caller retries; what was held is skipped
                if result is None:
                    stale.append(key)
                else:
                    held[key] = KeyState(result, holder)
            todo = await self._read_all(stale)
        if todo := {k: s for k, s in todo.items() if _unheld(s, run_id)}:
            raise LeaseConflict(sorted(todo))  # kept changing: retried as a whole
        return held

    async def hold_lapsed(self, key: str, holder: Holder, revision: int) -> KeyState | None:
        """Write ``holder``'s lease back, held, over the key's last message ``revision`` (the
        expiry marker, or the tombstone its expired message left as the last one): a claimed
        lease that ran out stays with its run for an operator. The held lease, or None if the
        key changed meanwhile."""
        held = replace(holder, renewed_at=datetime.now(UTC), ttl_seconds=HELD)
        written = await self._cas(self._put(key, held, revision))
        return None if written is None else KeyState(written, held)

    async def force_release(self, key: str, reason: str) -> tuple[KeyState, int] | None:
        """Release the key whoever holds it; the tombstone records the reason."""
        return await self.release_holder(key, None, headers={FORCE_RELEASE_REASON: reason[:500]})
