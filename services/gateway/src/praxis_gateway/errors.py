"""Domain error codes -> HTTP statuses (one table), and the error response body.

Every error the gateway answers has the one shape, ``{"code", "message", "retryable",
"details", "correlation_id"}``, whoever raised it: a service (``PraxisError`` off the bus), the
gateway's middleware (401, 413, 422, 400), FastAPI's validation (400), Starlette's routing (404
for an unknown path, 405 for a method the route does not take) or a bug (500). The
``correlation_id`` is the request's, the one in the ``X-Correlation-Id`` response header.

What services say reaches the caller, but not where the server keeps its files: filesystem
paths in a service's error (a git failure quoting a mirror's folder, a discovery problem quoting
a module's file) are cut to their last component here (``scrub``), in one place for all.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import nats.errors
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.routing import Match

from praxis_contracts.errors import (
    ErrorCode,
    ErrorReply,
    InternalError,
    PayloadTooLarge,
    PraxisError,
)
from praxis_runtime.logging import correlation_id_var

log = logging.getLogger(__name__)

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.INVALID_PARAMETERS: 422,
    ErrorCode.INVALID_INPUT: 422,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.INVALID_TRANSITION: 409,
    ErrorCode.UNKNOWN_ASSET_TYPE: 422,
    ErrorCode.NO_MATCHING_ASSETS: 422,  # the submission can never be bound as stated
    ErrorCode.ASSETS_UNAVAILABLE: 409,  # an immediate run: not now (details name who holds)
    ErrorCode.DEADLINE_PASSED: 409,
    ErrorCode.PROTOCOL_LOAD_FAILED: 422,
    ErrorCode.SOURCE_SYNC_FAILED: 502,
    ErrorCode.SOURCE_REFUSED: 422,
    ErrorCode.LEASE_LOST: 409,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    # Not 413 (that is a request body too large): the request was fine, the answer is what
    # NATS cannot carry (over its max payload). 507: the server cannot hold the representation
    # the request needs; a 5xx, not the client's body, and the message says to ask for less.
    ErrorCode.REPLY_TOO_LARGE: 507,
    ErrorCode.INTERNAL: 500,
}


CHALLENGE = 'Bearer realm="praxis"'
"""``WWW-Authenticate`` of every 401 (RFC 6750): the API takes bearer tokens."""


def error_response(
    reply: ErrorReply, status: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``reply`` in the error shape with the request's correlation id; its status from the
    table unless ``status`` is given (an HTTP error Starlette raised keeps its own)."""
    body = reply.model_dump(mode="json")
    body["correlation_id"] = correlation_id_var.get()
    headers = dict(headers or {})
    if reply.code == ErrorCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = CHALLENGE
    return JSONResponse(
        body, status_code=status or HTTP_STATUS.get(reply.code, 500), headers=headers or None
    )


async def on_praxis_error(_: Request, exc: Exception) -> JSONResponse:
    """A domain error, the gateway's own or a service's: its message and details scrubbed of
    server paths (see ``scrub``)."""
    assert isinstance(exc, PraxisError)
    reply = exc.to_reply()
    return error_response(
        reply.model_copy(update={"message": scrub(reply.message), "details": scrub(reply.details)})
    )


