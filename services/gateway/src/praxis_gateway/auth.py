"""Who may call what: scopes, API tokens, the route -> scope table. Pure: no I/O, no clock.

Scopes form a ladder, each implying those below it:

- ``read``: every ``GET`` (runs, protocols, inventory, locks);
- ``operate``: submit runs and act on them (``POST /protocols/runs``, ``POST
  /protocols/runs/{run_id}/actions``), drain and resume workcells;
- ``admin``: everything else: inventory writes (workcells, machines, resources, decks),
  protocol sources, locks (force-release) and the API tokens themselves, reads included.

An API token is ``praxis_<id>_<secret>``: ``id`` names its record (so it can be listed and
revoked), ``secret`` is 32 random bytes (URL-safe base64). Only the SHA-256 of the whole token is
stored. A plain hash suffices, unlike for passwords: a password is short and guessable, so its
hash must be slow (bcrypt, argon2) to resist a dictionary; a 256-bit random secret cannot be
guessed whatever the hash costs, so a fast hash loses nothing, and it keeps each request's
verification a dictionary lookup (the digest is the index key).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from praxis_contracts.errors import Forbidden, Unauthenticated
from praxis_contracts.tokens import Scope

_RANK = {Scope.READ: 0, Scope.OPERATE: 1, Scope.ADMIN: 2}


def grants(granted: Iterable[Scope], needed: Scope) -> bool:
    """Whether any of ``granted`` is ``needed`` or a scope above it."""
    return any(_RANK[scope] >= _RANK[needed] for scope in granted)


@dataclass(frozen=True)
class Principal:
    """Who is calling, and what they may do. ``name`` is what mutating calls record as actor."""

    name: str
    scopes: frozenset[Scope]
    token_id: UUID | None = None


BOOTSTRAP_ADMIN = "bootstrap-admin"


def require(principal: Principal, needed: Scope) -> None:
    """``Forbidden`` naming the scope the principal lacks."""
    if not grants(principal.scopes, needed):
        have = ", ".join(sorted(principal.scopes)) or "none"
        raise Forbidden(
            f"this needs the {needed} scope (you have: {have})",
            required_scope=needed.value,
        )


# -- the route table -----------------------------------------------------------------------------
PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/asyncapi.json",
    }
)
"""Open to anyone: probes, metrics and the documentation of the API and of the bus."""

UI_PATH = "/ui"
"""The dashboard's static files (HTML, script, style): open, like the docs; everything they show
comes from the API with the bearer the user signs in with."""


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path == UI_PATH or path.startswith(f"{UI_PATH}/")


OPERATE_ROUTES = frozenset(
    {
        ("POST", "/api/v1/protocols/runs"),
        ("POST", "/api/v1/protocols/runs/{run_id}/actions"),
        ("POST", "/api/v1/workcells/{workcell}/drain"),
        ("POST", "/api/v1/workcells/{workcell}/resume"),
        ("POST", "/api/v1/resources/{accession_id}/state"),
    }
)
"""The writes ``operate`` may make; every other write needs ``admin``."""

ADMIN_READS = frozenset({"/api/v1/tokens", "/api/v1/dead-letters", "/api/v1/dead-letters/{seq}"})
"""Reads that need ``admin``: the token list is the credential inventory; dead letters carry
whole messages of every service."""


def required_scope(method: str, path: str) -> Scope | None:
    """The scope a route (its path template, e.g. ``/api/v1/protocols/runs/{run_id}``) needs;
    None for public routes. Writes default to ``admin``, so a new write route is closed until
    it is listed here."""
    if is_public(path):
        return None
    method = method.upper()
    if method in ("GET", "HEAD", "OPTIONS"):
        return Scope.ADMIN if path in ADMIN_READS else Scope.READ
    if (method, path) in OPERATE_ROUTES:
        return Scope.OPERATE
    return Scope.ADMIN


# -- the bearer ----------------------------------------------------------------------------------
def bearer(authorization: str | None) -> str:
    """The credentials of an ``Authorization: Bearer <token>`` header, or ``Unauthenticated``."""
    if not authorization:
        raise Unauthenticated("missing bearer token (send 'Authorization: Bearer <token>')")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    return token


def is_bootstrap_admin(token: str, admin_token: str | None) -> bool:
    """Constant-time comparison with ``PRAXIS_ADMIN_TOKEN`` (unset: nobody is)."""
    if not admin_token:
        return False
    return hmac.compare_digest(token.encode(), admin_token.encode())


def looks_like_jwt(token: str) -> bool:
    """Three dot-separated base64url parts; API tokens contain no dots."""
    return token.count(".") == 2 and all(token.split("."))


# -- API tokens ----------------------------------------------------------------------------------
TOKEN_PREFIX = "praxis_"
_TOKEN = re.compile(r"^praxis_([0-9a-f]{32})_([A-Za-z0-9_-]{43})$")


def new_token(token_id: UUID) -> str:
    """A new API token for the record ``token_id``: shown to its creator once, never stored."""
    return f"{TOKEN_PREFIX}{token_id.hex}_{secrets.token_urlsafe(32)}"


def token_id_of(token: str) -> UUID | None:
    """The record id inside a well-formed API token; None for anything else."""
    match = _TOKEN.match(token)
    return UUID(hex=match.group(1)) if match else None


def token_hash(token: str) -> str:
    """SHA-256 of the whole token, hex (see the module docstring for why not a slow hash)."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenRecord(BaseModel):
    """An API token as stored (one KV key per token): never the secret."""

    model_config = ConfigDict(frozen=True)

    id: UUID
    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope]
    hash: str = Field(description="SHA-256 (hex) of the whole token.")
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def principal(self) -> Principal:
        return Principal(f"token:{self.name}", frozenset(self.scopes), token_id=self.id)

    def usable_at(self, now: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


def new_record(
    token_id: UUID,
    token: str,
    *,
    name: str,
    scopes: Iterable[Scope],
    created_by: str,
    now: datetime,
    expires_in_seconds: int | None = None,
) -> TokenRecord:
    expires = now + timedelta(seconds=expires_in_seconds) if expires_in_seconds else None
    return TokenRecord(
        id=token_id,
        name=name,
        scopes=sorted(set(scopes), key=_RANK.__getitem__),
        hash=token_hash(token),
        created_at=now,
        created_by=created_by,
        expires_at=expires,
    )


TOUCH_INTERVAL = timedelta(minutes=1)
"""``last_used_at`` is written back at most this often per token."""


def due_for_touch(record: TokenRecord, now: datetime) -> bool:
    return record.last_used_at is None or now - record.last_used_at >= TOUCH_INTERVAL


class TokenIndex:
    """Every token record this gateway knows, by id and by hash; fed by the KV watcher."""

    def __init__(self) -> None:
        self._by_id: dict[UUID, tuple[TokenRecord, int]] = {}
        self._by_hash: dict[str, UUID] = {}

    def put(self, record: TokenRecord, revision: int) -> None:
        """Keep ``record`` unless a newer revision of it is known already."""
        known = self._by_id.get(record.id)
        if known is not None and known[1] > revision:
            return
        if known is not None:
            self._by_hash.pop(known[0].hash, None)
        self._by_id[record.id] = (record, revision)
        self._by_hash[record.hash] = record.id

    def remove(self, token_id: UUID) -> None:
        known = self._by_id.pop(token_id, None)
        if known is not None:
            self._by_hash.pop(known[0].hash, None)

    def get(self, token_id: UUID) -> tuple[TokenRecord, int] | None:
        return self._by_id.get(token_id)

    def records(self) -> list[TokenRecord]:
        return sorted((r for r, _ in self._by_id.values()), key=lambda r: r.created_at)

    def verify(self, token: str, now: datetime) -> TokenRecord:
        """The usable record of an API token, or ``Unauthenticated`` (unknown, expired,
        revoked)."""
        token_id = token_id_of(token)
        found = self._by_id.get(token_id) if token_id is not None else None
        if found is None or not hmac.compare_digest(found[0].hash, token_hash(token)):
            raise Unauthenticated("invalid token")
        record = found[0]
        if record.revoked_at is not None:
            raise Unauthenticated("token revoked")
        if not record.usable_at(now):
            raise Unauthenticated("token expired")
        return record


# -- OIDC claims ---------------------------------------------------------------------------------
OIDC_SCOPE_PREFIX = "praxis:"


def oidc_scopes(claims: Mapping[str, Any], claim: str = "scope") -> frozenset[Scope]:
    """Praxis scopes granted by a verified JWT: ``praxis:read``, ``praxis:operate`` and
    ``praxis:admin`` in ``claim`` (a space-separated string, or a list). Plain ``read`` etc.
    are ignored on purpose: an identity provider issues such generic names for other APIs."""
    value = claims.get(claim)
    if isinstance(value, str):
        names = value.split()
    elif isinstance(value, list):
        names = [v for v in value if isinstance(v, str)]
    else:
        names = []
    valid = {s.value for s in Scope}
    return frozenset(
        Scope(n.removeprefix(OIDC_SCOPE_PREFIX))
        for n in names
        if n.startswith(OIDC_SCOPE_PREFIX) and n.removeprefix(OIDC_SCOPE_PREFIX) in valid
    )


def oidc_principal(claims: Mapping[str, Any], claim: str = "scope") -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("the token has no subject (sub)")
    return Principal(f"oidc:{subject}", oidc_scopes(claims, claim))


__all__ = [
    "BOOTSTRAP_ADMIN",
    "Principal",
    "Scope",
    "TokenIndex",
    "TokenRecord",
    "bearer",
    "due_for_touch",
    "grants",
    "new_record",
    "new_token",
    "oidc_principal",
    "oidc_scopes",
    "require",
    "required_scope",
    "token_hash",
]
