"""The native API's /v1/tokens (admin scope): list the organization's tokens (never a hash or a secret),
mint one (the plain token is in that one response only), revoke one (refused by this process at once,
by the others within the auth cache's lifetime)."""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict, Field

from app import auth
from app.api.native_common import ERRORS, PREFIX, AdminOrg, require_id, run
from app.api.native_models import ErrorBody
from app.domain import tokens
from app.domain.tokens import Scope

if TYPE_CHECKING:  # rows as the domain returns them
    from app.models import ApiToken

router = APIRouter(prefix=PREFIX, tags=["native admin"], responses=ERRORS)


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field("", max_length=200, description="a note to tell tokens apart")
    scope: Scope = Field(tokens.DEFAULT_SCOPE, description="admin, member or lease (metrics is the operator's)")
    expires_in_seconds: int | None = Field(None, ge=1, le=int(tokens.MAX_LIFETIME.total_seconds()),
                                           description="lifetime; none: until revoked")


class TokenOut(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="the first characters of the token, to recognise it")
    scope: Scope
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="written at most once a minute, not on every call")
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="the bearer token: shown in this response only, never again")


class TokenList(BaseModel):
    tokens: list[TokenOut]


def token_out(row: ApiToken) -> TokenOut:
    return TokenOut(id=row.id, name=row.name, prefix=row.prefix, scope=Scope(row.scope), created_at=row.created_at,
                    expires_at=row.expires_at, last_used_at=row.last_used_at, revoked_at=row.revoked_at)


@router.get("/tokens", summary="List the organization's API tokens (revoked ones too; never a secret)")
async def list_tokens(org_id: AdminOrg) -> TokenList:
    rows = await run(tokens.list_tokens, org_id=org_id)
    return TokenList(tokens=[token_out(r) for r in rows])


@router.post("/tokens", status_code=201, summary="Mint an API token for the organization; shown once",
             responses={403: {"model": ErrorBody, "description": "not an admin token, or the metrics scope"}})
async def create_token(body: TokenIn, org_id: AdminOrg) -> TokenCreated:
    expires_in = timedelta(seconds=body.expires_in_seconds) if body.expires_in_seconds is not None else None
    row, token = await run(tokens.create_tenant_token, org_id, scope=body.scope, name=body.name,
                           expires_in=expires_in)
    return TokenCreated(**token_out(row).model_dump(), token=token)


@router.delete("/tokens/{token_id}", summary="Revoke an API token of the organization (idempotent)")
async def revoke_token(token_id: Annotated[str, Path(max_length=64)], org_id: AdminOrg) -> TokenOut:
    row = await run(tokens.revoke, require_id(token_id, "token id"), org_id=org_id)
    auth.forget(row.id)
    return token_out(row)
