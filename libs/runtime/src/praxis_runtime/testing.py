"""In-memory stand-ins for service-layer tests, each held to the real server's behaviour by one
shared contract test (``libs/runtime/tests/test_testing_contracts.py`` runs the same scenario on
both and compares every observation; the unit of work's is in ``test_outbox.py``).

``InMemoryUnitOfWork`` (from ``praxis_runtime.outbox``): what a unit commits lands in
``published``, in order; what a failed unit emitted, nowhere.

``InMemoryKeyValue``: a NATS key-value bucket as nats-py's ``KeyValue`` shows it, for what the
services use: ``get``, ``put``, ``create`` (with a per-key TTL), ``update`` and ``delete``
(compare-and-set on the revision), ``keys``, ``watch``/``watchall``. Revisions are one counter
for the whole bucket (the stream's sequence), a delete is an entry of operation ``DEL``, a key
whose TTL ran out gets a ``PURGE`` marker (a bucket with a marker TTL, as the lease bucket) which
``get`` reads as an entry without a value (nats-py 2.16's trap, kept), and a watcher gets the
latest entry of each key, then ``None``, then every change.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from nats.js import api
from nats.js.errors import (
    BadRequestError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from praxis_runtime.outbox import InMemoryUnitOfWork

__all__ = ["InMemoryKeyValue", "InMemoryObjectStore", "InMemoryUnitOfWork"]

CHUNK_SIZE = 128 * 1024
"""nats-py's object chunk size."""


class _Watcher(KeyValue.KeyWatcher):
    """nats-py's watcher, fed by the bucket instead of a subscription."""

    def __init__(self, bucket: InMemoryKeyValue, pattern: str) -> None:
        super().__init__(None)  # type: ignore[no-untyped-call]
        self._bucket = bucket
        self.pattern = pattern

    def wants(self, key: str) -> bool:
        return _matches(self.pattern, key)

    async def stop(self) -> None:
        self._bucket._watchers.discard(self)
        self._updates.put_nowait(KeyValue.KeyWatcher.STOP_ITER)


def _matches(pattern: str, key: str) -> bool:
    """NATS subject matching on keys: ``*`` one token, ``>`` the rest."""
    if pattern == ">":
        return True
    parts, tokens = pattern.split("."), key.split(".")
    for n, part in enumerate(parts):
        if part == ">":
            return len(tokens) > n
        if n >= len(tokens) or (part != "*" and part != tokens[n]):
            return False
    return len(parts) == len(tokens)


