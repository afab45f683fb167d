"""The OpenAPI document states every error a route answers, in the one error shape.

FastAPI documents a route's success and a 422 ``HTTPValidationError`` it never sends (a body or
query that does not validate is a 400 in the error shape here, ``errors.on_validation_error``).
``openapi(app)`` replaces that with what the gateway really answers, each with the ``Error``
schema (``ErrorBody``: the error shape with the request's correlation id):

- every ``/api`` route: 400 (a body, query, header or path parameter that does not validate),
  500 (a bug, with its correlation id), 503 (a service or NATS unavailable) and 504 (a
  service did not answer in ``REQUEST_TIMEOUT_SECONDS``);
- a route that needs a bearer: 401 (none, unknown, expired or revoked) and 403 (its scope);
- a route with a path parameter: 404 (nothing by that id or name);
- every ``/api`` route: 422 too (input the domain refuses: parameters against the protocol's
  schema, an unknown asset type, no matching assets, a NUL character in any value);
- a route that takes a body: 413 (larger than ``GATEWAY_MAX_BODY_BYTES``);
- a write: 409 (a conflict: the run's state, a name taken, assets busy, a deadline passed);
- a read: 507 (an answer larger than NATS carries: ask for less);
- a source's create and sync: 502 (its git remote failed).

``tests/integration/test_gateway_auth.py`` walks every route and checks that each status it
observes is documented for that route.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import Field

from praxis_contracts.errors import ErrorReply
from praxis_gateway.auth import required_scope


class ErrorBody(ErrorReply):
    """Every error response: what went wrong (``code``, ``message``, ``details``), whether
    trying again may succeed (``retryable``), and the request's correlation id."""

    correlation_id: str | None = Field(
        default=None, description="The request's id, also in the X-Correlation-Id header."
    )


ERROR_REF = {"$ref": "#/components/schemas/Error"}

WHY: dict[int, str] = {
    400: "The request does not validate (body, query, header or path parameter): "
    "`invalid_request`, naming the field.",
    401: "No bearer token, or one that is unknown, expired or revoked: `unauthenticated`.",
    403: "The token lacks the scope this route needs: `forbidden` (`details.required_scope`).",
    404: "Nothing by that id or name: `not_found`.",
    409: "A conflict with the current state (`conflict`, `invalid_transition`, "
    "`assets_unavailable`, `deadline_passed`, `lease_lost`).",
    413: "The body is larger than GATEWAY_MAX_BODY_BYTES: `payload_too_large`.",
    422: "Input the domain refuses (`invalid_parameters`, `invalid_input`: e.g. a NUL "
    "character in any value, `unknown_asset_type`, `no_matching_assets`, "
    "`protocol_load_failed`, `source_refused`).",
    500: "A fault of the server: `internal`, with the correlation id to find it in the logs.",
    502: "The protocol source's git remote failed: `source_sync_failed`.",
    503: "A service or NATS is unavailable for now: `unavailable` (retryable).",
    504: "A service did not answer within REQUEST_TIMEOUT_SECONDS: `timeout` (retryable).",
    507: "The answer is larger than a message can carry: `reply_too_large` (ask for less).",
}

SOURCE_WRITES = {
    ("POST", "/api/v1/protocols/sources"),
    ("POST", "/api/v1/protocols/sources/{source_id}/sync"),
}


def error_statuses(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses the gateway may answer for one operation of the API."""
    if not path.startswith("/api/"):
        return {500}
    statuses = {400, 500, 503, 504}
    if required_scope(method, path) is not None:
        statuses |= {401, 403}
    if "{" in path:
        statuses.add(404)
    statuses.add(422)  # a NUL in a query or path parameter too (``invalid_input``)
    if "requestBody" in operation:
        statuses.add(413)
    if method.upper() in ("POST", "PUT", "PATCH", "DELETE"):
        statuses.add(409)
    else:
        statuses.add(507)
    if (method.upper(), path) in SOURCE_WRITES:
        statuses.add(502)
    return statuses


def document_errors(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with every operation's error responses stated (see the module)."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    for defs in schemas["Error"].pop("$defs", {}).items():
        schemas.setdefault(*defs)
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's: a request that does not validate is a 400
            for status in error_statuses(method, path, operation):
                responses[str(status)] = {
                    "description": WHY[status],
                    "content": {"application/json": {"schema": ERROR_REF}},
                }
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    return document


def install(app: FastAPI) -> None:
    """Serve the document with the errors stated (built once, on first request)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = document_errors(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
