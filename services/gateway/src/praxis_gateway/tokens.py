"""API tokens in the NATS KV bucket ``praxis_api_tokens``: a thin shell over ``auth.TokenIndex``.

Each gateway watches the bucket (the watcher replays every record, then pushes each change), so
verifying a token is a lookup in local memory and a revocation written by one replica reaches
every replica as soon as NATS delivers it. ``last_used_at`` is written back at most once a
minute per token, in the background and by compare-and-set on the revision this gateway knows:
a touch racing a revocation loses (and is simply skipped) instead of undoing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import (
    BadRequestError,
    KeyDeletedError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
)
from nats.js.kv import KeyValue

from praxis_contracts.errors import NotFound
from praxis_contracts.topology import API_TOKENS
from praxis_gateway.auth import (
    Principal,
    Scope,
    TokenIndex,
    TokenRecord,
    due_for_touch,
    new_record,
    new_token,
)

log = logging.getLogger(__name__)

_CAS_CONFLICT = {10071, 10164}
"""nats-server's error codes for a failed compare-and-set (see the KV notes)."""
CAS_ATTEMPTS = 5


def _key(token_id: uuid.UUID) -> str:
    return token_id.hex


def _is_conflict(exc: Exception) -> bool:
    if isinstance(exc, KeyWrongLastSequenceError):
        return True
    return isinstance(exc, BadRequestError) and exc.err_code in _CAS_CONFLICT


class TokenStore:
    """Create, list, revoke and verify API tokens; ``start()`` before use, ``stop()`` after."""

    def __init__(
        self, js: JetStreamContext, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    ) -> None:
        self.js = js
        self.clock = clock
        self.index = TokenIndex()
        self.ready = asyncio.Event()
        self._kv: KeyValue | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        self._touching: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._seen = 0
        self._changed = asyncio.Condition()

    @property
    def kv(self) -> KeyValue:
        assert self._kv is not None, "TokenStore.start() first"
        return self._kv

    async def start(self) -> None:
        """Watch the bucket; returns once every stored token has been read."""
        self._kv = await self.js.key_value(API_TOKENS.bucket)
        self._watcher = await self._kv.watchall()
        self._task = asyncio.create_task(self._watch(self._watcher), name="api-token-watch")
        await self.ready.wait()

    async def stop(self) -> None:
        if self._watcher is not None:
            with contextlib.suppress(Exception):
                await self._watcher.stop()  # type: ignore[no-untyped-call]
        tasks = [t for t in [self._task, *self._touching.values()] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def caught_up(self, revision: int) -> None:
        """Wait until the watcher has applied the bucket up to ``revision`` (a write made
        through another gateway is then visible here)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._seen >= revision)

    async def _watch(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is None:  # every stored token has been read
                self.ready.set()
                continue
            try:
                self._observe(entry)
            except Exception:
                log.exception("API token record %s not understood", entry.key)
            async with self._changed:
                self._seen = max(self._seen, entry.revision or 0)
                self._changed.notify_all()

    def _observe(self, entry: KeyValue.Entry) -> None:
        token_id = uuid.UUID(hex=entry.key)
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self.index.remove(token_id)
            return
        self.index.put(TokenRecord.model_validate_json(entry.value), entry.revision or 0)

    # -- use ----------------------------------------------------------------------------------
    def verify(self, token: str) -> Principal:
        """The principal of a usable API token (``Unauthenticated`` otherwise)."""
        now = self.clock()
        record = self.index.verify(token, now)
        if due_for_touch(record, now) and record.id not in self._touching:
            task = asyncio.create_task(self._touch(record.id, now), name="api-token-touch")
            self._touching[record.id] = task
            task.add_done_callback(lambda _: self._touching.pop(record.id, None))
        return record.principal()

    async def _touch(self, token_id: uuid.UUID, now: datetime) -> None:
        found = self.index.get(token_id)
        if found is None:
            return
        record, revision = found
        if not record.usable_at(now) or not due_for_touch(record, now):
            return
        touched = record.model_copy(update={"last_used_at": now})
        try:
            self.index.put(touched, await self._write(touched, revision))
        except Exception as exc:  # a conflict (a revocation won) or an outage: next use retries
            log.info("last_used_at of token %s not written: %s", token_id, exc)

    # -- administration -----------------------------------------------------------------------
    async def create(
        self,
        *,
        name: str,
        scopes: Iterable[Scope],
        created_by: str,
        expires_in_seconds: int | None = None,
    ) -> tuple[TokenRecord, str]:
        """A new token: its record and its secret (returned here once, stored nowhere)."""
        token_id = uuid.uuid4()
        token = new_token(token_id)
        record = new_record(
            token_id,
            token,
            name=name,
            scopes=scopes,
            created_by=created_by,
            now=self.clock(),
            expires_in_seconds=expires_in_seconds,
        )
        revision = await self.kv.create(_key(token_id), record.model_dump_json().encode())
        self.index.put(record, revision)  # usable here at once; the watcher tells the others
        return record, token

    def list(self) -> list[TokenRecord]:
        return self.index.records()

    async def revoke(self, token_id: uuid.UUID) -> TokenRecord:
        """Mark the token revoked (kept, so the list shows when). Revoking twice keeps the
        first time."""
        for _ in range(CAS_ATTEMPTS):
            record, revision = await self._read(token_id)
            if record.revoked_at is not None:
                return record
            revoked = record.model_copy(update={"revoked_at": self.clock()})
            try:
                self.index.put(revoked, await self._write(revoked, revision))
                return revoked
            except Exception as exc:
                if not _is_conflict(exc):
                    raise
        raise RuntimeError(f"token {token_id}: too many concurrent changes, try again")

    async def _read(self, token_id: uuid.UUID) -> tuple[TokenRecord, int]:
        try:
            entry = await self.kv.get(_key(token_id))
        except (KeyNotFoundError, KeyDeletedError) as exc:
            raise NotFound(f"API token {token_id} not found", token_id=str(token_id)) from exc
        if not entry.value:
            raise NotFound(f"API token {token_id} not found", token_id=str(token_id))
        return TokenRecord.model_validate_json(entry.value), entry.revision or 0

    async def _write(self, record: TokenRecord, revision: int) -> int:
        result: Any = await self.kv.update(
            _key(record.id), record.model_dump_json().encode(), last=revision
        )
        return int(result)


__all__ = ["TokenStore"]
