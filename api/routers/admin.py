"""Administration: wallets, members, keys, status and adjustments.

Two audiences. The platform admin key (``/admin/...``) creates wallets, changes their status
and posts adjustments; a wallet key with the ``admin`` scope held by an owner or admin manages
its own wallet's members and keys (``/wallet/members``, ``/wallet/keys``). Adjustments go
through the ledger (actor and reason required) and then bring the Redis mirror back to the
ledger, so the balance is spendable (or withdrawn) at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from aggregator.decision import WalletStatus
from aggregator.mirror import set_status
from api.auth import IdemKey, PlatformAdmin, Services, WalletAdmin, wallet_of
from api.idempotency import derived_id, run_idempotent
from api.keys import IssuedKey, KeyInfo, Role, Scope
from api.routers.wallet import BalancesOut, balances_of
from api.services import ApiServices
from domain.errors import Forbidden, InvalidAmount, NotFound
from settlement.reconciler import reconcile_wallet

router = APIRouter(tags=["administration"])

WalletId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
MemberId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WalletCreate(_Body):
    wallet_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    owner_type: Literal["user", "community", "organization"]
    owner_id: MemberId
    owner_member_id: MemberId = Field(description="The member who owns the wallet")


class KeyOut(BaseModel):
    key_id: str
    wallet_id: str
    member_id: str
    name: str
    scopes: list[str]
    created_at: datetime | None = None
    revoked_at: datetime | None = None
    token: str | None = Field(default=None, description="Shown once, at creation")


class WalletCreated(BaseModel):
    wallet_id: str
    owner_type: str
    owner_id: str
    owner_key: KeyOut


class AdminWalletOut(BaseModel):
    wallet_id: str
    owner_type: str
    owner_id: str
    status: str
    balances: BalancesOut
    ledger_version: int


class StatusChange(_Body):
    status: Literal["active", "premium_paused", "frozen"]
    reason: Annotated[str, Field(min_length=1, max_length=256)]


class AdjustmentIn(_Body):
    credits: int = Field(description="Signed: positive adds credits, negative removes them")
    reason: Annotated[str, Field(min_length=1, max_length=256, examples=["goodwill"])]
    actor: Annotated[str, Field(min_length=1, max_length=128)]
    note: Annotated[str | None, Field(max_length=256)] = None


class TxnOut(BaseModel):
    transaction_id: int
    type: str
    credits: int
    balance_after: int
    source: str
    source_id: str
    replayed: bool


class MemberIn(_Body):
    member_id: MemberId
    role: Literal["owner", "admin", "member"]


class MemberOut(BaseModel):
    member_id: str
    role: str
    created_at: datetime | None = None


class KeyCreate(_Body):
    member_id: MemberId
    name: Annotated[str, Field(min_length=1, max_length=100)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=4)]


def _key_out(key: IssuedKey | KeyInfo) -> KeyOut:
    if isinstance(key, IssuedKey):
        return KeyOut(
            key_id=key.key_id,
            wallet_id=key.wallet_id,
            member_id=key.member_id,
            name=key.name,
            scopes=[s.value for s in key.scopes],
            token=key.token,
        )
    return KeyOut(
        key_id=key.key_id,
        wallet_id=key.wallet_id,
        member_id=key.member_id,
        name=key.name,
        scopes=[s.value for s in key.scopes],
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


async def _admin_wallet(services: ApiServices, wallet_id: str) -> AdminWalletOut:
    record = await services.wallets.get(wallet_id)
    balances, status = await balances_of(services, record)
    return AdminWalletOut(
        wallet_id=record.id,
        owner_type=record.owner_type,
        owner_id=record.owner_id,
        status=status,
        balances=balances,
        ledger_version=record.head_seq,
    )


@router.post("/admin/wallets", response_model=WalletCreated, status_code=201)
async def create_wallet(
    body: WalletCreate, request: Request, principal: PlatformAdmin, services: Services,
    key: IdemKey,
) -> Response:  # fmt: skip
    """Create a wallet, its owner member and the owner's first key (all scopes)."""

    async def action() -> tuple[int, WalletCreated]:
        await services.wallets.create(
            body.wallet_id, owner_type=body.owner_type, owner_id=body.owner_id
        )
        await services.wallets.add_member(body.wallet_id, body.owner_member_id, role="owner")
        issued = await services.keys.issue(
            body.wallet_id,
            body.owner_member_id,
            name="owner",
            scopes=list(Scope),
            created_by=principal.key_id,
        )
        return 201, WalletCreated(
            wallet_id=body.wallet_id,
            owner_type=body.owner_type,
            owner_id=body.owner_id,
            owner_key=_key_out(issued),
        )

    return await run_idempotent(request, "admin", key, action)


@router.get("/admin/wallets/{wallet_id}", response_model=AdminWalletOut)
async def get_wallet(
    wallet_id: WalletId, principal: PlatformAdmin, services: Services
) -> AdminWalletOut:
    return await _admin_wallet(services, wallet_id)


