"""The payment service: add funds (flow 5), retries, gateway outcomes and webhooks.

Stable interface for callers outside the API routes (the auto-recharge worker)::

    view = await payments.create_payment(
        wallet_id=..., member_id=None, amount_rupees=150,
        method=PaymentMethod.saved_token(token), purpose=PaymentPurpose.AUTO_RECHARGE,
        idempotency_key=f"recharge:{recharge_id}:{attempt}",
    )
    view.payment.state  # processing | pending | success | failed (domain.payments)
    await payments.get_payment(wallet_id, view.payment.id)  # poll the outcome

and every state change is announced on ``wallet.events`` as ``payment_state_changed`` (with
``purpose="auto_recharge"``). The same idempotency key returns the same payment, never a
second charge; a different request under it is an ``IdempotencyConflict``.

Exactly once: a payment's row lock (``PaymentStore.locked``) serialises everything that
happens to it, the move is decided by :func:`domain.payments.classify` (forward, duplicate,
out-of-order or conflict), and the ledger operations are idempotent on the payment id
(``purchase.confirm``/``purchase.fail``), so credits post once whichever of client confirmation
and webhook arrives first, however often. A crash between the ledger commit and the payment's
update is repaired by the next report: the ledger replays its original, the row catches up.
Effects (mirror, events) follow the commit: :mod:`api.payments.effects`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from psycopg.errors import UniqueViolation

from api.payments.effects import PaymentEffects
from api.payments.gateway import ChargeResult, ClientAction, GatewayStatus, PaymentGateway
from api.payments.refunds import PurchaseRefunds
from api.payments.store import PaymentRecord, PaymentStore, RefundRecord
from api.payments.webhook_intake import WebhookIntake, WebhookResult
from domain.errors import IdempotencyConflict, InvalidInput, StateConflict
from domain.payments import (
    MethodKind,
    Move,
    PaymentMethod,
    PaymentPurpose,
    PaymentState,
    classify,
    require_retryable,
)
from domain.quote import DEFAULT_FEE_SCHEDULE, AddFundsQuote, FeeSchedule, quote_add_funds
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets

S = PaymentState


@dataclass(frozen=True, slots=True)
class PaymentView:
    """A payment, the quote it was made on and what the payer's client must do next."""

    payment: PaymentRecord
    quote: AddFundsQuote
    action: ClientAction | None = None


