"""OIDC bearer tokens: a JWT signed by the identity provider's keys (its JWKS), checked for
issuer, expiry and (if configured) audience; its ``praxis:*`` scopes map to ours.

``PyJWKClient`` fetches the JWKS over blocking HTTP and caches the keys (a kid it has not seen
makes it fetch again), so each verification runs on a worker thread, never on the event loop.
Only asymmetric algorithms are accepted: a token claiming ``HS256`` (signed with the public key as
an HMAC secret) or ``none`` is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import jwt

from praxis_contracts.errors import Unauthenticated, Unavailable
from praxis_gateway.auth import Principal, oidc_principal

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]
LEEWAY_SECONDS = 30
"""Clock skew tolerated between the identity provider and the gateway."""


class OidcVerifier:
    def __init__(
        self,
        issuer: str,
        jwks_url: str,
        audience: str | None = None,
        scope_claim: str = "scope",
        jwks_timeout: float = 5.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.scope_claim = scope_claim
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True, timeout=int(jwks_timeout))

    async def verify(self, token: str) -> Principal:
        claims = await asyncio.to_thread(self.claims, token)
        return oidc_principal(claims, self.scope_claim)

    def claims(self, token: str) -> Mapping[str, Any]:
        """The verified claims (blocking: may fetch the JWKS)."""
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            raise Unavailable(f"cannot fetch the identity provider's keys: {exc}") from exc
        except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                issuer=self.issuer,
                audience=self.audience,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "sub"], "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        return claims


__all__ = ["OidcVerifier"]
