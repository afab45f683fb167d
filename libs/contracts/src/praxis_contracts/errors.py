"""The one error hierarchy and the one error-reply shape.

Domain errors carry a stable ``code`` and a ``retryable`` flag. Request handlers turn them into an
``ErrorReply``; requesters turn an ``ErrorReply`` back into the same exception type by code; the
gateway maps codes to HTTP statuses through one table.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class ErrorCode(StrEnum):
    """Stable error codes; values never change meaning."""

    INVALID_REQUEST = "invalid_request"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    INVALID_PARAMETERS = "invalid_parameters"
    INVALID_INPUT = "invalid_input"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    INVALID_TRANSITION = "invalid_transition"
    UNKNOWN_ASSET_TYPE = "unknown_asset_type"
    NO_MATCHING_ASSETS = "no_matching_assets"
    PROTOCOL_LOAD_FAILED = "protocol_load_failed"
    SOURCE_SYNC_FAILED = "source_sync_failed"
    SOURCE_REFUSED = "source_refused"
    LEASE_LOST = "lease_lost"
    ASSET_NOT_LEASED = "asset_not_leased"
    PREPARATION_FAILED = "preparation_failed"  # a run's error: its edge could not prepare it
    PROTOCOL_ERROR = "protocol_error"  # a run's error: the protocol raised
    ASSETS_UNAVAILABLE = "assets_unavailable"  # an immediate run could not be placed now
    DEADLINE_PASSED = "deadline_passed"  # a run's error: it could not start by its deadline
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    REPLY_TOO_LARGE = "reply_too_large"
    INTERNAL = "internal"


class ErrorReply(BaseModel):
    """The error shape on every request/reply subject and in failure events."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    code: ErrorCode = Field(description="Stable machine-readable error code.")
    message: str = Field(description="Human-readable explanation; never a traceback.")
    retryable: bool = Field(
        default=False, description="Whether the same request may succeed later."
    )
    details: dict[str, Any] = Field(default_factory=dict, description="Structured context.")


class PraxisError(Exception):
    """Base of every domain error that crosses a service boundary."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, /, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_reply(self) -> ErrorReply:
        return ErrorReply(
            code=self.code, message=self.message, retryable=self.retryable, details=self.details
        )


class InvalidRequest(PraxisError):
    code = ErrorCode.INVALID_REQUEST


class Unauthenticated(PraxisError):
    """No credentials, or credentials that are malformed, unknown, expired or revoked."""

    code = ErrorCode.UNAUTHENTICATED


class Forbidden(PraxisError):
    """Valid credentials without the scope the operation needs."""

    code = ErrorCode.FORBIDDEN


class InvalidParameters(PraxisError):
    code = ErrorCode.INVALID_PARAMETERS


class InvalidInput(InvalidRequest):
    """Well-formed input with values that cannot be stored: a NUL character, or any value
    PostgreSQL rejects (its data errors, e.g. a number out of range).

    A subclass of ``InvalidRequest`` so code catching bad input catches it too; its own code
    lets clients (and the HTTP status table) tell "malformed" from "unprocessable"."""

    code = ErrorCode.INVALID_INPUT


class PayloadTooLarge(PraxisError):
    """A body or message larger than the hop that carries it allows: an HTTP body over the
    gateway's ``GATEWAY_MAX_BODY_BYTES``, a NATS message over the server's ``max_payload``."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class NotFound(PraxisError):
    code = ErrorCode.NOT_FOUND


class MethodNotAllowed(PraxisError):
    """An HTTP method the route does not take (the gateway's 405; ``details["allowed"]``)."""

    code = ErrorCode.METHOD_NOT_ALLOWED


class Conflict(PraxisError):
    code = ErrorCode.CONFLICT


class AssetsUnavailable(Conflict):
    """An immediate run could not be placed now: ``details`` names the runs holding (or queued
    ahead for) what it wants, and why (``reason``: a ``WaitReason``)."""

    code = ErrorCode.ASSETS_UNAVAILABLE


class DeadlinePassed(PraxisError):
    """A queued run could not start by its ``deadline``."""

    code = ErrorCode.DEADLINE_PASSED


class InvalidTransition(PraxisError):
    code = ErrorCode.INVALID_TRANSITION


class UnknownAssetType(PraxisError):
    code = ErrorCode.UNKNOWN_ASSET_TYPE


class PreparationFailed(PraxisError):
    """A run's error: its edge could not prepare it (code, live objects, parameters)."""

    code = ErrorCode.PREPARATION_FAILED


class ProtocolError(PraxisError):
    """A run's error: the protocol function raised."""

    code = ErrorCode.PROTOCOL_ERROR


class NoMatchingAssets(PraxisError):
    code = ErrorCode.NO_MATCHING_ASSETS


class ProtocolLoadFailed(PraxisError):
    code = ErrorCode.PROTOCOL_LOAD_FAILED


class SourceSyncFailed(PraxisError):
    code = ErrorCode.SOURCE_SYNC_FAILED
    retryable = True


class SourceRefused(InvalidInput):
    """A protocol source the code-manager's source policy does not allow (a URL scheme, host,
    address or path outside what is configured, a transport helper, an option-like URL, a bad
    ref or an unknown credentials reference). The message names the rule; ``details["rule"]``
    carries it for machines. Nothing is recorded for a refused registration."""

    code = ErrorCode.SOURCE_REFUSED


class LeaseLost(PraxisError):
    code = ErrorCode.LEASE_LOST


class AssetNotLeased(PraxisError):
    """A protocol reached, or sent an instrument command touching, an asset its run did not
    lease (details: ``asset``, ``run_id``)."""

    code = ErrorCode.ASSET_NOT_LEASED


class Unavailable(PraxisError):
    code = ErrorCode.UNAVAILABLE
    retryable = True


class Timeout(PraxisError):
    code = ErrorCode.TIMEOUT
    retryable = True


class ReplyTooLarge(PayloadTooLarge):
    """A reply would exceed the largest message the NATS server carries (1 MB by default).

    Sent instead of the reply, which the server would refuse, leaving the requester to time out.
    Asking again gets the same answer: ask for less (a smaller page). A ``PayloadTooLarge``, but
    its own code: the request was fine, the answer is what does not fit."""

    code = ErrorCode.REPLY_TOO_LARGE


class InternalError(PraxisError):
    code = ErrorCode.INTERNAL


_BY_CODE: dict[ErrorCode, type[PraxisError]] = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        Unauthenticated,
        Forbidden,
        InvalidParameters,
        InvalidInput,
        PayloadTooLarge,
        NotFound,
        MethodNotAllowed,
        Conflict,
        InvalidTransition,
        UnknownAssetType,
        NoMatchingAssets,
        ProtocolLoadFailed,
        SourceSyncFailed,
        SourceRefused,
        LeaseLost,
        AssetNotLeased,
        Unavailable,
        Timeout,
        ReplyTooLarge,
        PreparationFailed,
        ProtocolError,
        AssetsUnavailable,
        DeadlinePassed,
        InternalError,
    )
}


def error_from_reply(reply: ErrorReply) -> PraxisError:
    """Rebuild the domain exception an ``ErrorReply`` stands for."""
    return _BY_CODE.get(reply.code, InternalError)(reply.message, **reply.details)
