"""API tokens as the HTTP API shows them (``/api/v1/tokens``): scopes, a token's record without
its secret, and the one reply that carries the secret."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from uuid import UUID

from pydantic import BaseModel, Field


class Scope(StrEnum):
    """A ladder, each implying those below it: read < operate < admin."""

    READ = "read"
    OPERATE = "operate"
    ADMIN = "admin"


class TokenInfo(BaseModel):
    """A token as listed: everything but the secret and its hash."""

    id: UUID
    name: str
    scopes: list[Scope]
    created_at: datetime
    created_by: str
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None


class TokenCreated(TokenInfo):
    token: str = Field(description="The bearer token. Shown this once: it is not stored.")


class TokenList(BaseModel):
    items: list[TokenInfo]
    total: int
