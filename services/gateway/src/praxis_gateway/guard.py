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
- **Depth.** A JSON body nested deeper than ``GATEWAY_MAX_JSON_DEPTH`` levels (64) is refused
  with 400 ``invalid_request`` (``details.max_depth``). Python's parser raises
  ``RecursionError`` somewhere under a thousand levels, which surfaced as a 500; pydantic's,
  in the services, refuses past 200 levels, so a document the gateway accepted could still fail
  at the service. Legitimate payloads stay far below 64: a workcell registration carrying a
  liquid handler's whole PyLabRobot tree nests about a dozen levels. ``property_filters``, JSON
  in a query parameter, is held to the same limit (``load_json``).

The body is read here (bounded), checked, and handed to the route as if unread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from praxis_contracts.errors import InvalidInput, InvalidRequest, PayloadTooLarge, PraxisError
from praxis_gateway.errors import error_response

NUL = "\x00"
MAX_REPORTED = 20
"""Places named in one refusal, at most (a body full of NULs needs no exhaustive list)."""

MAX_JSON_DEPTH = 64
"""Nesting levels a JSON document may have (``[]`` and ``{}`` are one, ``{"a": [1]}`` two):
generous for protocol parameters and PyLabRobot definitions (a dozen levels for a liquid handler
with its deck), far below where the parsers on the way give up (Python's, under 1000 levels;
pydantic's, in the services, at 200)."""

MAX_JSON_DEPTH_CEILING = 128
"""The largest ``GATEWAY_MAX_JSON_DEPTH`` allowed: a service receives the body inside its request
message, a few levels deeper, and its parser stops at 200."""


class InputGuard:
    """ASGI middleware: refuse oversized bodies (413), JSON nested too deep (400) and NUL
    characters (422)."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, max_json_depth: int = MAX_JSON_DEPTH
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            body = await self._read_body(scope, receive)
            if body is None:
                return  # the client went away before it finished sending: nobody to answer
            parsed = _json_body(scope, body, self.max_json_depth)
            reject_nul_in_request(scope, parsed)
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


def load_json(text: str | bytes, *, max_depth: int, field: str) -> Any:
    """``text`` parsed, or ``InvalidRequest`` (400) naming ``field`` if it nests deeper than
    ``max_depth``; malformed JSON raises ``ValueError`` for the caller to answer as it does.

    Bounded without a parser of our own: Python's C parser recurses, and gives up with a
    ``RecursionError`` as soon as it passes the interpreter's recursion limit (under a thousand
    levels, so ``[`` times 50 000 fails after its first thousand bytes); anything it does parse
    is measured without recursion (``json_depth``)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise _too_deep(field, max_depth) from None
    if json_depth(value, stop_past=max_depth) > max_depth:
        raise _too_deep(field, max_depth)
    return value


def json_depth(value: Any, *, stop_past: int | None = None) -> int:
    """How many levels of arrays and objects ``value`` nests (0 for a scalar); with
    ``stop_past``, at most ``stop_past + 1`` (the walk ends there).

    Level by level, without recursion (the point is documents too deep to recurse into), and
    fast: each level's values are gathered with ``list.extend``, not one Python step each."""
    level = 0
    items = [value]
    while containers := [item for item in items if isinstance(item, dict | list)]:
        level += 1
        if stop_past is not None and level > stop_past:
            break
        items = []
        for container in containers:
            items.extend(container.values() if isinstance(container, dict) else container)
    return level


def _too_deep(field: str, max_depth: int) -> InvalidRequest:
    return InvalidRequest(
        f"{field}: JSON nested deeper than {max_depth} levels",
        field=field,
        max_depth=max_depth,
    )


class _Unparsed:
    """No JSON body to walk: none, not JSON, or malformed (the route answers 400 for that)."""


UNPARSED = _Unparsed()


def _json_body(scope: Scope, body: bytes, max_depth: int) -> Any:
    """The body parsed, if it is one the route would parse as JSON; ``InvalidRequest`` if it
    nests too deep (malformed or not)."""
    if not body or not _is_json(scope):
        return UNPARSED
    try:
        return load_json(body, max_depth=max_depth, field="body")
    except ValueError:
        return UNPARSED  # malformed JSON is the route's to refuse (400 invalid_request)


def reject_nul_in_request(scope: Scope, body: Any = UNPARSED) -> None:
    """``InvalidInput`` naming every place (up to ``MAX_REPORTED``) a NUL occurs: the path,
    query parameters (names and values), and strings and keys of the parsed JSON ``body``."""
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


def _nul_places(scope: Scope, body: Any) -> Iterator[str]:
    if NUL in scope.get("path", ""):
        yield "path"
    query = scope.get("query_string", b"").decode("latin-1")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if NUL in name or NUL in value:
            yield f"query.{_shown(name)}"
    if body is not UNPARSED:
        yield from nul_locations(body, "body")


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


__all__ = [
    "MAX_JSON_DEPTH",
    "InputGuard",
    "json_depth",
    "load_json",
    "nul_locations",
    "reject_nul_in_request",
]
