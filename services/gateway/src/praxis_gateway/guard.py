"""Input the services must never see: bodies over the size limit, and NUL characters.

``InputGuard`` is a plain ASGI middleware in front of every route, so no route can forget it:

- **Size.** A body larger than ``GATEWAY_MAX_BODY_BYTES`` is refused with 413
  ``payload_too_large`` before anything parses it: at once when ``Content-Length`` says so,
  otherwise as soon as the bytes received pass the limit (chunked bodies have no length). The
  gateway forwards each body as one NATS message, and NATS refuses messages over its
  ``max_payload`` (1 MB by default), so a larger body could never reach a service anyway; it
  used to fail there as a plain-text 500.
- **NUL.** PostgreSQL cannot store U+0000 in ``text`` or ``jsonb``; a NUL reaching a service
  made the write fail as ``internal`` (500). Any string in the parsed JSON body (keys too), in
  the query string or in the path that contains one is refused with 422 ``invalid_input``
  naming where it is. The check walks the parsed JSON, so it covers every route and every field,
  nested or not, without per-route code.

The body is read here (bounded), checked, and handed to the route as if unread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from praxis_contracts.errors import InvalidInput, PayloadTooLarge, PraxisError
from praxis_gateway.errors import error_response

NUL = "\x00"
MAX_REPORTED = 20
"""Places named in one refusal, at most (a body full of NULs needs no exhaustive list)."""


class InputGuard:
    """ASGI middleware: refuse oversized bodies (413) and NUL characters (422)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                return  # the client went away before it finished sending: nobody to answer
            reject_nul_in_request(scope, body)
        except PraxisError as exc:
            await error_response(exc.to_reply())(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body (None if the client disconnected first), or ``PayloadTooLarge`` as
        soon as it is known to be too large."""
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            raise _too_large(self.max_body_bytes, declared)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _too_large(self.max_body_bytes, None)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def reject_nul_in_request(scope: Scope, body: bytes) -> None:
    """``InvalidInput`` naming every place (up to ``MAX_REPORTED``) a NUL occurs: the path,
    query parameters (names and values), and strings and keys of a JSON body."""
    places = [p for _, p in zip(range(MAX_REPORTED), _nul_places(scope, body), strict=False)]
    if places:
        raise InvalidInput(
            f"NUL characters (\\u0000) are not allowed: {', '.join(places)}",
            field=places[0],
            errors=[{"loc": p, "msg": "contains a NUL character (\\u0000)"} for p in places],
        )


def nul_locations(value: Any, loc: str) -> Iterator[str]:
    """Dotted locations (``body.assets.0.name``) of every string or key in ``value`` holding a
    NUL (shown as ``\\u0000`` in a key's location)."""
    if isinstance(value, str):
        if NUL in value:
            yield loc
    elif isinstance(value, dict):
        for key, item in value.items():
            here = f"{loc}.{_shown(key)}"
            if NUL in key:
                yield here
            yield from nul_locations(item, here)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from nul_locations(item, f"{loc}.{i}")


def _shown(text: str) -> str:
    return text.replace(NUL, "\\u0000")


def _nul_places(scope: Scope, body: bytes) -> Iterator[str]:
    if NUL in scope.get("path", ""):
        yield "path"
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if NUL in name or NUL in value:
            yield f"query.{_shown(name)}"
    if body and _is_json(scope):
        try:
            parsed = json.loads(body)
        except ValueError:
            return  # malformed JSON is the route's to refuse (400 invalid_request)
        yield from nul_locations(parsed, "body")


def _is_json(scope: Scope) -> bool:
    """``application/json``, ``application/*+json``, or no content type at all (what FastAPI may
    parse as JSON)."""
    content_type = _header(scope, b"content-type")
    if content_type is None:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # the server refuses such a request; counting the bytes covers the rest


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _too_large(limit: int, declared: int | None) -> PayloadTooLarge:
    size = f"{declared} bytes" if declared is not None else "more than that"
    return PayloadTooLarge(
        f"request body too large: {size}, the limit is {limit} bytes",
        limit=limit,
        **({"content_length": declared} if declared is not None else {}),
    )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that yields the body already read, then defers to the real one (which then
    reports the disconnect a streaming response listens for)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


__all__ = ["InputGuard", "nul_locations", "reject_nul_in_request"]
