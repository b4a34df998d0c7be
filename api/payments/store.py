"""PostgreSQL storage of payments, their state log, webhook deliveries and refunds.

Tables: ``settlement/ledger/migrations/sql/0002/20_payments.up.sql``. Balances are not here:
the ledger is their only record. A payment's row is the serialisation point of everything that
happens to it (:meth:`PaymentStore.locked`: ``SELECT ... FOR UPDATE``), so client confirmation,
webhooks and refunds of one payment take turns.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from psycopg_pool import AsyncConnectionPool

from domain.errors import NotFound
from domain.payments import MethodKind, PaymentPurpose, PaymentState
from settlement.ledger.writer import Conn


@dataclass(frozen=True, slots=True)
class PaymentRecord:
    id: str
    wallet_id: str
    member_id: str | None
    purpose: PaymentPurpose
    method: MethodKind
    method_detail: str
    amount_paise: int
    gst_paise: int
    platform_fee_paise: int
    total_paise: int
    credits: int
    bonus_credits: int
    state: PaymentState
    effects_state: PaymentState | None
    gateway: str
    gateway_order_id: str | None
    gateway_payment_id: str | None
    failure_reason: str | None
    retry_of: str | None
    refunded_paise: int
    refunded_credits: int
    refunded_bonus_credits: int
    idempotency_key: str
    request_hash: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RefundRecord:
    id: str
    payment_id: str
    wallet_id: str
    member_id: str | None
    amount_paise: int
    gst_refund_paise: int
    fee_refund_paise: int
    total_refund_paise: int
    base_credits_removed: int
    bonus_credits_clawed_back: int
    state: str
    gateway_refund_id: str | None
    idempotency_key: str
    created_at: datetime
    updated_at: datetime

    @property
    def credits_removed(self) -> int:
        return self.base_credits_removed + self.bonus_credits_clawed_back


PAYMENT_COLUMNS = ", ".join(f.name for f in fields(PaymentRecord))
REFUND_COLUMNS = ", ".join(f.name for f in fields(RefundRecord))
_INSERTABLE = (
    "id, wallet_id, member_id, purpose, method, method_detail, amount_paise, gst_paise, "
    "platform_fee_paise, total_paise, credits, bonus_credits, state, gateway, retry_of, "
    "idempotency_key, request_hash"
)


def _payment(row: tuple[Any, ...]) -> PaymentRecord:
    values = dict(zip((f.name for f in fields(PaymentRecord)), row, strict=True))
    values["purpose"] = PaymentPurpose(values["purpose"])
    values["method"] = MethodKind(values["method"])
    values["state"] = PaymentState(values["state"])
    if values["effects_state"] is not None:
        values["effects_state"] = PaymentState(values["effects_state"])
    return PaymentRecord(**values)


def _refund(row: tuple[Any, ...]) -> RefundRecord:
    return RefundRecord(*row)


class PaymentStore:
    def __init__(self, pool: AsyncConnectionPool[Conn]) -> None:
        self.pool = pool

    # -- payments -------------------------------------------------------------------------------

    async def insert(self, values: Mapping[str, Any]) -> tuple[PaymentRecord, bool]:
        """Insert a new payment (state idle); on the same ``(wallet_id, idempotency_key)``
        return the existing one instead. Returns ``(record, created)``."""
        names = [name.strip() for name in _INSERTABLE.split(",")]
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"INSERT INTO payments ({_INSERTABLE}) "
                f"VALUES ({', '.join(['%s'] * len(names))}) "
                "ON CONFLICT (wallet_id, idempotency_key) DO NOTHING "
                f"RETURNING {PAYMENT_COLUMNS}",
                tuple(values[name] for name in names),
            )
            row = await cur.fetchone()
            if row is not None:
                record = _payment(row)
                await _log(conn, record.id, None, record.state, "created", None)
                return record, True
            cur = await conn.execute(
                f"SELECT {PAYMENT_COLUMNS} FROM payments "
                "WHERE wallet_id = %s AND idempotency_key = %s",
                (values["wallet_id"], values["idempotency_key"]),
            )
            existing = await cur.fetchone()
        assert existing is not None, "conflicting row vanished (payments are never deleted)"
        return _payment(existing), False

    async def get(self, payment_id: str, wallet_id: str | None = None) -> PaymentRecord:
        """The payment, or NotFound (also when it belongs to another wallet)."""
        async with self.pool.connection() as conn:
            record = await _select(conn, "id = %s", payment_id)
        if record is None or (wallet_id is not None and record.wallet_id != wallet_id):
            raise NotFound(f"payment {payment_id!r} not found", payment_id=payment_id)
        return record

    async def find(self, *, order_id: str | None, payment_id: str | None) -> PaymentRecord | None:
        """The payment a gateway's order or payment id belongs to."""
        async with self.pool.connection() as conn:
            if order_id is not None:
                found = await _select(conn, "gateway_order_id = %s", order_id)
                if found is not None:
                    return found
            if payment_id is not None:
                return await _select(conn, "gateway_payment_id = %s", payment_id)
        return None

    async def retry_of(self, payment_id: str) -> PaymentRecord | None:
        async with self.pool.connection() as conn:
            return await _select(conn, "retry_of = %s", payment_id)

    async def list_for_wallet(self, wallet_id: str, limit: int = 50) -> list[PaymentRecord]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE wallet_id = %s "
                "ORDER BY created_at DESC LIMIT %s",
                (wallet_id, limit),
            )
            return [_payment(row) for row in await cur.fetchall()]

    async def effects_due(self, limit: int = 100) -> list[PaymentRecord]:
        """Payments whose latest state's effects (mirror, wallet event) did not complete."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {PAYMENT_COLUMNS} FROM payments "
                "WHERE effects_state IS DISTINCT FROM state AND state <> 'idle' LIMIT %s",
                (limit,),
            )
            return [_payment(row) for row in await cur.fetchall()]

    async def effects_done(self, payment_id: str, state: PaymentState) -> None:
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE payments SET effects_state = %s WHERE id = %s AND state = %s",
                (state.value, payment_id, state.value),
            )

    @asynccontextmanager
    async def locked(self, payment_id: str) -> AsyncIterator[tuple[Conn, PaymentRecord]]:
        """One transaction holding the payment's row lock; commits on a clean exit."""
        async with self.pool.connection() as conn, conn.transaction():
            record = await _select(conn, "id = %s FOR UPDATE", payment_id)
            if record is None:
                raise NotFound(f"payment {payment_id!r} not found", payment_id=payment_id)
            yield conn, record

    async def update(
        self,
        conn: Conn,
        record: PaymentRecord,
        changes: Mapping[str, object],
        *,
        cause: str,
        detail: str | None = None,
    ) -> PaymentRecord:
        """Change columns of a locked payment; a state change is appended to the state log."""
        assert changes
        assert set(changes) <= {f.name for f in fields(PaymentRecord)}
        sets = ", ".join(f"{name} = %s" for name in changes)
        params = [v.value if isinstance(v, PaymentState) else v for v in changes.values()]
        cur = await conn.execute(
            f"UPDATE payments SET {sets}, updated_at = now() WHERE id = %s "
            f"RETURNING {PAYMENT_COLUMNS}",
            (*params, record.id),
        )
        row = await cur.fetchone()
        assert row is not None
        updated = _payment(row)
        if updated.state is not record.state or cause == "refund":
            await _log(conn, record.id, record.state, updated.state, cause, detail)
        return updated

    async def transitions(self, payment_id: str) -> list[tuple[str | None, str, str]]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT from_state, to_state, cause FROM payment_transitions "
                "WHERE payment_id = %s ORDER BY id",
                (payment_id,),
            )
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

    # -- webhooks -------------------------------------------------------------------------------

    async def webhook_seen(self, gateway: str, event_id: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT 1 FROM payment_webhooks WHERE gateway = %s AND event_id = %s "
                "AND outcome IN ('applied', 'ignored', 'conflict')",
                (gateway, event_id),
            )
            return await cur.fetchone() is not None

    async def log_webhook(
        self,
        gateway: str,
        body: bytes,
        *,
        outcome: str,
        event_id: str | None = None,
        event_type: str | None = None,
        reason: str | None = None,
        payment_id: str | None = None,
        detail: str | None = None,
    ) -> str:
        """Append one delivery; an accepted outcome that loses the race for its event id to a
        concurrent delivery is recorded as ``duplicate``. Returns the outcome recorded."""
        sha = hashlib.sha256(body).hexdigest()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO payment_webhooks (gateway, event_id, event_type, outcome, "
                "refusal_reason, payment_id, body_sha256, body, detail) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id",
                (gateway, event_id, event_type, outcome, reason, payment_id, sha, body, detail),
            )
            if await cur.fetchone() is not None:
                return outcome
            await conn.execute(
                "INSERT INTO payment_webhooks (gateway, event_id, event_type, outcome, "
                "payment_id, body_sha256, body) VALUES (%s, %s, %s, 'duplicate', %s, %s, %s)",
                (gateway, event_id, event_type, payment_id, sha, body),
            )
            return "duplicate"

    async def webhook_log(self, gateway: str) -> list[tuple[str | None, str, str | None]]:
        """(event_id, outcome, refusal_reason) of every delivery, in arrival order."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT event_id, outcome, refusal_reason FROM payment_webhooks "
                "WHERE gateway = %s ORDER BY id",
                (gateway,),
            )
            return [(r[0], r[1], r[2]) for r in await cur.fetchall()]

    # -- refunds --------------------------------------------------------------------------------

    async def refund_by_key(
        self, conn: Conn, payment_id: str, idempotency_key: str
    ) -> RefundRecord | None:
        cur = await conn.execute(
            f"SELECT {REFUND_COLUMNS} FROM payment_refunds "
            "WHERE payment_id = %s AND idempotency_key = %s",
            (payment_id, idempotency_key),
        )
        row = await cur.fetchone()
        return _refund(row) if row else None

    async def insert_refund(self, conn: Conn, values: Mapping[str, Any]) -> RefundRecord:
        names = list(values)
        cur = await conn.execute(
            f"INSERT INTO payment_refunds ({', '.join(names)}) "
            f"VALUES ({', '.join(['%s'] * len(names))}) RETURNING {REFUND_COLUMNS}",
            tuple(values.values()),
        )
        row = await cur.fetchone()
        assert row is not None
        return _refund(row)

    async def set_refund_gateway(
        self, refund_id: str, gateway_refund_id: str, state: str
    ) -> RefundRecord:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE payment_refunds SET gateway_refund_id = coalesce(gateway_refund_id, %s), "
                "state = CASE WHEN state = 'processed' THEN state ELSE %s END, "
                f"updated_at = now() WHERE id = %s RETURNING {REFUND_COLUMNS}",
                (gateway_refund_id, state, refund_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"refund {refund_id!r} not found")
        return _refund(row)

    async def mark_refund_processed(self, gateway_refund_id: str) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE payment_refunds SET state = 'processed', updated_at = now() "
                "WHERE gateway_refund_id = %s AND state <> 'processed'",
                (gateway_refund_id,),
            )
            return cur.rowcount == 1


async def _select(conn: Conn, where: str, value: str) -> PaymentRecord | None:
    cur = await conn.execute(f"SELECT {PAYMENT_COLUMNS} FROM payments WHERE {where}", (value,))
    row = await cur.fetchone()
    return _payment(row) if row else None


async def _log(
    conn: Conn,
    payment_id: str,
    from_state: PaymentState | None,
    to_state: PaymentState,
    cause: str,
    detail: str | None,
) -> None:
    await conn.execute(
        "INSERT INTO payment_transitions (payment_id, from_state, to_state, cause, detail) "
        "VALUES (%s, %s, %s, %s, %s)",
        (payment_id, from_state.value if from_state else None, to_state.value, cause, detail),
    )
