"""Claim checks: a request or reply too large for one NATS message travels by reference.

nats-server refuses a message over its ``max_payload`` (1 MB by default). Some replies are
legitimately larger: the layout of a workcell with sixty 96-well plates is about 6 MB of JSON,
because every well's geometry is in its plate's PyLabRobot definition. Paging would split what an
orchestrator needs in one piece, so instead the body goes to the sender's own claims store
(``praxis_claims_<identity>``, chunked by the server, no size limit of its own), compressed
(PyLabRobot JSON shrinks ~30x: 6.4 MB -> 230 KB), and the message carries only
``<identity>/<object>`` in the ``Praxis-Claim`` header. Only the sender may write (or delete) its
store; receivers read it. A claim is read once and expires with the store's TTL (ten minutes); a
request nobody answered is deleted by its sender at once.

Bodies up to ``CLAIM_THRESHOLD`` travel inline as before: most messages are far smaller, and a
round trip to the object store costs more than sending them. Bodies over ``MAX_CLAIM_BYTES`` are
refused by the caller (``reply_too_large``): past that a smaller page is the answer, not a
bigger message.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import uuid
import zlib

from nats.js import JetStreamContext
from nats.js.object_store import ObjectStore

from praxis_contracts import headers as h
from praxis_contracts.errors import InvalidRequest
from praxis_contracts.topology import claims

log = logging.getLogger(__name__)

CLAIM_THRESHOLD = 256 * 1024
"""Bodies larger than this go through the object store."""

MAX_CLAIM_BYTES = 64 * 1024 * 1024
"""No body larger than this (uncompressed) is sent at all, claimed or not."""


class Claims:
    """Check bodies in and out of the claims object store."""

    def __init__(
        self,
        js: JetStreamContext,
        owner: str,
        *,
        threshold: int = CLAIM_THRESHOLD,
        limit: int = MAX_CLAIM_BYTES,
        timeout: float = 5.0,
    ) -> None:
        self.js = js
        self.owner = owner
        self.threshold = threshold
        self.limit = limit
        self.timeout = timeout
        self._stores: dict[str, ObjectStore] = {}
        self._cleanup: set[asyncio.Task[None]] = set()

    async def store(self, owner: str | None = None) -> ObjectStore:
        """The claims store of ``owner`` (default: this sender's own)."""
        owner = owner or self.owner
        if owner not in self._stores:
            self._stores[owner] = await self.js.object_store(claims(owner).bucket)
        return self._stores[owner]

    def needed(self, body: bytes) -> bool:
        return len(body) > self.threshold

    async def check_in(self, body: bytes, headers: dict[str, str]) -> bytes:
        """``body`` itself if it is small; else store it, name it in ``headers`` and return the
        empty body to send instead."""
        if not self.needed(body):
            return body
        return await self.put(body, headers)

    async def put(self, body: bytes, headers: dict[str, str]) -> bytes:
        """Store ``body`` whatever its size; see ``check_in``."""
        name = uuid.uuid4().hex
        packed = zlib.compress(body, 1)  # level 1: fast on PyLabRobot's JSON (README)
        async with asyncio.timeout(self.timeout):
            await (await self.store()).put(name, packed)
        headers[h.CLAIM] = f"{self.owner}/{name}"
        # The receiver checks the body is the one the sender sent: an object replaced in the
        # store afterwards (only its owner may write it) is refused, not taken for it.
        headers[h.CLAIM_SHA256] = hashlib.sha256(body).hexdigest()
        log.debug("claimed %d bytes (%d stored) as %s", len(body), len(packed), name)
        return b""

    async def check_out(self, body: bytes, headers: dict[str, str] | None) -> bytes:
        """The body a message stands for: fetched from its sender's store if it carries a
        claim (``<identity>/<object>``)."""
        claim = (headers or {}).get(h.CLAIM)
        if not claim:
            return body
        owner, _, name = claim.rpartition("/")
        if not owner or not name:
            raise InvalidRequest(f"malformed claim {claim!r}")
        try:
            async with asyncio.timeout(self.timeout):
                result = await (await self.store(owner)).get(name)
        except Exception as exc:
            if _missing(exc):
                raise InvalidRequest(f"claimed body {claim} is gone (expired)") from exc
            raise
        unpacked = _bounded_decompress(result.data or b"", self.limit)
        if unpacked is None:
            raise InvalidRequest(f"claimed body {claim} is over {self.limit} bytes")
        digest = (headers or {}).get(h.CLAIM_SHA256)
        if digest != hashlib.sha256(unpacked).hexdigest():
            raise InvalidRequest(f"claimed body {claim} is not the one its sender stored")
        return unpacked

    def discard(self, claim: str) -> None:
        """Delete one of this sender's claims in the background (never to be read)."""
        owner, _, name = claim.rpartition("/")
        if owner != self.owner:
            return  # only the sender may delete; the TTL removes the rest
        task = asyncio.create_task(self._delete(name))
        self._cleanup.add(task)
        task.add_done_callback(self._cleanup.discard)

    async def _delete(self, name: str) -> None:
        try:
            await (await self.store()).delete(name)
        except Exception as exc:  # the bucket's TTL removes it anyway
            log.debug("could not delete claim %s: %s", name, exc)


def _bounded_decompress(data: bytes, limit: int) -> bytes | None:
    """``data`` inflated, or None past ``limit`` bytes (a small object must not become a huge
    one in memory)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or inflater.unconsumed_tail:
        return None
    return out


def _missing(exc: Exception) -> bool:
    return "not found" in str(exc).lower() or type(exc).__name__.endswith("NotFoundError")


__all__ = ["CLAIM_THRESHOLD", "MAX_CLAIM_BYTES", "Claims"]
