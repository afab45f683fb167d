"""Authentication and authorization, in one place for every route.

- ``Authenticate`` (ASGI middleware, in front of every route): a request to anything but the
  public paths (probes, metrics, docs) must carry a bearer that is ``PRAXIS_ADMIN_TOKEN``, a
  live API token, or (if configured) an OIDC JWT; otherwise 401 ``unauthenticated`` with
  ``WWW-Authenticate: Bearer``, before its body is read. The principal goes in the request state.
- ``authorize`` (a dependency of the whole app): the route's template and method give the scope
  it needs (``auth.required_scope``); a principal without it gets 403 ``forbidden`` naming it.
  Being an app dependency with an ``HTTPBearer`` scheme, it also declares the security scheme on
  every route in the OpenAPI document.
- ``ActorDep``: the principal's name, which mutating routes send along as ``actor``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from praxis_contracts.errors import PraxisError, Unauthenticated
from praxis_gateway.auth import (
    BOOTSTRAP_ADMIN,
    Principal,
    bearer,
    is_bootstrap_admin,
    is_public,
    looks_like_jwt,
    require,
    required_scope,
)
from praxis_gateway.auth import Scope as AuthScope
from praxis_gateway.errors import error_response
from praxis_gateway.oidc import OidcVerifier
from praxis_gateway.tokens import TokenStore
from praxis_runtime.logging import log_context

ADMIN = Principal(BOOTSTRAP_ADMIN, frozenset(AuthScope))


class Authenticator:
    """Turns a bearer into a principal; ``tokens`` is set once the token store is watching."""

    def __init__(self, admin_token: str | None, oidc: OidcVerifier | None = None) -> None:
        self.admin_token = admin_token
        self.oidc = oidc
        self.tokens: TokenStore | None = None

    async def principal(self, authorization: str | None) -> Principal:
        token = bearer(authorization)
        if is_bootstrap_admin(token, self.admin_token):
            return ADMIN
        if looks_like_jwt(token):
            if self.oidc is None:
                raise Unauthenticated("invalid token (OIDC is not configured)")
            return await self.oidc.verify(token)
        if self.tokens is None:
            raise Unauthenticated("invalid token")
        return self.tokens.verify(token)


class Authenticate:
    """ASGI middleware: 401 for a non-public request without a valid bearer."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(str(scope.get("path", ""))):
            await self.app(scope, receive, send)
            return
        try:
            principal = await self.authenticator.principal(_authorization(scope))
        except PraxisError as exc:
            await error_response(exc.to_reply())(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        with log_context(actor=principal.name):  # carried on by every message it causes
            await self.app(scope, receive, send)


def _authorization(scope: Scope) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == b"authorization":
            return bytes(value).decode("latin-1")
    return None


_bearer_scheme = HTTPBearer(
    auto_error=False,
    description="`PRAXIS_ADMIN_TOKEN`, an API token (POST /api/v1/tokens) or an OIDC JWT.",
)


async def authorize(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> None:
    """403 unless the principal has the scope the route needs (see ``auth.required_scope``)."""
    route = request.scope.get("route")
    needed = required_scope(request.method, getattr(route, "path", request.url.path))
    if needed is None:
        return
    principal = request.scope.get("state", {}).get("principal")
    if not isinstance(principal, Principal):
        raise Unauthenticated("missing bearer token")
    require(principal, needed)


def principal(request: Request) -> Principal:
    found = request.scope.get("state", {}).get("principal")
    if not isinstance(found, Principal):
        raise Unauthenticated("missing bearer token")
    return found


def actor(request: Request) -> str:
    return principal(request).name


PrincipalDep = Annotated[Principal, Depends(principal)]
ActorDep = Annotated[str, Depends(actor)]

__all__ = ["ActorDep", "Authenticate", "Authenticator", "PrincipalDep", "authorize"]
