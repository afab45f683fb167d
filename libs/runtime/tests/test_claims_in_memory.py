"""Claims (large bodies passed by reference) on ``InMemoryObjectStore``, held to the real
object store by ``test_testing_contracts``: no server needed."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from praxis_contracts import headers as h
from praxis_contracts.errors import InvalidRequest
from praxis_contracts.topology import claims as claims_store
from praxis_runtime.claims import Claims
from praxis_runtime.testing import InMemoryObjectStore


class Stores:
    """The part of a JetStream context claims use: object stores by bucket."""

    def __init__(self) -> None:
        self.buckets: dict[str, InMemoryObjectStore] = {}

    async def object_store(self, bucket: str) -> Any:
        return self.buckets.setdefault(bucket, InMemoryObjectStore(bucket))


async def test_a_large_body_travels_by_reference_and_only_as_sent() -> None:
    js = Stores()
    sender = Claims(js, "scheduler", threshold=1024)  # type: ignore[arg-type]
    receiver = Claims(js, "gateway", threshold=1024)  # type: ignore[arg-type]
    body = b'{"state": "' + b"x" * 500_000 + b'"}'
    headers: dict[str, str] = {}
    assert await sender.check_in(b"small", headers) == b"small" and headers == {}
    assert await sender.check_in(body, headers) == b""
    assert headers[h.CLAIM].startswith("scheduler/")
    assert await receiver.check_out(b"", headers) == body

    store = js.buckets[claims_store("scheduler").bucket]
    name = headers[h.CLAIM].rpartition("/")[2]
    await store.put(name, zlib.compress(b'{"state": "other"}'))  # not what the sender stored
    with pytest.raises(InvalidRequest, match="not the one its sender stored"):
        await receiver.check_out(b"", headers)
    await store.delete(name)  # its TTL ran out
    with pytest.raises(InvalidRequest, match="is gone"):
        await receiver.check_out(b"", headers)
