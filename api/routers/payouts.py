"""Payouts of community earnings: request (hold) -> completed or cancelled, via the ledger.

Only payout-eligible credits (credited by an ``ADMIN_ADJUSTMENT`` with reason
``community_earnings``) can be paid out; purchased and bonus credits never leave as money.
An owner or admin requests a payout (credits move available -> locked); the platform admin
completes it (credits leave) or cancels it (credits return). Each step is idempotent on the
payout id, and the Redis mirror is brought back to the ledger after each.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.auth import IdemKey, Manager, PlatformAdmin, Reader, Services, member_of, wallet_of
from api.idempotency import derived_id, run_idempotent
from api.routers.admin import WalletId
from api.services import ApiServices
from domain.errors import InvalidAmount, NotFound
from settlement.reconciler import reconcile_wallet

router = APIRouter(tags=["payouts"])

PayoutId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class PayoutIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    credits: Annotated[int, Field(ge=1, le=10**12)]


class PayoutOut(BaseModel):
    payout_id: str
    state: str = Field(description="requested, completed or cancelled")
    credits: int
    member_id: str | None
    requested_at: datetime
    resolved_at: datetime | None = None


async def _payouts(
    services: ApiServices, wallet_id: str, payout_id: str | None = None
) -> list[PayoutOut]:
    sql = (
        "SELECT h.source_id, h.credits, h.member_id, h.created_at, r.source, r.created_at "
        "FROM ledger_transactions h LEFT JOIN ledger_transactions r "
        "ON r.resolves_ref = h.opens_ref "
        "WHERE h.wallet_id = %s AND h.source = 'payout'"
    )
    params: tuple[object, ...] = (wallet_id,)
    if payout_id is not None:
        sql += " AND h.source_id = %s"
        params = (wallet_id, payout_id)
    async with services.pool.connection() as conn:
        cur = await conn.execute(sql + " ORDER BY h.seq DESC LIMIT 200", params)
        rows = await cur.fetchall()
    states = {None: "requested", "payout.complete": "completed", "payout.cancel": "cancelled"}
    return [
        PayoutOut(
            payout_id=r[0],
            state=states.get(r[4], "requested"),
            credits=r[1],
            member_id=r[2],
            requested_at=r[3],
            resolved_at=r[5],
        )
        for r in rows
    ]


async def _one(services: ApiServices, wallet_id: str, payout_id: str) -> PayoutOut:
    found = await _payouts(services, wallet_id, payout_id)
    if not found:
        raise NotFound(f"payout {payout_id!r} not found", field="payout_id")
    return found[0]


@router.post("/wallet/payouts", response_model=PayoutOut, status_code=201)
async def request_payout(
    body: PayoutIn, request: Request, principal: Manager, services: Services, key: IdemKey
) -> Response:
    """Lock payout-eligible earnings for a payout (owners and admins only)."""
    wallet_id = wallet_of(principal)
    payout_id = derived_id("po", wallet_id, key)

    async def action() -> tuple[int, PayoutOut]:
        record = await services.wallets.get(wallet_id)
        if record.balances.payout_eligible < body.credits:
            raise InvalidAmount(
                f"only {record.balances.payout_eligible} credits are payout-eligible "
                "(community earnings); purchased and bonus credits are never paid out",
                field="credits",
            )
        await services.ledger.hold_payout(
            wallet_id, payout_id, body.credits, member_id=member_of(principal)
        )
        await reconcile_wallet(services.pool, services.mirror, wallet_id)
        return 201, await _one(services, wallet_id, payout_id)

    return await run_idempotent(request, wallet_id, key, action)


@router.get("/wallet/payouts", response_model=list[PayoutOut])
async def list_payouts(principal: Reader, services: Services) -> list[PayoutOut]:
    return await _payouts(services, wallet_of(principal))


async def _resolve(
    services: ApiServices, wallet_id: str, payout_id: str, *, completed: bool
) -> PayoutOut:
    await _one(services, wallet_id, payout_id)
    if completed:
        await services.ledger.complete_payout(wallet_id, payout_id)
    else:
        await services.ledger.cancel_payout(wallet_id, payout_id)
    await reconcile_wallet(services.pool, services.mirror, wallet_id)
    return await _one(services, wallet_id, payout_id)


@router.post("/admin/wallets/{wallet_id}/payouts/{payout_id}/complete", response_model=PayoutOut)
async def complete_payout(
    wallet_id: WalletId, payout_id: PayoutId, request: Request, principal: PlatformAdmin,
    services: Services, key: IdemKey,
) -> Response:  # fmt: skip
    async def action() -> tuple[int, PayoutOut]:
        return 200, await _resolve(services, wallet_id, payout_id, completed=True)

    return await run_idempotent(request, "admin", key, action)


@router.post("/admin/wallets/{wallet_id}/payouts/{payout_id}/cancel", response_model=PayoutOut)
async def cancel_payout(
    wallet_id: WalletId, payout_id: PayoutId, request: Request, principal: PlatformAdmin,
    services: Services, key: IdemKey,
) -> Response:  # fmt: skip
    async def action() -> tuple[int, PayoutOut]:
        return 200, await _resolve(services, wallet_id, payout_id, completed=False)

    return await run_idempotent(request, "admin", key, action)
