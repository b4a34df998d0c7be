"""What follows a committed payment change: the Redis mirror, then ``wallet.events``.

Both steps are idempotent and run after the payment's transaction committed (never inside it):
the mirror credit/debit is keyed by the ledger transaction's source id and guarded by its ledger
version; wallet events carry derived ids (``payment:<id>:<state>``), so a repeat is a duplicate
consumers drop. ``payments.effects_state`` records the last state whose effects completed; a
payment whose effects failed (Redis or Kafka down) is picked up again by the next delivery of
any of its outcomes or by :meth:`PaymentEffects.run_due` - the outbox without an outbox table.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel
from redis.exceptions import RedisError

from aggregator import mirror
from aggregator.mirror_debit import DebitOutcome, debit
from aggregator.wallet_store import WalletStore
from api.payments.store import PaymentRecord, PaymentStore
from domain.clock import Clock
from domain.errors import Unavailable
from domain.payments import PAID, PaymentState
from meter.consume import DecisionProducer, Outbound
from meter.schema import BalanceChanged, PaymentStateChanged, encode
from meter.topics import TopicNames, wallet_key
from settlement.ledger.lookups import find_by_source
from settlement.ledger.operations import Ledger

log = logging.getLogger(__name__)


class WalletEventSink(Protocol):
    async def publish(self, events: Sequence[BaseModel], wallet_id: str) -> None: ...


class KafkaWalletEvents:
    """Publishes wallet events on ``wallet.events`` (key = wallet id), acks=all."""

    def __init__(self, producer: DecisionProducer, topics: TopicNames) -> None:
        self.producer, self.topics = producer, topics

    async def publish(self, events: Sequence[BaseModel], wallet_id: str) -> None:
        key = wallet_key(wallet_id)
        await self.producer.publish(
            [
                Outbound(self.topics.wallet_events, key, encode(e), str(getattr(e, "event_id", "")))
                for e in events
            ]
        )


class PaymentEffects:
    def __init__(
        self,
        store: PaymentStore,
        ledger: Ledger,
        wallets_mirror: WalletStore,
        events: WalletEventSink,
        clock: Clock,
    ) -> None:
        self.store, self.ledger, self.mirror = store, ledger, wallets_mirror
        self.events, self.clock = events, clock

    async def after_change(
        self, record: PaymentRecord, previous: PaymentState | None, extra: Sequence[BaseModel] = ()
    ) -> None:
        """Mirror the purchase (once paid) and announce the state; mark them done."""
        if record.effects_state is record.state and not extra:
            return
        try:
            balance = await self._mirror_purchase(record) if record.state in PAID else None
            events: list[BaseModel] = [self.state_event(record, previous)]
            if balance is not None and record.effects_state not in PAID:
                events.append(balance)
            await self.events.publish([*events, *extra], record.wallet_id)
        except (RedisError, Unavailable) as exc:
            log.warning("payment %s: effects of %s deferred: %r", record.id, record.state, exc)
            return
        await self.store.effects_done(record.id, record.state)

    async def run_due(self, limit: int = 100) -> int:
        """Re-run the effects of payments whose effects did not complete; returns how many."""
        due = await self.store.effects_due(limit)
        for record in due:
            await self.after_change(record, None)
        return len(due)

    async def _mirror_purchase(self, record: PaymentRecord) -> BalanceChanged | None:
        version = await self._purchase_version(record.id)
        result = await mirror.credit(
            self.mirror,
            record.wallet_id,
            record.credits + record.bonus_credits,
            f"purchase:{record.id}",
            ledger_version=version,
        )
        if result.outcome is not mirror.CreditOutcome.CREDITED:
            return None
        return BalanceChanged(
            event_id=f"balance:purchase:{record.id}",
            wallet_id=record.wallet_id,
            occurred_at=self.clock.now(),
            type="balance_changed",
            available_credits=result.available_after,
            reserved_credits=result.reserved_after,
            delta_credits=record.credits + record.bonus_credits,
            cause="purchase",
            source_id=record.id,
        )

    async def mirror_refund(
        self, wallet_id: str, refund_id: str, credits: int, version: int
    ) -> BalanceChanged | None:
        """Take refunded credits out of the mirror; the balance event when it changed."""
        result = await debit(
            self.mirror, wallet_id, credits, f"refund:{refund_id}", ledger_version=version
        )
        if result.shortfall:
            log.warning(
                "refund %s: mirror of %s was short by %d credits (reservations were out)",
                refund_id, wallet_id, result.shortfall,
            )  # fmt: skip
        if result.outcome is not DebitOutcome.DEBITED:
            return None
        return BalanceChanged(
            event_id=f"balance:refund:{refund_id}",
            wallet_id=wallet_id,
            occurred_at=self.clock.now(),
            type="balance_changed",
            available_credits=result.available_after,
            reserved_credits=result.reserved_after,
            delta_credits=-credits,
            cause="refund",
            source_id=refund_id,
        )

    async def _purchase_version(self, payment_id: str) -> int | None:
        """The wallet's ledger version right after the confirmation (and its bonus) posted."""
        async with self.ledger.writer.pool.connection() as conn:
            bonus = await find_by_source(conn, "purchase.bonus", payment_id)
            confirm = bonus or await find_by_source(conn, "purchase.confirm", payment_id)
        return confirm.seq if confirm is not None else None

    def state_event(
        self, record: PaymentRecord, previous: PaymentState | None
    ) -> PaymentStateChanged:
        suffix = (
            f":{record.refunded_paise}" if record.state is PaymentState.PARTIALLY_REFUNDED else ""
        )
        return PaymentStateChanged(
            event_id=f"payment:{record.id}:{record.state.value}{suffix}",
            wallet_id=record.wallet_id,
            occurred_at=self.clock.now(),
            type="payment_state_changed",
            payment_id=record.id,
            state=record.state.value,
            previous_state=previous.value if previous is not None else None,
            purpose=record.purpose.value,
            amount_paise=record.amount_paise,
            credits_added=record.credits + record.bonus_credits if record.state in PAID else 0,
            refunded_paise=record.refunded_paise,
            failure_reason=record.failure_reason,
            retry_of=record.retry_of,
        )
