"""The in-memory stand-ins of ``praxis_runtime.testing`` do what the real server does: one
scenario runs against a real NATS key-value bucket and against ``InMemoryKeyValue``, and every
observation (revisions, errors, watch updates, a TTL's expiry) must be the same."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from typing import Any

import nats
import pytest
from nats.js import api

from praxis_runtime.testing import InMemoryKeyValue, InMemoryObjectStore

pytestmark = pytest.mark.integration


async def outcome(call: Awaitable[Any]) -> tuple[str, Any]:
    try:
        return "ok", await call
    except Exception as exc:
        return "error", type(exc).__name__


async def scenario(kv: Any) -> list[tuple[Any, ...]]:
    seen: list[tuple[Any, ...]] = []
    watcher = await kv.watchall()
    seen.append(("initial", await watcher.updates(timeout=5)))
    first = await kv.create("edge.a.1", b"1")
    seen.append(("create", first))
    seen.append(("create again", await outcome(kv.create("edge.a.1", b"2"))))
    seen.append(("update, wrong revision", await outcome(kv.update("edge.a.1", b"2", last=99))))
    second = await kv.update("edge.a.1", b"2", last=first)
    seen.append(("update", second))
    entry = await kv.get("edge.a.1")
    seen.append(("get", entry.key, entry.value, entry.revision, entry.operation))
    seen.append(("get missing", await outcome(kv.get("edge.b.1"))))
    seen.append(("delete, wrong revision", await outcome(kv.delete("edge.a.1", last=first))))
    seen.append(("delete", await kv.delete("edge.a.1", last=second)))
    seen.append(("get deleted", await outcome(kv.get("edge.a.1"))))
    seen.append(("create after delete", await kv.create("edge.a.1", b"3")))
    seen.append(("put", await kv.put("lease.x", b"held")))
    seen.append(("create with a TTL", await kv.create("edge.t.1", b"x", msg_ttl=1)))
    seen.append(("keys", sorted(await kv.keys())))
    for _ in range(7):  # six changes, then the TTL's marker (pushed, about a second later)
        update = await watcher.updates(timeout=10)
        seen.append(("watch", update.key, update.value, update.revision, update.operation))
    seen.append(("get expired", await outcome(kv.get("edge.t.1"))))
    late = await kv.watch("edge.*.1")
    initial = []
    while (update := await late.updates(timeout=5)) is not None:
        initial.append((update.key, update.revision, update.operation))
    seen.append(("a later watcher starts with", initial))
    await watcher.stop()
    await late.stop()
    return seen


async def test_in_memory_key_value_behaves_as_the_server(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        bucket = f"contract_{uuid.uuid4().hex[:8]}"
        real = await js.create_key_value(
            api.KeyValueConfig(bucket=bucket, history=5, limit_marker_ttl=1)
        )
        try:
            expected = await scenario(real)
        finally:
            await js.delete_key_value(bucket)
    finally:
        await nc.close()
    got = await scenario(InMemoryKeyValue(bucket))
    for n, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a == b, (n, a, b)
    assert ("watch", "edge.t.1", b"", 7, "PURGE") in expected  # the scenario saw the expiry


def described(info: Any) -> tuple[Any, ...]:
    """What an object's info says that does not change from one run to the next (not its
    random ``nuid`` nor its ``mtime``)."""
    return (info.name, info.bucket, info.size, info.chunks, info.digest, bool(info.deleted))


async def store_scenario(store: Any) -> list[tuple[Any, ...]]:
    seen: list[tuple[Any, ...]] = []
    big = bytes(range(256)) * 1200  # 300 KiB: more than one chunk
    seen.append(("put", described(await store.put("claims/a", b"small body"))))
    seen.append(("put big", described(await store.put("state/big", big))))
    got = await store.get("state/big")
    seen.append(("get big", got.data == big, described(got.info)))
    seen.append(("get missing", await outcome(store.get("nothing"))))
    seen.append(("replace", described(await store.put("claims/a", b"another"))))
    seen.append(("get replaced", (await store.get("claims/a")).data))
    seen.append(("list", sorted(described(i) for i in await store.list())))
    await store.delete("claims/a")
    seen.append(("get deleted", await outcome(store.get("claims/a"))))
    seen.append(("info deleted", await outcome(store.get_info("claims/a"))))
    shown = await store.get_info("claims/a", show_deleted=True)
    seen.append(("info deleted, shown", described(shown)))
    seen.append(
        ("list without deleted", sorted(i.name for i in await store.list(ignore_deletes=True)))
    )
    seen.append(("put after delete", described(await store.put("claims/a", b"again"))))
    return seen


async def test_in_memory_object_store_behaves_as_the_server(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        bucket = f"contract_{uuid.uuid4().hex[:8]}"
        real = await js.create_object_store(bucket)
        try:
            expected = await store_scenario(real)
        finally:
            await js.delete_object_store(bucket)
    finally:
        await nc.close()
    got = await store_scenario(InMemoryObjectStore(bucket))
    for n, (a, b) in enumerate(zip(got, expected, strict=True)):
        assert a == b, (n, a, b)
