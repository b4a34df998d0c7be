"""Purchase refunds: ledger first, then the mirror, then the gateway.

Order and why: the ledger post (``refund_purchase``: purchased credits plus the proportional
bonus claw-back leave the wallet) is the step that can be refused - the credits may have been
spent - so it goes first, under the payment's row lock; the gateway refund is the step that can
only be late, so it goes last and is retried with the same idempotency key until the gateway
accepts it (the refund row stays ``gateway_pending`` meanwhile). Refunding money first would
leave money returned for credits already spent.

The refund id is derived from ``(payment_id, idempotency_key)``, so a retry after any crash
re-posts under the same ledger source id (a replay) and asks the gateway for the same receipt.
Eligibility: the credits removed must be available both in the ledger and in the mirror
(which excludes in-flight reservations); otherwise :class:`InsufficientCredits` says how much
can still be refunded (``domain.refunds.max_refundable_paise``).
"""

from __future__ import annotations

import hashlib

from aggregator import mirror as mirror_ops
from api.payments.effects import PaymentEffects
from api.payments.gateway import PaymentGateway
from api.payments.store import PaymentRecord, PaymentStore, RefundRecord
from domain.errors import IdempotencyConflict, InsufficientCredits, NotFound, StateConflict
from domain.money import format_inr
from domain.payments import PAID, PaymentState, classify, state_after_refund
from domain.refunds import PurchaseTerms, max_refundable_paise, quote_refund
from settlement.ledger.operations import Ledger
from settlement.ledger.wallets import Wallets
from settlement.ledger.writer import Conn


def refund_id_for(payment_id: str, idempotency_key: str) -> str:
    digest = hashlib.sha256(f"{payment_id}|{idempotency_key}".encode()).hexdigest()
    return f"rfd_{digest[:24]}"


def _terms(record: PaymentRecord) -> PurchaseTerms:
    return PurchaseTerms(
        record.amount_paise, record.gst_paise, record.platform_fee_paise, record.bonus_credits
    )


class PurchaseRefunds:
    def __init__(
        self,
        store: PaymentStore,
        ledger: Ledger,
        wallets: Wallets,
        gateway: PaymentGateway,
        effects: PaymentEffects,
    ) -> None:
        self.store, self.ledger, self.wallets = store, ledger, wallets
        self.gateway, self.effects = gateway, effects

    async def refund(
        self,
        wallet_id: str,
        payment_id: str,
        amount_paise: int,
        *,
        idempotency_key: str,
        member_id: str | None = None,
    ) -> RefundRecord:
        """Refund ``amount_paise`` of the purchase's amount (GST refunded proportionally on
        top, the platform fee retained). Idempotent on ``idempotency_key``."""
        refund_id = refund_id_for(payment_id, idempotency_key)
        async with self.store.locked(payment_id) as (conn, locked):
            record = locked
            if record.wallet_id != wallet_id:
                raise NotFound(f"payment {payment_id!r} not found", payment_id=payment_id)
            previous = record.state
            refund = await self.store.refund_by_key(conn, payment_id, idempotency_key)
            if refund is not None and refund.amount_paise != amount_paise:
                raise IdempotencyConflict(
                    f"idempotency key {idempotency_key!r} refunded {refund.amount_paise} paise"
                )
            if refund is None:
                refund = await self._post(conn, record, refund_id, amount_paise, idempotency_key,
                                          member_id)  # fmt: skip
                paid_back = record.refunded_paise + refund.amount_paise
                changes = {
                    "state": state_after_refund(record.amount_paise, paid_back),
                    "refunded_paise": paid_back,
                    "refunded_credits": record.refunded_credits + refund.base_credits_removed,
                    "refunded_bonus_credits": (
                        record.refunded_bonus_credits + refund.bonus_credits_clawed_back
                    ),
                }
                record = await self.store.update(
                    conn, record, changes, cause="refund", detail=refund.id
                )
        # A replay of the posting: its ledger version orders the mirror debit.
        txn = await self.ledger.refund_purchase(
            wallet_id, refund.id, payment_id,
            base_credits=refund.base_credits_removed,
            bonus_credits=refund.bonus_credits_clawed_back,
        )  # fmt: skip
        balance = await self.effects.mirror_refund(
            wallet_id, refund.id, refund.credits_removed, txn.seq
        )
        await self.effects.after_change(record, previous, () if balance is None else (balance,))
        if refund.state == "gateway_pending":
            assert record.gateway_payment_id is not None, "a paid payment has a gateway id"
            result = await self.gateway.refund(
                record.gateway_payment_id, refund.total_refund_paise, refund.id
            )
            refund = await self.store.set_refund_gateway(refund.id, result.refund_id, "initiated")
        return refund

    async def _post(
        self,
        conn: Conn,
        record: PaymentRecord,
        refund_id: str,
        amount_paise: int,
        idempotency_key: str,
        member_id: str | None,
    ) -> RefundRecord:
        if record.state not in PAID or record.state is PaymentState.REFUNDED:
            raise StateConflict(
                f"payment {record.id!r} is {record.state.value}; only a paid payment with "
                "something left to refund can be refunded",
                state=record.state.value,
            )
        classify(record.state, PaymentState.PARTIALLY_REFUNDED)  # never backwards
        terms = _terms(record)
        quote = quote_refund(terms, amount_paise, record.refunded_paise)
        available = await self._spendable(record.wallet_id)
        if quote.credits_removed > available:
            most = max_refundable_paise(terms, available, record.refunded_paise)
            raise InsufficientCredits(
                f"refunding {format_inr(amount_paise)} removes {quote.credits_removed} credits "
                f"but only {available} are available; at most {format_inr(most)} can be refunded",
                max_refundable_paise=most,
            )
        await self.ledger.refund_purchase(
            record.wallet_id, refund_id, record.id,
            base_credits=quote.base_credits_removed,
            bonus_credits=quote.bonus_credits_clawed_back,
            metadata={"refund_amount_paise": amount_paise},
        )  # fmt: skip
        return await self.store.insert_refund(
            conn,
            {
                "id": refund_id,
                "payment_id": record.id,
                "wallet_id": record.wallet_id,
                "member_id": member_id,
                "amount_paise": quote.refund_amount_paise,
                "gst_refund_paise": quote.gst_refund_paise,
                "fee_refund_paise": quote.fee_refund_paise,
                "total_refund_paise": quote.total_refund_paise,
                "base_credits_removed": quote.base_credits_removed,
                "bonus_credits_clawed_back": quote.bonus_credits_clawed_back,
                "state": "gateway_pending",
                "idempotency_key": idempotency_key,
            },
        )

    async def _spendable(self, wallet_id: str) -> int:
        """Available credits: the ledger's, lowered to the mirror's when it is loaded (the
        mirror excludes reservations still in flight)."""
        ledger_available = (await self.wallets.get(wallet_id)).balances.available
        snap = await mirror_ops.snapshot(self.effects.mirror, wallet_id)
        return ledger_available if snap is None else min(ledger_available, snap.available)
