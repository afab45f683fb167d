"""HTTP routes for API tokens (admin only, see ``auth.required_scope``): create (the secret is
in that reply only), list (never a secret or a hash), revoke. Rotation: create a new token,
move clients to it, revoke the old one."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Request, status
from pydantic import BaseModel, ConfigDict, Field

from praxis_contracts.errors import Unavailable
from praxis_contracts.tokens import Scope, TokenCreated, TokenInfo, TokenList
from praxis_gateway.auth import TokenRecord
from praxis_gateway.security import ActorDep
from praxis_gateway.tokens import TokenStore

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])

MAX_EXPIRY_SECONDS = 10 * 366 * 24 * 3600


def token_store(request: Request) -> TokenStore:
    store = getattr(request.app.state, "tokens", None)
    if store is None:
        raise Unavailable("the API token store is not running")
    return store  # type: ignore[no-any-return]


StoreDep = Annotated[TokenStore, Depends(token_store)]


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is refused (422)

    name: str = Field(min_length=1, max_length=200)
    scopes: list[Scope] = Field(min_length=1, description="read, operate and/or admin.")
    expires_in_seconds: int | None = Field(
        default=None, ge=1, le=MAX_EXPIRY_SECONDS, description="Never expires if omitted."
    )


def info(record: TokenRecord) -> TokenInfo:
    return TokenInfo.model_validate(record.model_dump(exclude={"hash"}))


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_token(body: TokenIn, store: StoreDep, actor: ActorDep) -> TokenCreated:
    record, token = await store.create(
        name=body.name,
        scopes=body.scopes,
        created_by=actor,
        expires_in_seconds=body.expires_in_seconds,
    )
    return TokenCreated(**info(record).model_dump(), token=token)


@router.get("")
async def list_tokens(store: StoreDep) -> TokenList:
    items = [info(r) for r in store.list()]
    return TokenList(items=items, total=len(items))


@router.delete("/{token_id}")
async def revoke_token(token_id: UUID, store: StoreDep) -> TokenInfo:
    """Revoke now, on every gateway; the token stays listed with ``revoked_at``."""
    return info(await store.revoke(token_id))