class InMemoryKeyValue:
    def __init__(self, bucket: str = "test", *, marker_ttl: bool = True) -> None:
        self.bucket = bucket
        self.marker_ttl = marker_ttl
        self._revision = 0
        self._latest: dict[str, KeyValue.Entry] = {}
        self._watchers: set[_Watcher] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._markers: set[str] = set()  # keys whose latest entry is a TTL's expiry marker

    # -- writes -------------------------------------------------------------------------------
    def _append(self, key: str, value: bytes, operation: str | None) -> int:
        self._revision += 1
        entry = KeyValue.Entry(
            bucket=self.bucket,
            key=key,
            value=value,
            revision=self._revision,
            delta=0,
            created=None,
            operation=operation,
        )
        self._latest[key] = entry
        self._markers.discard(key)
        if (timer := self._timers.pop(key, None)) is not None:
            timer.cancel()
        for watcher in list(self._watchers):
            if watcher.wants(key):
                watcher._updates.put_nowait(entry)
        return self._revision

    def _live(self, key: str) -> KeyValue.Entry | None:
        entry = self._latest.get(key)
        return entry if entry is not None and entry.operation is None else None

    async def put(self, key: str, value: bytes, validate_keys: bool = True) -> int:
        return self._append(key, value, None)

    async def create(
        self, key: str, value: bytes, validate_keys: bool = True, msg_ttl: float | None = None
    ) -> int:
        if self._live(key) is not None:
            current = self._latest[key].revision
            raise KeyWrongLastSequenceError(description=f"wrong last sequence: {current}")
        revision = self._append(key, value, None)
        if msg_ttl is not None:
            self._expire_after(key, msg_ttl)
        return revision

    async def update(
        self, key: str, value: bytes, last: int | None = None, validate_keys: bool = True
    ) -> int:
        current = self._latest.get(key)
        current_revision = current.revision if current is not None else 0
        if last is not None and last != current_revision:
            raise KeyWrongLastSequenceError(description=f"wrong last sequence: {current_revision}")
        return self._append(key, value, None)

    async def delete(
        self,
        key: str,
        last: int | None = None,
        validate_keys: bool = True,
        msg_ttl: float | None = None,
    ) -> bool:
        current = self._latest.get(key)
        if last is not None and (current is None or current.revision != last):
            raise BadRequestError(description="wrong last sequence")  # as the server answers
        self._append(key, b"", "DEL")
        return True

    def _expire_after(self, key: str, seconds: float) -> None:
        def expire() -> None:
            self._timers.pop(key, None)
            if self._live(key) is not None and self.marker_ttl:
                self._append(key, b"", "PURGE")
                self._markers.add(key)
            elif self._live(key) is not None:
                del self._latest[key]  # gone without a trace

        self._timers[key] = asyncio.get_running_loop().call_later(seconds, expire)

    # -- reads --------------------------------------------------------------------------------
    async def get(
        self, key: str, revision: int | None = None, validate_keys: bool = True
    ) -> KeyValue.Entry:
        if key in self._markers:
            # nats-py 2.16 reads an expiry marker as a live entry without a value (a trap the
            # real bucket sets too: ``praxis_runtime.leases`` reads markers from headers).
            marker = self._latest[key]
            return KeyValue.Entry(self.bucket, key, None, marker.revision, None, None, None)
        entry = self._live(key)
        if entry is None or (revision is not None and entry.revision != revision):
            raise KeyNotFoundError
        return entry

    async def keys(self) -> list[str]:
        """Every live key (nats-py's ``filters`` found no key on this server: not offered)."""
        live = [key for key in self._latest if self._live(key) is not None]
        if not live:
            raise NoKeysError
        return live

    async def watch(self, keys: str, **kwargs: Any) -> KeyValue.KeyWatcher:
        watcher = _Watcher(self, keys)
        for key, entry in sorted(self._latest.items(), key=lambda item: item[1].revision or 0):
            if watcher.wants(key):
                watcher._updates.put_nowait(entry)
        watcher._updates.put_nowait(None)  # the initial values are all there
        self._watchers.add(watcher)
        return watcher

    async def watchall(self, **kwargs: Any) -> KeyValue.KeyWatcher:
        return await self.watch(">", **kwargs)


class InMemoryObjectStore:
    """A NATS object store as nats-py's ``ObjectStore`` shows it, for what the services use:
    ``put`` (replacing), ``get``, ``get_info``, ``delete``, ``list``. Infos carry the same
    size, chunk count and digest as the server's; a deleted object is kept as deleted."""

    def __init__(self, bucket: str = "test") -> None:
        self.bucket = bucket
        self._objects: dict[str, tuple[api.ObjectInfo, bytes]] = {}

    def _info(self, name: str, data: bytes, deleted: bool = False) -> api.ObjectInfo:
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        chunks = 0 if deleted else -(-len(data) // CHUNK_SIZE)
        return api.ObjectInfo(
            name=name,
            bucket=self.bucket,
            nuid=uuid.uuid4().hex,
            size=0 if deleted else len(data),
            mtime=datetime.now(UTC).isoformat(),
            chunks=chunks,
            digest="" if deleted else f"SHA-256={digest}",
            deleted=deleted or None,
        )

    async def put(self, name: str, data: bytes | str, meta: Any = None) -> api.ObjectInfo:
        body = data.encode() if isinstance(data, str) else bytes(data)
        info = self._info(name, body)
        self._objects[name] = (info, body)
        return info

    async def get_info(self, name: str, show_deleted: bool = False) -> api.ObjectInfo:
        found = self._objects.get(name)
        if found is None:
            raise ObjectNotFoundError
        if found[0].deleted and not show_deleted:
            raise ObjectNotFoundError  # what nats-py raises for a deleted object, too
        return found[0]

    async def get(self, name: str, show_deleted: bool = False) -> ObjectStore.ObjectResult:
        info = await self.get_info(name, show_deleted)
        return ObjectStore.ObjectResult(info=info, data=self._objects[name][1])

    async def delete(self, name: str) -> ObjectStore.ObjectResult:
        info = await self.get_info(name)
        self._objects[name] = (self._info(name, b"", deleted=True), b"")
        return ObjectStore.ObjectResult(info=info)

    async def list(self, ignore_deletes: bool = False) -> list[api.ObjectInfo]:
        infos = [info for info, _ in self._objects.values()]
        if ignore_deletes:
            infos = [i for i in infos if not i.deleted]
        if not infos:
            raise NotFoundError
        return infos
