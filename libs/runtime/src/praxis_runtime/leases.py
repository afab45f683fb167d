"""Leases on assets in a NATS KV bucket: one key per asset, revision = fencing token.

All-or-nothing without hold-and-wait: a run's keys are written with per-key compare-and-set
(``Nats-Expected-Last-Subject-Sequence``), all at once; if any key is taken, every key this attempt
wrote is rolled back (compare-and-set delete on our own revision) before the request waits. A run
therefore never holds part of its set while waiting for the rest, so no deadlock can form.

Why not ADR-50 atomic batches: on file storage each batch commit is synced to disk (3-5 ms) and
commits serialise per stream (~200-400/s, 16 concurrent batches p50 57-70 ms; shared notes),
which caps the whole bucket below the 500 reservations/s we need. Per-key CAS costs ~0.3 ms a key
and the writes of one request go out concurrently, so a 4-asset grant is about one round trip.
The price is that a competing reader can briefly see keys of a set that is then rolled back; it
never sees an asset with two live holders, which is the guarantee that matters (and the one the
concurrency test checks from the bucket's history).

The revision of the current lease message is the fencing token: renewing is a CAS write on it
(the token moves forward), releasing a CAS delete on it. A holder whose lease expired, was
force-released or was taken over can neither renew nor release, because its token is stale.

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
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from praxis_contracts.errors import LeaseLost

log = logging.getLogger(__name__)

CAS_CONFLICT_CODES = frozenset({10071, 10164})
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
FORCE_RELEASE_REASON = "Praxis-Force-Release-Reason"


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

    @property
    def expires_at(self) -> datetime:
        return self.renewed_at + timedelta(seconds=self.ttl_seconds)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "run_id": str(self.run_id),
                "asset_id": str(self.asset_id),
                "requirement": self.requirement,
                "workcell_id": str(self.workcell_id) if self.workcell_id else None,
                "acquired_at": self.acquired_at.isoformat(),
                "renewed_at": self.renewed_at.isoformat(),
                "ttl_seconds": self.ttl_seconds,
            }
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
    )


@dataclass(frozen=True)
class KeyState:
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


def lease_key(asset_id: uuid.UUID) -> str:
    return f"asset.{asset_id}"


def asset_of(key: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(key.removeprefix("asset.")) if key.startswith("asset.") else None
    except ValueError:
        return None


def is_tombstone(headers: dict[str, str] | None) -> bool:
    headers = headers or {}
    return headers.get("KV-Operation") in ("DEL", "PURGE") or "Nats-Marker-Reason" in headers


def _is_conflict(exc: APIError) -> bool:
    return exc.err_code in CAS_CONFLICT_CODES


class LeaseStore:
    def __init__(self, js: JetStreamContext, bucket: str) -> None:
        self.js = js
        self.bucket = bucket
        self.stream = f"KV_{bucket}"

    def subject(self, key: str) -> str:
        return f"$KV.{self.bucket}.{key}"

    async def read(self, key: str) -> KeyState:
        try:
            msg = await self.js.get_msg(self.stream, subject=self.subject(key))
        except NotFoundError:
            return KeyState(0, None)
        if is_tombstone(msg.headers) or not msg.data:
            return KeyState(msg.seq or 0, None)
        return KeyState(msg.seq or 0, decode_holder(msg.data))

    async def _cas(
        self, key: str, payload: bytes, expected: int, *, ttl: int | None, headers: dict[str, str]
    ) -> int | None:
        """Write at revision ``expected``; the new revision, or None on a CAS conflict."""
        try:
            ack = await self.js.publish(
                self.subject(key),
                payload,
                headers={EXPECTED_LAST_SUBJECT_SEQ: str(expected), **headers},
                msg_ttl=ttl,
            )
        except APIError as exc:
            if _is_conflict(exc):
                return None
            raise
        return int(ack.seq)

    # -- acquire ------------------------------------------------------------------------------
    async def acquire_all(
        self,
        run_id: uuid.UUID,
        claims: list[Claim],
        ttl_seconds: int,
        *,
        workcell_id: uuid.UUID | None = None,
        known: dict[str, KeyState] | None = None,
    ) -> dict[uuid.UUID, KeyState]:
        """Lease every claimed asset to ``run_id`` or none; returns asset id -> lease state
        (its revision is the fencing token).

        ``known`` holds key states the caller already knows (from a watcher); a stale entry
        costs one re-read. Keys the run already holds are kept (a redelivered request).
        """
        now = datetime.now(UTC)
        results = await asyncio.gather(
            *(
                self._acquire(claim, run_id, ttl_seconds, workcell_id, now, (known or {}))
                for claim in claims
            ),
            return_exceptions=True,
        )
        granted: dict[uuid.UUID, KeyState] = {}
        written: list[tuple[str, int]] = []
        conflicts: list[str] = []
        failure: BaseException | None = None
        for claim, result in zip(claims, results, strict=True):
            if isinstance(result, LeaseConflict):
                conflicts.extend(result.keys)
            elif isinstance(result, BaseException):
                failure = failure or result
            else:
                state, fresh = result
                granted[claim.asset_id] = state
                if fresh:
                    written.append((lease_key(claim.asset_id), state.revision))
        if conflicts or failure is not None:
            await self._rollback(written)
            if failure is not None:
                raise failure
            raise LeaseConflict(conflicts)
        return granted

    async def _acquire(
        self,
        claim: Claim,
        run_id: uuid.UUID,
        ttl: int,
        workcell_id: uuid.UUID | None,
        now: datetime,
        known: dict[str, KeyState],
    ) -> tuple[KeyState, bool]:
        key = lease_key(claim.asset_id)
        state = known.get(key)
        for attempt in range(2):
            if state is None or attempt:
                state = await self.read(key)
            if state.holder is not None:
                if state.holder.run_id == run_id:
                    return state, False  # already ours
                raise LeaseConflict([key])
            holder = Holder(run_id, claim.asset_id, claim.requirement, workcell_id, now, now, ttl)
            token = await self._cas(key, holder.encode(), state.revision, ttl=ttl, headers={})
            if token is not None:
                return KeyState(token, holder), True
        raise LeaseConflict([key])

    async def _rollback(self, written: list[tuple[str, int]]) -> None:
        for key, token in written:
            if not await self.release(key, token):
                log.warning("rollback of %s@%d found it changed", key, token)

    # -- holder operations --------------------------------------------------------------------
    async def renew(self, key: str, token: int, run_id: uuid.UUID) -> int:
        """Extend the lease held at ``token``; returns the new token. Raises ``LeaseLost``."""
        state = await self.read(key)
        holder = state.holder
        if holder is None or holder.run_id != run_id or state.revision != token:
            raise LeaseLost(f"lease {key} is no longer held at token {token}", key=key)
        renewed = replace(holder, renewed_at=datetime.now(UTC))
        new = await self._cas(key, renewed.encode(), token, ttl=holder.ttl_seconds, headers={})
        if new is None:
            raise LeaseLost(f"lease {key} changed while renewing at token {token}", key=key)
        return new

    async def release(
        self, key: str, token: int, *, headers: dict[str, str] | None = None
    ) -> int | None:
        """CAS-delete the lease at revision ``token``: the tombstone's revision, or None if the
        key is no longer that lease."""
        delete = {"KV-Operation": "DEL", **(headers or {})}
        return await self._cas(key, b"", token, ttl=None, headers=delete)

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

    async def force_release(self, key: str, reason: str) -> tuple[KeyState, int] | None:
        """Release the key whoever holds it; the tombstone records the reason."""
        return await self.release_holder(key, None, headers={FORCE_RELEASE_REASON: reason[:500]})
