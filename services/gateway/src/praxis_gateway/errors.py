"""Domain error codes -> HTTP statuses (one table), and the error response body."""

from __future__ import annotations

import logging

import nats.errors
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

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
    ErrorCode.CONFLICT: 409,
    ErrorCode.INVALID_TRANSITION: 409,
    ErrorCode.UNKNOWN_ASSET_TYPE: 422,
    ErrorCode.NO_MATCHING_ASSETS: 422,  # the submission can never be bound as stated
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


def error_response(reply: ErrorReply) -> JSONResponse:
    body = reply.model_dump(mode="json")
    body["correlation_id"] = correlation_id_var.get()
    headers = {"WWW-Authenticate": CHALLENGE} if reply.code == ErrorCode.UNAUTHENTICATED else None
    return JSONResponse(body, status_code=HTTP_STATUS.get(reply.code, 500), headers=headers)


async def on_praxis_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PraxisError)
    return error_response(exc.to_reply())


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
