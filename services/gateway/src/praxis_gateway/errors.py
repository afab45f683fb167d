"""Domain error codes -> HTTP statuses (one table), and the error response body."""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from praxis_contracts.errors import ErrorCode, ErrorReply, PraxisError
from praxis_runtime.logging import correlation_id_var

HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_PARAMETERS: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.INVALID_TRANSITION: 409,
    ErrorCode.UNKNOWN_ASSET_TYPE: 422,
    ErrorCode.NO_MATCHING_ASSETS: 409,
    ErrorCode.PROTOCOL_LOAD_FAILED: 422,
    ErrorCode.SOURCE_SYNC_FAILED: 502,
    ErrorCode.LEASE_LOST: 409,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.INTERNAL: 500,
}


def error_response(reply: ErrorReply) -> JSONResponse:
    body = reply.model_dump(mode="json")
    body["correlation_id"] = correlation_id_var.get()
    return JSONResponse(body, status_code=HTTP_STATUS.get(reply.code, 500))


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
