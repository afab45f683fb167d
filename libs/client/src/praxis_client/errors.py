"""HTTP error responses back into the contract's error hierarchy.

The gateway answers every error in one shape (``code``, ``message``, ``retryable``,
``details``, ``correlation_id``); ``error_of`` turns it back into the ``PraxisError`` subclass
of its code (``NotFound``, ``Conflict``, ``AssetsUnavailable`` ...), carrying the HTTP
``status`` and the request's ``correlation_id`` (quote it when reporting a problem). A reply
that is not in that shape (a proxy's 502 page) maps by its status. A request that got no
reply at all raises ``ConnectionFailed``.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from praxis_contracts.errors import (
    ErrorCode,
    ErrorReply,
    InternalError,
    InvalidRequest,
    PraxisError,
    Timeout,
    Unavailable,
    error_from_reply,
)

__all__ = ["ApiError", "ConnectionFailed", "correlation_of", "error_of", "status_of"]

ApiError = PraxisError
"""What every failed call raises: catch it, or one of its subclasses by code."""


class ConnectionFailed(Unavailable):
    """The API did not answer (refused, reset, timed out). Retryable. ``maybe_done``: the
    request may have been carried out (it was sent, the reply never came); False when the
    connection itself was refused."""

    @property
    def maybe_done(self) -> bool:
        return bool(self.details.get("maybe_done", True))


def status_of(error: BaseException) -> int | None:
    """The HTTP status of an error a call raised (None: no reply came)."""
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def correlation_of(error: BaseException) -> str | None:
    """The request's correlation id (``X-Correlation-Id``), to find it in the services' logs."""
    value = getattr(error, "correlation_id", None)
    return value if isinstance(value, str) else None


_BY_STATUS: dict[int, type[PraxisError]] = {502: Unavailable, 503: Unavailable, 504: Timeout}


def error_of(status: int, content: bytes, correlation_id: str | None = None) -> PraxisError:
    """The exception an error response stands for, with ``status`` and ``correlation_id``."""
    try:
        reply = ErrorReply.model_validate_json(content)
    except ValidationError:
        text = content.decode(errors="replace").strip()[:500]
        kind = _BY_STATUS.get(status) or (InvalidRequest if status < 500 else InternalError)
        error = kind(f"HTTP {status}: {text or 'no body'}")
    else:
        error = error_from_reply(reply)
        if reply.code not in set(ErrorCode):  # pragma: no cover - the model refuses these
            error = InternalError(reply.message, **reply.details)
        correlation_id = correlation_id or _correlation(content)
    error.status = status  # type: ignore[attr-defined]
    error.correlation_id = correlation_id  # type: ignore[attr-defined]
    return error


def _correlation(content: bytes) -> str | None:
    import json

    try:
        body: Any = json.loads(content)
    except ValueError:
        return None
    value = body.get("correlation_id") if isinstance(body, dict) else None
    return value if isinstance(value, str) else None
