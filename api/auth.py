"""Route dependencies: who is calling, may they do this, and the request's idempotency key.

A wallet key reaches its own wallet only: wallet routes take the wallet from the key, never
from the request, and resources named by id (payments, holds, keys, payouts) are looked up
together with that wallet, so another tenant's id answers exactly like a missing one (404).
``admin`` on a wallet key implies every other scope on that wallet. The platform admin key
(from settings) has no wallet: it reaches the ``/admin`` routes and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from api.idempotency import HEADER, require_key
from api.keys import MANAGERS, Principal, Role, Scope
from api.services import ApiServices
from domain.errors import Forbidden

bearer = HTTPBearer(auto_error=False, description="An API key: `Bearer cdk_…`")


async def services(request: Request) -> ApiServices:
    """The process's services (async: FastAPI runs a sync dependency in a thread pool)."""
    found: ApiServices = request.app.state.services
    return found


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    token = credentials.credentials if credentials is not None else None
    opened: ApiServices = request.app.state.services
    return await opened.keys.authenticate(token)


def require(
    scope: Scope, *, roles: frozenset[Role] | None = None
) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting wallet keys with ``scope`` (and a member role in ``roles``)."""

    async def check(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        return admit(principal, scope, roles=roles)

    return check


def admit(principal: Principal, scope: Scope, *, roles: frozenset[Role] | None = None) -> Principal:
    """``principal`` if it is a wallet key with ``scope`` (and a role in ``roles``), else
    :class:`Forbidden`. ``admin`` on a wallet key implies every other scope."""
    if principal.wallet_id is None:
        raise Forbidden(
            "the platform admin key has no wallet; use the /admin routes with a wallet id"
        )
    if scope not in principal.scopes and Scope.ADMIN not in principal.scopes:
        raise Forbidden(f"this key lacks the {scope.value!r} scope", required_scope=scope.value)
    if roles is not None and principal.role not in roles:
        allowed = " or ".join(sorted(r.value for r in roles))
        raise Forbidden(
            f"only a wallet {allowed} may do this; member {principal.member_id!r} "
            f"is {principal.role.value if principal.role else 'unknown'}",
            required_role=sorted(r.value for r in roles),
        )
    return principal


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, as :data:`bearer` reads it
    (scheme case-insensitive); ``None`` when absent or another scheme."""
    scheme, token = get_authorization_scheme_param(authorization)
    if not (authorization and scheme and token) or scheme.lower() != "bearer":
        return None
    return token


async def require_platform_admin(
    principal: Annotated[Principal, Depends(authenticate)],
) -> Principal:
    if not principal.platform_admin:
        raise Forbidden("this route needs the platform admin key")
    return principal


async def idempotency_key(
    key: Annotated[
        str | None,
        Header(
            alias=HEADER,
            description="Required on every mutating call; a retry with the same key and body "
            "replays the first response.",
        ),
    ] = None,
) -> str:
    return require_key(key)


Reader = Annotated[Principal, Depends(require(Scope.WALLET_READ))]
Writer = Annotated[Principal, Depends(require(Scope.WALLET_WRITE))]
Manager = Annotated[Principal, Depends(require(Scope.WALLET_WRITE, roles=MANAGERS))]
UsageWriter = Annotated[Principal, Depends(require(Scope.USAGE_WRITE))]
WalletAdmin = Annotated[Principal, Depends(require(Scope.ADMIN, roles=MANAGERS))]
PlatformAdmin = Annotated[Principal, Depends(require_platform_admin)]
IdemKey = Annotated[str, Depends(idempotency_key)]
Services = Annotated[ApiServices, Depends(services)]


def wallet_of(principal: Principal) -> str:
    assert principal.wallet_id is not None  # guaranteed by require()
    return principal.wallet_id


def member_of(principal: Principal) -> str:
    assert principal.member_id is not None
    return principal.member_id
