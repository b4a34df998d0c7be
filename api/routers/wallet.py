"""``GET /wallet`` and ``GET /wallet/transactions``: the caller's wallet and its ledger.

Balances come from the ledger (the source of truth) adjusted by the Redis mirror's in-flight
reservations, so a spend shows up the moment it is authorised, before settlement posts it:
``available`` is what may be spent now, ``reserved`` what is authorised but not yet settled.
"""

from __future__ import annotations

import base64
import binascii
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from aggregator.mirror import snapshot
from api.auth import Reader, Services, wallet_of
from api.services import ApiServices
from domain.errors import InvalidInput
from domain.ledger_rules import TxnType
from settlement.ledger.records import WalletRecord

router = APIRouter(tags=["wallet"])

MAX_PAGE = 200


class BalancesOut(BaseModel):
    available: int = Field(description="Spendable now (credits)")
    reserved: int = Field(description="Authorised for operations in flight, not yet settled")
    pending: int = Field(description="Bought, payment not yet confirmed; not spendable")
    locked: int = Field(description="Held for a payout or a review")
    lifetime_purchased: int
    lifetime_used: int
    payout_eligible: int = Field(description="Community earnings that may be paid out")


class WalletOut(BaseModel):
    id: str
    owner_type: str
    owner_id: str
    status: str
    balances: BalancesOut
    ledger_version: int = Field(description="Number of ledger transactions of this wallet")
    member_id: str
    role: str


class TransactionOut(BaseModel):
    id: int
    seq: int
    type: str
    phase: str | None
    credits: int
    balance_before: int
    balance_after: int
    source: str
    source_id: str
    member_id: str | None
    feature: str | None
    metadata: dict[str, Any]
    created_at: datetime


class TransactionPage(BaseModel):
    data: list[TransactionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page")


async def balances_of(services: ApiServices, record: WalletRecord) -> tuple[BalancesOut, str]:
    """Ledger balances with the mirror's live reservations applied, and the live status."""
    b = record.balances
    available, reserved, status = b.available, b.reserved, record.status
    mirror = await snapshot(services.mirror, record.id)
    if mirror is not None:
        available = mirror.available
        reserved = b.reserved + mirror.reserved
        status = mirror.status.value
    out = BalancesOut(
        available=available,
        reserved=reserved,
        pending=b.pending,
        locked=b.locked,
        lifetime_purchased=b.lifetime_purchased,
        lifetime_used=b.lifetime_used,
        payout_eligible=b.payout_eligible,
    )
    return out, status


@router.get("/wallet", response_model=WalletOut, summary="The caller's wallet and balances")
async def get_wallet(principal: Reader, services: Services) -> WalletOut:
    record = await services.wallets.get(wallet_of(principal))
    balances, status = await balances_of(services, record)
    assert principal.member_id is not None
    assert principal.role is not None
    return WalletOut(
        id=record.id,
        owner_type=record.owner_type,
        owner_id=record.owner_id,
        status=status,
        balances=balances,
        ledger_version=record.head_seq,
        member_id=principal.member_id,
        role=principal.role.value,
    )


def _decode_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        value = int(base64.urlsafe_b64decode(cursor.encode() + b"==").decode())
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidInput("cursor is not one this API issued", field="cursor") from None
    if value < 1:
        raise InvalidInput("cursor is not one this API issued", field="cursor")
    return value


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(str(seq).encode()).decode().rstrip("=")


@router.get(
    "/wallet/transactions",
    response_model=TransactionPage,
    summary="The wallet's ledger, newest first, with cursor pagination",
)
async def list_transactions(
    principal: Reader,
    services: Services,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
    type: Annotated[TxnType | None, Query(description="Only this transaction type")] = None,
    from_date: Annotated[date | None, Query(alias="from", description="First day (UTC)")] = None,
    to_date: Annotated[date | None, Query(alias="to", description="Last day (UTC)")] = None,
) -> TransactionPage:
    if from_date and to_date and from_date > to_date:
        raise InvalidInput("'from' must not be after 'to'", field="from")
    before = _decode_cursor(cursor)
    clauses, params = ["wallet_id = %s"], [wallet_of(principal)]
    if before is not None:
        clauses.append("seq < %s")
        params.append(before)  # type: ignore[arg-type]
    if type is not None:
        clauses.append("type = %s")
        params.append(type.value)
    if from_date is not None:
        clauses.append("created_at >= %s")
        params.append(datetime.combine(from_date, time.min).isoformat() + "+00:00")
    if to_date is not None:
        clauses.append("created_at < %s")
        next_day = datetime.combine(to_date, time.min) + timedelta(days=1)
        params.append(next_day.isoformat() + "+00:00")
    sql = (
        "SELECT id, seq, type, phase, credits, balance_before, balance_after, source, source_id, "
        "member_id, feature, metadata, created_at FROM ledger_transactions "
        f"WHERE {' AND '.join(clauses)} ORDER BY seq DESC LIMIT %s"
    )
    async with services.pool.connection() as conn:
        cur = await conn.execute(sql, (*params, limit + 1))
        rows = await cur.fetchall()
    page = [
        TransactionOut(
            id=r[0],
            seq=r[1],
            type=r[2],
            phase=r[3],
            credits=r[4],
            balance_before=r[5],
            balance_after=r[6],
            source=r[7],
            source_id=r[8],
            member_id=r[9],
            feature=r[10],
            metadata=dict(r[11] or {}),
            created_at=r[12],
        )
        for r in rows[:limit]
    ]
    next_cursor = _encode_cursor(page[-1].seq) if len(rows) > limit else None
    return TransactionPage(data=page, next_cursor=next_cursor)