_CODE_OF_STATUS: dict[int, ErrorCode] = {
    400: ErrorCode.INVALID_REQUEST,
    401: ErrorCode.UNAUTHENTICATED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    409: ErrorCode.CONFLICT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    503: ErrorCode.UNAVAILABLE,
    504: ErrorCode.TIMEOUT,
}


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own HTTP errors (an unknown path, a method the route does not
    take, a body FastAPI could not read) in the error shape, not ``{"detail": ...}``; their
    status and headers (``Allow`` of a 405) kept."""
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    headers = dict(exc.headers or {})
    code = _CODE_OF_STATUS.get(status) or (
        ErrorCode.INVALID_REQUEST if status < 500 else ErrorCode.INTERNAL
    )
    details: dict[str, Any] = {}
    if status == 404:
        message = f"no such route: {request.method} {request.url.path[:200]}"
    elif status == 405:
        allowed = _allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        details["allowed"] = allowed
        message = f"{request.method} is not allowed here (allowed: {', '.join(allowed)})"
    else:  # e.g. FastAPI's 400 for a body it could not read; Starlette's phrase by default
        message = str(exc.detail)
    reply = ErrorReply(code=code, message=message, details=details)
    return error_response(reply, status=status, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path. Starlette's own ``Allow`` names only the
    first route matching the path (``GET /protocols/runs`` and ``POST /protocols/runs`` are two
    routes)."""
    allowed: set[str] = set()
    for route in iter_route_contexts(request.app.router.routes):
        if route.matches(request.scope)[0] != Match.NONE:
            allowed |= route.methods or set()
    return sorted(allowed)


async def on_validation_error(_: Request, exc: Exception) -> JSONResponse:
    """Malformed HTTP input, or input that a contract model rejects, is a 400 with the reasons."""
    assert isinstance(exc, RequestValidationError | ValidationError)
    errors = exc.errors(include_url=False) if isinstance(exc, ValidationError) else exc.errors()
    problems = [
        {"loc": ".".join(map(str, e.get("loc", ()))), "msg": e.get("msg", "")} for e in errors
    ]
    summary = "; ".join(f"{p['loc']}: {p['msg']}" for p in problems[:5])
    return error_response(
        ErrorReply(
            code=ErrorCode.INVALID_REQUEST,
            message=f"invalid request: {summary}",
            details={"errors": problems},
        )
    )


async def on_payload_too_large(_: Request, exc: Exception) -> JSONResponse:
    """A request that grew past the NATS server's ``max_payload`` once wrapped for the bus (a
    body just under ``GATEWAY_MAX_BODY_BYTES`` with a server configured below it): 413, not 500."""
    assert isinstance(exc, nats.errors.MaxPayloadError)
    return error_response(
        PayloadTooLarge(f"request too large for the message bus: {exc}").to_reply()
    )


async def on_unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    """Anything else is a 500 in the one error shape; the traceback goes to the log only."""
    log.error("unhandled error in the gateway", exc_info=exc)
    return error_response(
        InternalError(f"{type(exc).__name__} while handling the request").to_reply()
    )


# -- no server paths in answers ------------------------------------------------------------------
_SEGMENT = r"[^\s/'\"`()<>,;]"
_PATH = re.compile(
    r"(?<![\w.:/~@-])"  # not inside a URL (https://host/a/b), a word or a longer path
    rf"(?:/{_SEGMENT}+/|~/|\.\.?/|\.{_SEGMENT}+/)"  # /abs/..., ~/, ./, ../, .praxis/
    rf"(?:{_SEGMENT}+/)*"
    rf"({_SEGMENT}*)"
)
_TRACEBACK = "Traceback (most recent call last)"


def scrub(value: Any) -> Any:
    """``value`` (a message, or details: strings nested in dicts and lists) with every
    filesystem path of two components or more cut to its last one (``/srv/praxis/mirrors/abc``
    -> ``…/abc``) and any Python traceback dropped.

    Services mean their messages for the caller, but some quote text they did not write: git's
    errors name the mirror's folder, discovery problems a module's file. Scrubbing here, where
    every service's error leaves for the outside, covers them all. The last component stays, so
    a message still says what failed (``…/no-such-repo``); URLs (``https://host/org/repo``,
    ``file:///srv/repo``, user input as typed) are left as they are."""
    if isinstance(value, str):
        text = value.split(_TRACEBACK, 1)[0].rstrip() if _TRACEBACK in value else value
        return _PATH.sub(lambda m: f"…/{m.group(1)}", text)
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items()}
    if isinstance(value, list):
        return [scrub(item) for item in value]
    return value