@router.post("/admin/wallets/{wallet_id}/status", response_model=AdminWalletOut)
async def change_status(
    wallet_id: WalletId, body: StatusChange, request: Request, principal: PlatformAdmin,
    services: Services, key: IdemKey,
) -> Response:  # fmt: skip
    """Freeze, pause for review or reinstate a wallet: the ledger row, then the live mirror."""

    async def action() -> tuple[int, AdminWalletOut]:
        await services.wallets.set_status(wallet_id, body.status)
        await set_status(services.mirror, wallet_id, WalletStatus(body.status))
        services.keys.forget(wallet_id)
        return 200, await _admin_wallet(services, wallet_id)

    return await run_idempotent(request, "admin", key, action)


@router.post("/admin/wallets/{wallet_id}/adjustments", response_model=TxnOut, status_code=201)
async def adjust(
    wallet_id: WalletId, body: AdjustmentIn, request: Request, principal: PlatformAdmin,
    services: Services, key: IdemKey,
) -> Response:  # fmt: skip
    """A signed ADMIN_ADJUSTMENT; ``reason`` ``community_earnings`` credits payout-eligible
    earnings. A removal larger than what the wallet can spend right now is refused."""
    if body.credits == 0:
        raise InvalidAmount("credits must not be zero", field="credits")

    async def action() -> tuple[int, TxnOut]:
        await services.wallets.get(wallet_id)
        if body.credits < 0:
            live = await _admin_wallet(services, wallet_id)
            if live.balances.available < -body.credits:
                raise InvalidAmount(
                    f"cannot remove {-body.credits} credits: {live.balances.available} available",
                    field="credits",
                )
        txn = await services.ledger.adjust(
            wallet_id,
            derived_id("adj", wallet_id, key),
            body.credits,
            actor=body.actor,
            reason=body.reason,
            note=body.note,
        )
        await reconcile_wallet(services.pool, services.mirror, wallet_id)
        return 201, TxnOut(
            transaction_id=txn.id,
            type=txn.type.value,
            credits=txn.credits,
            balance_after=txn.balance_after,
            source=txn.source,
            source_id=txn.source_id,
            replayed=txn.replayed,
        )

    return await run_idempotent(request, "admin", key, action)


@router.post("/admin/wallets/{wallet_id}/keys", response_model=KeyOut, status_code=201)
async def admin_issue_key(
    wallet_id: WalletId, body: KeyCreate, request: Request, principal: PlatformAdmin,
    services: Services, key: IdemKey,
) -> Response:  # fmt: skip
    async def action() -> tuple[int, KeyOut]:
        await services.wallets.get(wallet_id)
        issued = await services.keys.issue(
            wallet_id,
            body.member_id,
            name=body.name,
            scopes=body.scopes,
            created_by=principal.key_id,
        )
        return 201, _key_out(issued)

    return await run_idempotent(request, "admin", key, action)


# -- a wallet's own administration (owner/admin members with an admin-scoped key) ------------


@router.get("/wallet/members", response_model=list[MemberOut])
async def list_members(principal: WalletAdmin, services: Services) -> list[MemberOut]:
    async with services.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT member_id, role, created_at FROM wallet_members WHERE wallet_id = %s "
            "ORDER BY created_at, member_id",
            (wallet_of(principal),),
        )
        return [MemberOut(member_id=r[0], role=r[1], created_at=r[2]) for r in await cur.fetchall()]


@router.post("/wallet/members", response_model=MemberOut)
async def put_member(
    body: MemberIn, request: Request, principal: WalletAdmin, services: Services, key: IdemKey
) -> Response:
    """Add a member or change a member's role (only an owner may make owners)."""
    wallet_id = wallet_of(principal)

    async def action() -> tuple[int, MemberOut]:
        if body.role == "owner" and principal.role is not Role.OWNER:
            raise Forbidden("only an owner may make another member an owner")
        await services.wallets.add_member(wallet_id, body.member_id, role=body.role)
        services.keys.forget(wallet_id)
        return 200, MemberOut(member_id=body.member_id, role=body.role)

    return await run_idempotent(request, wallet_id, key, action)


@router.get("/wallet/keys", response_model=list[KeyOut])
async def list_keys(principal: WalletAdmin, services: Services) -> list[KeyOut]:
    return [_key_out(k) for k in await services.keys.list(wallet_of(principal))]


@router.post("/wallet/keys", response_model=KeyOut, status_code=201)
async def issue_key(
    body: KeyCreate, request: Request, principal: WalletAdmin, services: Services, key: IdemKey
) -> Response:
    wallet_id = wallet_of(principal)

    async def action() -> tuple[int, KeyOut]:
        issued = await services.keys.issue(
            wallet_id,
            body.member_id,
            name=body.name,
            scopes=body.scopes,
            created_by=principal.key_id,
        )
        return 201, _key_out(issued)

    return await run_idempotent(request, wallet_id, key, action)


@router.post("/wallet/keys/{key_id}/revoke", response_model=KeyOut)
async def revoke_key(
    key_id: Annotated[str, Path(min_length=1, max_length=32)], request: Request,
    principal: WalletAdmin, services: Services, key: IdemKey,
) -> Response:  # fmt: skip
    wallet_id = wallet_of(principal)

    async def action() -> tuple[int, KeyOut]:
        if not key_id.isalnum():
            raise NotFound(f"key {key_id!r} not found", field="key_id")
        return 200, _key_out(await services.keys.revoke(wallet_id, key_id))

    return await run_idempotent(request, wallet_id, key, action)