def _key(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 255:
        raise InvalidInput("idempotency key must be 1-255 characters", field="idempotency_key")
    return value


class PaymentService:
    def __init__(
        self,
        *,
        store: PaymentStore,
        ledger: Ledger,
        wallets: Wallets,
        gateway: PaymentGateway,
        effects: PaymentEffects,
        fees: FeeSchedule = DEFAULT_FEE_SCHEDULE,
    ) -> None:
        self.store, self.ledger, self.gateway = store, ledger, gateway
        self.effects, self.fees = effects, fees
        self.webhooks = WebhookIntake(store, gateway, self.apply_gateway_outcome)
        self.refunds = PurchaseRefunds(store, ledger, wallets, gateway, effects)

    def quote(self, amount_rupees: object) -> AddFundsQuote:
        """The add-funds preview (read-only): GST, fee, credits, bonus and the nudge."""
        if isinstance(amount_rupees, bool) or not isinstance(amount_rupees, int):
            raise InvalidInput("amount_rupees must be a whole number", field="amount_rupees")
        return quote_add_funds(amount_rupees * 100, self.fees)

    async def create_payment(
        self,
        *,
        wallet_id: str,
        member_id: str | None,
        amount_rupees: int,
        method: PaymentMethod,
        purpose: PaymentPurpose = PaymentPurpose.ADD_FUNDS,
        idempotency_key: str,
        retry_of: str | None = None,
    ) -> PaymentView:
        """Quote, record the payment, post pending credits, create the order, charge."""
        quote = self.quote(amount_rupees)
        if purpose is PaymentPurpose.AUTO_RECHARGE and method.kind is not MethodKind.SAVED_TOKEN:
            raise InvalidInput("auto-recharge charges a saved token", field="method")
        key = _key(idempotency_key)
        fingerprint = f"{quote.amount_paise}|{method.kind}|{method.detail}|{purpose}|{member_id}"
        values = {
            "id": f"pmt_{secrets.token_hex(12)}",
            "wallet_id": wallet_id,
            "member_id": member_id,
            "purpose": purpose.value,
            "method": method.kind.value,
            "method_detail": method.detail,
            "amount_paise": quote.amount_paise,
            "gst_paise": quote.gst_paise,
            "platform_fee_paise": quote.platform_fee_paise,
            "total_paise": quote.total_paise,
            "credits": quote.base_credits,
            "bonus_credits": quote.bonus_credits,
            "state": S.IDLE.value,
            "gateway": self.gateway.name,
            "retry_of": retry_of,
            "idempotency_key": key,
            "request_hash": hashlib.sha256(f"{fingerprint}|{retry_of}".encode()).hexdigest(),
        }
        try:
            record, created = await self.store.insert(values)
        except UniqueViolation:
            assert retry_of is not None, "only retry_of is unique besides the idempotency key"
            existing = await self.store.retry_of(retry_of)
            assert existing is not None
            return PaymentView(existing, quote)
        if not created and record.request_hash != values["request_hash"]:
            raise IdempotencyConflict(
                f"idempotency key {key!r} was used for a different payment", payment_id=record.id
            )
        if record.state is not S.IDLE:
            return PaymentView(record, quote)
        return await self._start(record, method, quote)

    async def _start(
        self, record: PaymentRecord, method: PaymentMethod, quote: AddFundsQuote
    ) -> PaymentView:
        await self.ledger.purchase_pending(
            record.wallet_id,
            record.id,
            record.credits,
            member_id=record.member_id,
            metadata={"amount_paise": record.amount_paise, "purpose": record.purpose.value},
        )
        order = await self.gateway.create_order(
            record.total_paise, record.id, {"payment_id": record.id, "wallet_id": record.wallet_id}
        )
        async with self.store.locked(record.id) as (conn, current):
            if current.state is not S.IDLE:  # a concurrent replay of this request won
                return PaymentView(current, quote)
            changes = {"state": S.PROCESSING, "gateway_order_id": order.order_id}
            record = await self.store.update(conn, current, changes, cause="order_created")
        await self.effects.after_change(record, S.IDLE)
        result = await self.gateway.charge(order, method)
        record = await self._apply_charge(record, result)
        return PaymentView(record, quote, result.action)

    async def _apply_charge(self, record: PaymentRecord, result: ChargeResult) -> PaymentRecord:
        target = {
            GatewayStatus.PENDING: S.PENDING,
            GatewayStatus.CAPTURED: S.SUCCESS,
            GatewayStatus.FAILED: S.FAILED,
        }.get(result.status)
        if target is None:  # attempted: the verdict comes by confirmation or webhook
            return await self.apply_gateway_outcome(
                record.id, S.PROCESSING, cause="charge", gateway_payment_id=result.payment_id
            )
        try:
            return await self.apply_gateway_outcome(
                record.id,
                target,
                cause="charge",
                gateway_payment_id=result.payment_id,
                failure_reason=result.failure_reason,
            )
        except StateConflict:  # a webhook already delivered the opposite verdict
            return await self.store.get(record.id)

    async def apply_gateway_outcome(
        self,
        payment_id: str,
        target: PaymentState,
        *,
        cause: str,
        gateway_payment_id: str | None = None,
        failure_reason: str | None = None,
    ) -> PaymentRecord:
        """Apply a reported verdict once; duplicates and out-of-order reports change nothing.

        Raises :class:`StateConflict` for a contradicting verdict (captured after failed).
        """
        async with self.store.locked(payment_id) as (conn, locked):
            record, previous = locked, locked.state
            move = classify(record.state, target)
            changes: dict[str, object] = {}
            if gateway_payment_id and record.gateway_payment_id is None:
                changes["gateway_payment_id"] = gateway_payment_id
            elif gateway_payment_id and gateway_payment_id != record.gateway_payment_id:
                raise StateConflict(
                    f"payment {payment_id!r} is gateway payment {record.gateway_payment_id!r}, "
                    f"not {gateway_payment_id!r}"
                )
            if move is Move.ADVANCE:
                changes.update(await self._post(record, target, failure_reason))
            if changes:
                record = await self.store.update(conn, locked, changes, cause=cause)
        await self.effects.after_change(record, previous)
        return record

    async def _post(
        self, record: PaymentRecord, target: PaymentState, failure_reason: str | None
    ) -> Mapping[str, object]:
        """The ledger side of a forward move (idempotent on the payment id)."""
        if target is S.SUCCESS:
            await self.ledger.purchase_confirm(
                record.wallet_id, record.id, bonus_credits=record.bonus_credits
            )
        if target is S.FAILED:
            await self.ledger.purchase_fail(record.wallet_id, record.id)
            return {"state": target, "failure_reason": failure_reason or "payment_failed"}
        return {"state": target}

    async def get_payment(self, wallet_id: str, payment_id: str) -> PaymentRecord:
        return await self.store.get(payment_id, wallet_id)

    async def confirm(
        self, wallet_id: str, payment_id: str, *, order_id: str, gateway_payment_id: str,
        signature: str,
    ) -> PaymentRecord:  # fmt: skip
        """Client confirmation: the checkout's ``order_id|payment_id`` signature proves capture."""
        record = await self.store.get(payment_id, wallet_id)
        if record.gateway_order_id is None or order_id != record.gateway_order_id:
            raise InvalidInput("razorpay_order_id is not this payment's order", field="order_id")
        self.gateway.verify_payment_signature(order_id, gateway_payment_id, signature)
        return await self.apply_gateway_outcome(
            payment_id,
            S.SUCCESS,
            cause="client_confirmation",
            gateway_payment_id=gateway_payment_id,
        )

    async def retry_payment(
        self,
        wallet_id: str,
        payment_id: str,
        *,
        member_id: str | None,
        idempotency_key: str,
        method: PaymentMethod | None = None,
    ) -> PaymentView:
        """Retry a failed payment as a new payment linked by ``retry_of`` (at most one)."""
        failed = await self.store.get(payment_id, wallet_id)
        require_retryable(failed.state)
        existing = await self.store.retry_of(payment_id)
        if existing is not None:
            return PaymentView(existing, self.quote(existing.amount_paise // 100))
        if method is None:
            method = _stored_method(failed)
        return await self.create_payment(
            wallet_id=wallet_id,
            member_id=member_id,
            amount_rupees=failed.amount_paise // 100,
            method=method,
            purpose=failed.purpose,
            idempotency_key=idempotency_key,
            retry_of=payment_id,
        )

    async def refund_purchase(
        self,
        wallet_id: str,
        payment_id: str,
        amount_paise: int,
        *,
        idempotency_key: str,
        member_id: str | None = None,
    ) -> RefundRecord:
        """Refund part or all of a paid purchase (see :mod:`api.payments.refunds`)."""
        return await self.refunds.refund(
            wallet_id, payment_id, amount_paise, idempotency_key=_key(idempotency_key),
            member_id=member_id,
        )  # fmt: skip

    async def handle_webhook(self, body: bytes, headers: Mapping[str, str]) -> WebhookResult:
        """Verify, deduplicate, apply and log one webhook delivery (see WebhookIntake)."""
        return await self.webhooks.handle(body, headers)


def _stored_method(record: PaymentRecord) -> PaymentMethod:
    """The method of a failed payment, when it can be rebuilt from what was stored."""
    detail = record.method_detail
    if record.method is MethodKind.CARD:
        if detail.startswith("card_xxxx"):
            raise InvalidInput("give the card again to retry a card payment", field="method")
        return PaymentMethod(MethodKind.CARD, card_token=detail)
    field = {
        MethodKind.UPI: "vpa",
        MethodKind.NETBANKING: "bank",
        MethodKind.WALLET: "wallet",
        MethodKind.SAVED_TOKEN: "token",
    }[record.method]
    return PaymentMethod(record.method, **{field: detail})
